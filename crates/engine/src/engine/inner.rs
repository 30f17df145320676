//! The engine's shared state, what follows every event a job publishes, and
//! how finished migrations are pruned.

use std::sync::{Arc, Mutex};

use super::{EngineConfig, Job, Registry};
use crate::hypervisor::{HvError, Hypervisor};
use crate::journal::Journal;
use crate::model::{now_ms, Event};
use crate::observer::{Observer, TraceContext};

pub(crate) struct Inner {
    pub hv: Arc<dyn Hypervisor>,
    pub journal: Journal,
    pub config: EngineConfig,
    pub(super) registry: Mutex<Registry>,
    /// Told of every event published (metrics).
    pub(super) observer: Arc<dyn Observer>,
    /// Links each migration to the trace of the request that started it.
    pub traces: Arc<dyn TraceContext>,
}

impl Inner {
    pub(super) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a blocking hypervisor call off the async runtime.
    pub async fn hv<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let hv = self.hv.clone();
        // The blocking thread has no span of its own: keep the caller's, so
        // the call's spans and logs belong to its migration.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(hv.as_ref())))
            .await
            .unwrap_or_else(|e| {
                Err(HvError::Failed {
                    op: "spawn_blocking",
                    code: -1,
                    message: e.to_string(),
                })
            })
    }

    /// Tells the observer (metrics) of an event a job published, refreshes
    /// its group, and releases the job's leases once it has ended.
    pub fn announced(&self, job: &Job, event: &Event) {
        self.observer.event(event);
        if let Some(group) = job.group() {
            group.refresh();
        }
        if event.phase.is_terminal() {
            self.release(job);
            self.prune();
        }
    }

    fn release(&self, job: &Job) {
        let mut reg = self.registry();
        reg.by_disk.retain(|_, id| id != &job.id);
        reg.reserved.retain(|_, id| id != &job.id);
    }

    /// Moves the job's destination reservation to the name the pool really gave
    /// the volume (disk pools name partitions themselves).
    pub fn rename_reservation(&self, job: &Job, pool: &str, from: &str, volume: &str) {
        let mut reg = self.registry();
        // Only the top's name moves; the layers this job copies stay reserved.
        reg.reserved
            .retain(|(p, v), id| id != &job.id || p != pool || v != from);
        reg.reserved
            .insert((pool.to_string(), volume.to_string()), job.id.clone());
    }

    /// Forgets finished migrations beyond the retention (oldest first).
    pub(super) fn prune(&self) {
        let retention = self.config.retention;
        let cutoff = now_ms().saturating_sub(retention.max_age.as_millis() as u64);
        let mut finished: Vec<(u64, String)> = {
            let reg = self.registry();
            reg.by_id
                .values()
                .filter_map(|j| {
                    let st = j.lock();
                    let e = &st.record.latest;
                    e.phase
                        .is_terminal()
                        .then(|| (e.timestamp_ms, j.id.clone()))
                })
                .collect()
        };
        finished.sort();
        let excess = finished.len().saturating_sub(retention.max_records);
        let doomed: Vec<String> = finished
            .iter()
            .enumerate()
            .filter(|(i, (t, _))| *i < excess || *t < cutoff)
            .map(|(_, (_, id))| id.clone())
            .collect();
        if doomed.is_empty() {
            return;
        }
        {
            let mut reg = self.registry();
            for id in &doomed {
                reg.by_id.remove(id);
            }
            // A group goes with the last of its members.
            let Registry {
                by_id,
                by_request,
                groups,
                ..
            } = &mut *reg;
            groups.retain(|_, g| g.members.iter().any(|m| by_id.contains_key(&m.id)));
            by_request.retain(|_, id| by_id.contains_key(id) || groups.contains_key(id));
        }
        for id in &doomed {
            if let Err(e) = self.journal.remove(id) {
                tracing::warn!(error = %e, "cannot prune a finished journal record");
            }
        }
        tracing::debug!(pruned = doomed.len(), "pruned finished migrations");
    }
}
