//! The one retry policy: how long to wait before each attempt, and when to
//! give up. Every loop in volmig that tries again (a libvirt call while
//! libvirtd restarts, a store call to another etcd member, a relay that
//! re-follows a node, a leader campaigning again) takes one of these, built
//! from its configured grace period, and asks it rather than counting itself.
//!
//! Pure arithmetic, no clock: the caller says how long it has been trying, so
//! the schedule is tested without waiting.

use std::time::Duration;

/// Exponential backoff between `initial` and `max`, for at most `grace` in
/// total (or `attempts` attempts), whichever ends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause.
    pub initial: Duration,
    /// No pause is longer.
    pub max: Duration,
    /// Each pause is this many times the one before (1: constant pauses).
    pub factor: u32,
    /// Give up once this long has passed since the first attempt (`None`:
    /// no time limit).
    pub grace: Option<Duration>,
    /// Give up after this many attempts in all (`None`: no limit).
    pub attempts: Option<u32>,
}

impl RetryPolicy {
    /// The same pause every time, for ever: loops that must keep trying (a
    /// follower re-following, a controller campaigning again).
    pub const fn constant(pause: Duration) -> RetryPolicy {
        RetryPolicy {
            initial: pause,
            max: pause,
            factor: 1,
            grace: None,
            attempts: None,
        }
    }

    /// Pauses doubling from `initial` up to `max`, for at most `grace`.
    pub const fn within(grace: Duration, initial: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            initial,
            max,
            factor: 2,
            grace: Some(grace),
            attempts: None,
        }
    }

    /// At most `attempts` attempts in all, pausing `initial`, then `initial`
    /// times `factor`, and so on up to `max`.
    pub const fn attempts(
        attempts: u32,
        initial: Duration,
        factor: u32,
        max: Duration,
    ) -> RetryPolicy {
        RetryPolicy {
            initial,
            max,
            factor,
            grace: None,
            attempts: Some(attempts),
        }
    }

    /// The pause before attempt `failed + 1`, after `failed` attempts failed
    /// over `elapsed` since the first began; `None` to give up. A pause never
    /// runs past the grace period: the last attempt is made at its end.
    pub fn next_pause(&self, failed: u32, elapsed: Duration) -> Option<Duration> {
        if failed == 0 {
            return Some(Duration::ZERO);
        }
        if self.attempts.is_some_and(|n| failed >= n) {
            return None;
        }
        let mut pause = self.initial;
        for _ in 1..failed {
            pause = pause.saturating_mul(self.factor.max(1));
            if pause >= self.max {
                break;
            }
        }
        let pause = pause.min(self.max);
        match self.grace {
            Some(grace) if elapsed >= grace => None,
            Some(grace) => Some(pause.min(grace - elapsed)),
            None => Some(pause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_at_the_grace_period() {
        let p = RetryPolicy::within(10 * MS * 100, 100 * MS, 400 * MS);
        assert_eq!(p.next_pause(0, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(p.next_pause(1, Duration::ZERO), Some(100 * MS));
        assert_eq!(p.next_pause(2, 100 * MS), Some(200 * MS));
        assert_eq!(p.next_pause(3, 300 * MS), Some(400 * MS));
        assert_eq!(
            p.next_pause(9, 700 * MS),
            Some(300 * MS),
            "not past the grace period"
        );
        assert_eq!(p.next_pause(10, 1000 * MS), None);
    }

    #[test]
    fn attempt_limits_and_constant_pauses() {
        let p = RetryPolicy::attempts(3, 100 * MS, 1, 100 * MS);
        assert_eq!(p.next_pause(2, Duration::from_secs(3600)), Some(100 * MS));
        assert_eq!(p.next_pause(3, Duration::ZERO), None);
        let c = RetryPolicy::constant(Duration::from_secs(1));
        assert_eq!(
            c.next_pause(1_000_000, Duration::from_secs(1 << 40)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let p = RetryPolicy::within(Duration::from_secs(90), 100 * MS, Duration::from_secs(2));
        assert_eq!(
            p.next_pause(u32::MAX, Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
    }
}
