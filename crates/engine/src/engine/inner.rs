//! The engine's shared state, and the way every event is journaled,
//! published and finally pruned.

use std::sync::{Arc, Mutex};

use super::{blocking, EngineConfig, Job, Registry};
use crate::error::Error;
use crate::hypervisor::{HvError, Hypervisor};
use crate::journal::{Journal, Record};
use crate::model::now_ms;
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

    /// Journals then publishes a new latest event for the job. The in-memory
    /// record changes even when the journal write fails, so the job's own
    /// decisions (what to roll back) always follow what it did.
    pub async fn publish(&self, job: &Job, update: impl FnOnce(&mut Record)) -> Result<(), Error> {
        let record = {
            let mut st = job.lock();
            update(&mut st.record);
            st.record.latest.timestamp_ms = now_ms();
            st.record.clone()
        };
        let journal = self.journal.clone();
        blocking(move || journal.save(&record))
            .await
            .map_err(|e| Error::Journal(e.to_string()))?
            .map_err(Error::Journal)?;
        self.announce(job);
        Ok(())
    }

    /// Publishes the job's current latest event without journaling (progress).
    pub fn announce(&self, job: &Job) {
        let mut st = job.lock();
        st.seq += 1;
        let event = st.record.latest.clone();
        // No receivers is normal (nobody watching); the record keeps the state.
        let _ = job.events.send((st.seq, event.clone()));
        drop(st);
        self.observer.event(&event);
        let terminal = event.phase.is_terminal();
        if let Some(group) = job.group() {
            group.refresh();
        }
        if terminal {
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
