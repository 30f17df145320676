//! One retry loop's state against the one [`RetryPolicy`]: the loops here
//! (a relay re-following a node, a controller campaigning again, an etcd call
//! tried on another member) count failures and wait through this, so their
//! timings are the policy's and not each loop's own arithmetic.

use tokio::time::Instant;
use volmig_types::retry::RetryPolicy;

/// Failures so far of one loop, and when it began: on tokio's clock, so a
/// test with the clock paused sees the pauses without waiting for them.
pub(crate) struct Retries {
    policy: RetryPolicy,
    failed: u32,
    started: Instant,
}

impl Retries {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Retries {
            policy,
            failed: 0,
            started: Instant::now(),
        }
    }

    /// After a failed attempt: waits the policy's pause and says `true`, or
    /// says `false` at once when the policy gives up.
    pub(crate) async fn pause(&mut self) -> bool {
        self.failed = self.failed.saturating_add(1);
        match self.policy.next_pause(self.failed, self.started.elapsed()) {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_the_policys_pauses_then_gives_up() {
        let ms = Duration::from_millis(1);
        let mut retries = Retries::new(RetryPolicy::attempts(3, 100 * ms, 2, 400 * ms));
        let begun = Instant::now();
        assert!(retries.pause().await);
        assert_eq!(begun.elapsed(), 100 * ms);
        assert!(retries.pause().await);
        assert_eq!(begun.elapsed(), 300 * ms);
        assert!(!retries.pause().await, "three attempts in all");
        assert_eq!(begun.elapsed(), 300 * ms, "giving up does not wait");
    }
}
