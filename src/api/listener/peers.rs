//! Counting what each source address holds (handshakes in progress,
//! established connections), so one peer cannot take every place of a
//! listener.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

/// The source a limit applies to: an IPv4 address, or an IPv6 address's /64
/// (one host is routinely given a whole /64, so counting single addresses
/// would not bound it). IPv4-mapped IPv6 addresses count as IPv4.
pub fn peer_key(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// How many places each source address holds, at most `max` each.
#[derive(Clone)]
pub struct PeerCounts {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One place held by a source address, given back when dropped.
pub struct PeerSlot {
    counts: PeerCounts,
    peer: IpAddr,
}

impl PeerCounts {
    /// Counts allowing `max` places per source address (at least one).
    pub fn new(max: usize) -> PeerCounts {
        PeerCounts {
            held: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
        }
    }

    /// A place for `peer`, or `None` when it already holds `max`.
    pub fn try_take(&self, peer: IpAddr) -> Option<PeerSlot> {
        // A panic while holding this lock cannot leave a count half-changed.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(peer).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: self.clone(),
            peer,
        })
    }

    #[cfg(test)]
    pub fn held(&self, peer: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&peer).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self
            .counts
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            // Forget quiet peers, so the map stays as small as the set of
            // peers connected now.
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_peer_holds_at_most_its_limit_and_gets_places_back() {
        let counts = PeerCounts::new(2);
        let a = counts.try_take(ip("127.0.0.2")).expect("first");
        let _b = counts.try_take(ip("127.0.0.2")).expect("second");
        assert!(counts.try_take(ip("127.0.0.2")).is_none(), "a third place");
        // Another address is not affected.
        let _other = counts.try_take(ip("127.0.0.1")).expect("other peer");
        drop(a);
        assert!(counts.try_take(ip("127.0.0.2")).is_some(), "not given back");
        assert_eq!(counts.held(ip("127.0.0.3")), 0);
    }

    #[test]
    fn quiet_peers_are_forgotten() {
        let counts = PeerCounts::new(1);
        drop(counts.try_take(ip("10.0.0.1")));
        assert!(counts.held.lock().expect("lock").is_empty());
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1000".parse().expect("addr");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2000".parse().expect("addr");
        let c: SocketAddr = "[2001:db8:1:3::1]:2000".parse().expect("addr");
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:5".parse().expect("addr");
        assert_eq!(peer_key(mapped), ip("192.0.2.7"));
    }
}
