//! Failed authentications counted per source address: past the configured
//! number in one minute, the address's calls are refused unchecked until the
//! minute is over, so guessing tokens costs a minute per
//! `max_auth_failures_per_minute` guesses and never reaches the token table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses tracked at once; past it, windows that ended are dropped
/// first, so a spray from many addresses costs bounded memory.
const MAX_TRACKED: usize = 65_536;

/// What time it is; injectable so tests need not wait a minute.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// One address's failures in its current window.
struct Window {
    start: Instant,
    failures: u32,
}

/// The failures of every address, and the limit.
pub struct Throttle {
    limit: u32,
    clock: Clock,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Throttle {
    /// At most `limit` failures per address and minute (0: no limit), on `clock`.
    pub fn with_clock(limit: u32, clock: Clock) -> Throttle {
        Throttle {
            limit,
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The limit (0: none).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // Counts are advisory: a panic elsewhere must not stop authentication.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(time until the window ends)` when `addr` is throttled now.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let now = (self.clock)();
        let windows = self.lock();
        let window = windows.get(&addr)?;
        let elapsed = now.saturating_duration_since(window.start);
        (window.failures >= self.limit && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    /// Counts a failed authentication from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let now = (self.clock)();
        let mut windows = self.lock();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&addr) {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return;
            }
        }
        let window = windows.entry(addr).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.start) >= WINDOW {
            *window = Window {
                start: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    fn manual() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (Arc::new(move || *read.lock().expect("clock")), now)
    }

    #[test]
    fn an_address_is_throttled_after_the_limit_until_its_minute_ends() {
        let (clock, now) = manual();
        let throttle = Throttle::with_clock(3, clock);
        let attacker: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert_eq!(throttle.blocked(attacker), None);
            throttle.failed(attacker);
        }
        assert_eq!(throttle.blocked(attacker), Some(WINDOW));
        assert_eq!(throttle.blocked(other), None, "only the failing address");
        *now.lock().expect("clock") += Duration::from_secs(45);
        assert_eq!(throttle.blocked(attacker), Some(Duration::from_secs(15)));
        *now.lock().expect("clock") += Duration::from_secs(15);
        assert_eq!(throttle.blocked(attacker), None, "a new minute");
        throttle.failed(attacker);
        assert_eq!(throttle.blocked(attacker), None, "counting starts again");
    }

    #[test]
    fn a_limit_of_zero_never_throttles() {
        let throttle = Throttle::with_clock(0, Arc::new(Instant::now));
        let addr: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..1000 {
            throttle.failed(addr);
        }
        assert_eq!(throttle.blocked(addr), None);
    }
}
