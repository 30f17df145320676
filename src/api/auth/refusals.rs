//! Logging of refused calls. A refusal of an authenticated caller is an
//! audit event like any mutating call; a refusal of an unauthenticated one
//! (no or unknown credentials, throttled) can be produced by anyone who can
//! connect, as fast as they like, so those lines are limited per peer
//! address: one per [`QUIET`], the next one saying how many were
//! suppressed. Every refusal is counted in `volmig_auth_refusals_total`
//! whether logged or not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::throttle::Clock;

/// Least time between two logged unauthenticated refusals of one peer.
pub const QUIET: Duration = Duration::from_secs(10);
/// Most peers remembered; past it, those quiet for [`QUIET`] are forgotten.
const MAX_PEERS: usize = 65_536;

struct Peer {
    logged: Instant,
    suppressed: u64,
}

/// Who was last logged when, and what was suppressed since.
pub struct RateLimit {
    clock: Clock,
    peers: Mutex<HashMap<Option<IpAddr>, Peer>>,
}

impl RateLimit {
    /// Limits on `clock`.
    pub fn new(clock: Clock) -> RateLimit {
        RateLimit {
            clock,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(lines suppressed since the last one)` when a refusal from `peer`
    /// (`None`: the unix socket) may be logged now; `None` when it is
    /// suppressed (and counted).
    pub fn admit(&self, peer: Option<IpAddr>) -> Option<u64> {
        let now = (self.clock)();
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = peers.get_mut(&peer) {
            if now.saturating_duration_since(p.logged) < QUIET {
                p.suppressed = p.suppressed.saturating_add(1);
                return None;
            }
            let suppressed = p.suppressed;
            *p = Peer {
                logged: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, p| now.saturating_duration_since(p.logged) < QUIET);
            if peers.len() >= MAX_PEERS {
                return None;
            }
        }
        peers.insert(
            peer,
            Peer {
                logged: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

/// One refused call, as logged.
pub struct Refusal<'a> {
    /// `ip:port`, or `unix`.
    pub peer: &'a str,
    /// The identity presented: `cert:…`, `token:…`, or `none`.
    pub identity: &'a str,
    /// `package.Service/Method`, escaped.
    pub rpc: &'a str,
    /// The gRPC code name.
    pub code: &'a str,
    /// Why (the status message, escaped).
    pub reason: &'a str,
}

impl Refusal<'_> {
    /// Logs an authenticated caller's refusal of a mutating call.
    pub fn audit(&self) {
        tracing::info!(
            target: "audit",
            peer = self.peer,
            identity = self.identity,
            rpc = self.rpc,
            code = self.code,
            reason = self.reason,
            "refused"
        );
    }

    /// Logs an unauthenticated refusal, having been admitted by the rate
    /// limit with `suppressed` lines of this peer dropped before it.
    pub fn unauthenticated(&self, suppressed: u64) {
        tracing::info!(
            target: "audit",
            peer = self.peer,
            identity = self.identity,
            rpc = self.rpc,
            code = self.code,
            reason = self.reason,
            suppressed,
            "refused unauthenticated call"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_line_per_peer_per_quiet_period_then_the_suppressed_count() {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        let limit = RateLimit::new(Arc::new(move || *read.lock().expect("clock")));
        let a: Option<IpAddr> = Some("192.0.2.1".parse().expect("ip"));
        let b: Option<IpAddr> = Some("192.0.2.2".parse().expect("ip"));
        assert_eq!(limit.admit(a), Some(0));
        for _ in 0..4999 {
            assert_eq!(limit.admit(a), None);
        }
        assert_eq!(limit.admit(b), Some(0), "another peer is not silenced");
        *now.lock().expect("clock") += QUIET;
        assert_eq!(limit.admit(a), Some(4999));
        assert_eq!(limit.admit(a), None);
    }
}
