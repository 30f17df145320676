//! The leader's duties. Of the controllers sharing a store, one leads (the
//! store's election; a single file store's controller always does): it
//! follows every unfinished migration in the history, so the history reaches
//! each migration's end even when the controller that started it is gone,
//! and sweeps in-flight slots left by migrations that ended unobserved or by
//! controllers that died before the node answered; and it executes every
//! unfinished drain ([`super::drain`]). When leadership is lost,
//! another controller takes over within the store's lease TTL.

use std::time::Duration;

use tracing::Instrument;
use volmig_types::retry::RetryPolicy;

use super::retries::Retries;
use super::Controller;

/// Campaigning again after the store failed: every second, for as long as
/// the controller runs, since some controller must lead.
const CAMPAIGN_AGAIN: RetryPolicy = RetryPolicy::constant(Duration::from_secs(1));

impl Controller {
    pub(super) fn spawn_leader(&self) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let store = self.inner.store.clone();
        let every = self.heartbeat();
        tokio::spawn(
            async move {
                let mut retries = Retries::new(CAMPAIGN_AGAIN);
                loop {
                    let mut leadership = match store.lead().await {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot campaign for leadership");
                            if !retries.pause().await {
                                return;
                            }
                            continue;
                        }
                    };
                    tracing::info!(
                        at = volmig_types::phase::now_ms(),
                        "leading the controllers"
                    );
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tokio::select! {
                            () = leadership.lost() => break,
                            _ = tick.tick() => {}
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        let controller = Controller { inner };
                        // A round waits on the store; leadership lost meanwhile
                        // ends it at once rather than after the store's timeout,
                        // so no duty outlives the lease another controller now holds.
                        tokio::select! {
                            () = leadership.lost() => break,
                            () = controller.lead_once() => {}
                        }
                    }
                    tracing::warn!(at = volmig_types::phase::now_ms(), "lost the leadership");
                    if let Some(inner) = weak.upgrade() {
                        Controller { inner }.drains_lost();
                    }
                }
            }
            .instrument(tracing::info_span!("leader")),
        );
    }

    /// One round of the leader's duties.
    async fn lead_once(&self) {
        let entries = match self.inner.history.all().await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the history");
                return;
            }
        };
        for entry in entries.iter().filter(|e| !e.is_terminal()) {
            self.follow(entry, None);
        }
        let unfinished: std::collections::HashSet<&str> = entries
            .iter()
            .filter(|e| !e.is_terminal())
            .map(|e| e.migration_id.as_str())
            .collect();
        let swept = self
            .inner
            .reservations
            .sweep(|id| !unfinished.contains(id))
            .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "cannot sweep the in-flight slots");
        }
        self.resume_drains().await;
    }
}
