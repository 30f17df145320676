//! Keeping a store lease alive, and saying when it is lost.
//!
//! Leadership rests on a lease: once the store stops seeing renewals, the
//! lease lapses after its TTL and another controller is elected. The holder
//! must stop believing it leads no later than that, whatever its transport
//! does, or two controllers lead at once. So every renewal attempt here is
//! bounded by a deadline measured from the last renewal the store
//! confirmed (`sent + ttl`, where `sent` is when that renewal left, which
//! the store saw no earlier): a call that hangs on a dead connection — even
//! one that never manages to open its stream — ends at the deadline and the
//! lease is declared lost. The loop is generic over [`LeaseSession`] so that
//! its timing is tested with paused time, without a store.

use std::time::Duration;

use tokio::time::Instant;

/// What one renewal attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The store renewed the lease.
    Alive,
    /// The store says the lease is gone: it cannot be renewed any more.
    Expired,
    /// The attempt failed (no connection, a broken stream); another may work.
    Failed,
}

/// One lease in a store, as the keep-alive loop needs it.
#[async_trait::async_trait]
pub trait LeaseSession: Send + 'static {
    /// Renews the lease once. May hang: the caller bounds it.
    async fn renew(&mut self) -> Renewal;
    /// Drops whatever connection state a renewal left behind (a renewal was
    /// cut short by its deadline, so its stream may be stuck).
    fn reset(&mut self);
    /// Gives the lease back, because its holder no longer wants it. May hang.
    async fn revoke(&mut self);
}

/// Renews `session`'s lease every third of `ttl` until the lease is lost
/// (then `lost` turns true) or every receiver of `lost` is gone (then the
/// lease is revoked, so the next holder need not wait for it to lapse).
///
/// `lost` turns true no later than `ttl` after the last renewal that was
/// sent and confirmed (or after the start, before any): an attempt is cut
/// off at that deadline, and a shorter one, a third of the TTL, ends each
/// attempt early enough to try again on a fresh connection.
pub async fn keep_alive<S: LeaseSession>(
    mut session: S,
    ttl: Duration,
    lost: tokio::sync::watch::Sender<bool>,
) {
    // The lease was granted just before: its TTL counts from no later than now.
    let mut renewed = Instant::now();
    let mut next = renewed + ttl / 3;
    loop {
        let deadline = renewed + ttl;
        tokio::select! {
            () = tokio::time::sleep_until(next.min(deadline)) => {}
            () = lost.closed() => {
                let _ = tokio::time::timeout(ttl / 3, session.revoke()).await;
                return;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        let attempt_ends = (sent + ttl / 3).min(deadline);
        match tokio::time::timeout_at(attempt_ends, session.renew()).await {
            Ok(Renewal::Alive) => {
                renewed = sent;
                next = sent + ttl / 3;
            }
            Ok(Renewal::Expired) => break,
            Ok(Renewal::Failed) => next = Instant::now() + ttl / 10,
            Err(_) => {
                session.reset();
                next = Instant::now();
            }
        }
    }
    tracing::warn!(
        ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        since_renewal_ms = u64::try_from(renewed.elapsed().as_millis()).unwrap_or(u64::MAX),
        "the store lease lapsed unrenewed"
    );
    let _ = lost.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Answers `Alive` `alive` times, then behaves as `then`.
    struct Scripted {
        alive: usize,
        then: After,
        renewals: Arc<AtomicUsize>,
        revoked: Arc<AtomicUsize>,
    }

    #[derive(Clone, Copy)]
    enum After {
        /// Every call hangs (a dead connection, never reset).
        Hang,
        /// Every call fails at once (connection refused).
        Fail,
        /// The store says the lease is gone.
        Expire,
    }

    #[async_trait::async_trait]
    impl LeaseSession for Scripted {
        async fn renew(&mut self) -> Renewal {
            let n = self.renewals.fetch_add(1, Ordering::SeqCst);
            if n < self.alive {
                return Renewal::Alive;
            }
            match self.then {
                After::Hang => std::future::pending().await,
                After::Fail => Renewal::Failed,
                After::Expire => Renewal::Expired,
            }
        }
        fn reset(&mut self) {}
        async fn revoke(&mut self) {
            self.revoked.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await
        }
    }

    fn scripted(alive: usize, then: After) -> (Scripted, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let renewals = Arc::new(AtomicUsize::new(0));
        let revoked = Arc::new(AtomicUsize::new(0));
        let s = Scripted {
            alive,
            then,
            renewals: renewals.clone(),
            revoked: revoked.clone(),
        };
        (s, renewals, revoked)
    }

    const TTL: Duration = Duration::from_secs(3);

    /// When `lost` turned true, measured from the start.
    async fn lost_after(session: Scripted) -> Duration {
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        tokio::spawn(keep_alive(session, TTL, tx));
        rx.wait_for(|l| *l).await.expect("lost is sent");
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_ends_the_lease_one_ttl_after_the_last_renewal() {
        // Renewals at 1 s and 2 s succeed (every third of the TTL); the one at
        // 3 s hangs for ever, as a stream on a dead connection does.
        let (s, renewals, _) = scripted(2, After::Hang);
        let lost = lost_after(s).await;
        assert_eq!(lost, Duration::from_secs(2) + TTL);
        // Each hanging attempt was cut at a third of the TTL and retried.
        assert!(renewals.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_never_renewed_is_lost_one_ttl_after_the_start() {
        let (s, _, _) = scripted(0, After::Hang);
        assert_eq!(lost_after(s).await, TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_are_retried_until_the_ttl_and_no_longer() {
        let (s, renewals, _) = scripted(1, After::Fail);
        let lost = lost_after(s).await;
        assert_eq!(lost, Duration::from_secs(1) + TTL);
        // Retried every tenth of the TTL after the first failure at 2 s.
        assert!(renewals.load(Ordering::SeqCst) >= 8, "{renewals:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_lost_at_once() {
        let (s, _, _) = scripted(1, After::Expire);
        assert_eq!(lost_after(s).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_is_kept() {
        let (s, _, _) = scripted(usize::MAX, After::Hang);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(keep_alive(s, TTL, tx));
        tokio::time::sleep(TTL * 10).await;
        assert!(!*rx.borrow());
        assert!(!task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_nobody_wants_is_revoked_even_if_revoking_hangs() {
        let (s, _, revoked) = scripted(usize::MAX, After::Hang);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(keep_alive(s, TTL, tx));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(rx);
        tokio::time::timeout(TTL, task)
            .await
            .expect("the loop ends although revoking hangs")
            .expect("no panic");
        assert_eq!(revoked.load(Ordering::SeqCst), 1);
    }
}
