//! Accepting a single-disk migration, and the record every accepted
//! migration starts from.

use std::sync::Arc;

use tracing::Instrument;

use super::{blocking, Engine, Job, Source, Subscription};
use crate::error::Error;
use crate::journal::{GroupLink, Plan, Record, Stage};
use crate::model::{now_ms, Event, MigrationRequest, Phase, Progress};
use crate::{job, plan, validate};

impl Engine {
    /// Starts a migration, or attaches to the one started with the same request id.
    #[tracing::instrument(skip(self, req), err, fields(domain = %req.domain.escape_debug(), disk = %req.disk.escape_debug(), pool = %req.destination_pool.escape_debug()))]
    pub async fn migrate(&self, req: MigrationRequest) -> Result<Subscription, Error> {
        validate::request_id(&req.request_id)?;
        validate::object_name("domain", &req.domain)?;
        validate::disk(&req.disk)?;
        validate::object_name("destination_pool", &req.destination_pool)?;
        if let Some(v) = &req.destination_volume {
            validate::volume_name("destination_volume", v)?;
        }
        validate::bandwidth(req.options.bandwidth)?;
        validate::convergence_window(req.options.convergence_window)?;
        if let Some(sub) = self.attach_by_request(&req)? {
            return Ok(sub);
        }
        // Before asking libvirt: a running migration of this disk would otherwise
        // surface as a less helpful error (its destination volume or block job).
        if let Some((domain, disk, migration_id)) = self.active_on(&req.domain, &req.disk) {
            return Err(Error::AlreadyMigrating {
                domain,
                disk,
                migration_id,
            });
        }
        {
            let reg = self.inner.registry();
            if reg.by_disk.len() >= self.inner.config.max_concurrent {
                return Err(self.at_limit());
            }
        }
        let planned_req = req.clone();
        let planned = blocking({
            let hv = self.inner.hv.clone();
            move || plan::plan(hv.as_ref(), &planned_req)
        })
        .await
        .map_err(|e| Error::Journal(e.to_string()))?;
        let plan = match planned {
            Ok(plan) => plan,
            // A name that exists because another migration is creating it is
            // reported as that migration's, which the caller can follow.
            Err(Error::DestinationExists { pool, volume }) => {
                let reg = self.inner.registry();
                return Err(match reg.reserved.get(&(pool.clone(), volume.clone())) {
                    Some(other) => Error::DestinationReserved {
                        pool,
                        volume,
                        migration_id: other.clone(),
                    },
                    None => Error::DestinationExists { pool, volume },
                });
            }
            Err(e) => return Err(e),
        };

        let id = new_migration_id();
        let trace_id = self.inner.traces.current_trace_id().unwrap_or_default();
        let record = new_record(trace_id, &id, &req, &plan, &self.inner.config.node_id, None);
        let job = Job::new(record.clone());
        {
            let mut reg = self.inner.registry();
            // Checked again under the lock: another request may have raced us
            // through validation.
            if !req.request_id.is_empty() && reg.by_request.contains_key(&req.request_id) {
                drop(reg);
                return self
                    .attach_by_request(&req)?
                    .ok_or_else(|| Error::RequestIdReused(req.request_id.clone()));
            }
            let key = (plan.domain_uuid.clone(), plan.target.clone());
            if let Some(other) = reg.by_disk.get(&key) {
                return Err(Error::AlreadyMigrating {
                    domain: plan.domain.clone(),
                    disk: plan.target.clone(),
                    migration_id: other.clone(),
                });
            }
            let name = (plan.dest_pool.clone(), plan.dest_volume.clone());
            // A layer another migration is copying may yet be rolled back:
            // neither copied again nor reused until that migration ends.
            let layer_names = plan
                .chain
                .iter()
                .map(|l| (plan.dest_pool.clone(), l.dest_volume.clone()));
            for n in std::iter::once(name.clone()).chain(layer_names) {
                if let Some(other) = reg.reserved.get(&n) {
                    return Err(Error::DestinationReserved {
                        pool: n.0,
                        volume: n.1,
                        migration_id: other.clone(),
                    });
                }
            }
            if reg.by_disk.len() >= self.inner.config.max_concurrent {
                return Err(self.at_limit());
            }
            reg.by_disk.insert(key, id.clone());
            reg.reserved.insert(name, id.clone());
            for layer in plan.chain.iter().filter(|l| l.reused.is_none()) {
                reg.reserved.insert(
                    (plan.dest_pool.clone(), layer.dest_volume.clone()),
                    id.clone(),
                );
            }
            reg.by_id.insert(id.clone(), job.clone());
            if !req.request_id.is_empty() {
                reg.by_request.insert(req.request_id.clone(), id.clone());
            }
        }
        let journal = self.inner.journal.clone();
        let saved = blocking(move || journal.save(&record))
            .await
            .map_err(|e| Error::Journal(e.to_string()))
            .and_then(|r| r.map_err(Error::Journal));
        if let Err(e) = saved {
            let mut reg = self.inner.registry();
            reg.by_id.remove(&id);
            reg.by_request.remove(&req.request_id);
            reg.by_disk.retain(|_, v| v != &id);
            reg.reserved.retain(|_, v| v != &id);
            return Err(e);
        }
        tracing::info!(migration_id = %id, "migration accepted");
        let sub = Subscription::new(Source::Job(job.clone()));
        // The job's task continues the request's trace (its span's parent).
        tokio::spawn(
            job::run(self.inner.clone(), job, job::Entry::Fresh)
                .instrument(tracing::Span::current()),
        );
        Ok(sub)
    }

    fn at_limit(&self) -> Error {
        Error::Exhausted(format!(
            "node {} is running its limit of {} migrations; retry when one finishes",
            self.inner.config.node_id, self.inner.config.max_concurrent
        ))
    }

    /// The active migration of `disk` (target or source) of `domain` (name or UUID).
    pub(super) fn active_on(&self, domain: &str, disk: &str) -> Option<(String, String, String)> {
        let jobs: Vec<Arc<Job>> = {
            let reg = self.inner.registry();
            reg.by_disk
                .values()
                .filter_map(|id| reg.by_id.get(id).cloned())
                .collect()
        };
        jobs.iter().find_map(|job| {
            let plan = job.lock().record.plan.clone();
            let same_domain = plan.domain == domain || plan.domain_uuid == domain;
            let same_disk = plan.target == disk || plan.source.display_name() == disk;
            (same_domain && same_disk).then(|| (plan.domain, plan.target, job.id.clone()))
        })
    }

    fn attach_by_request(&self, req: &MigrationRequest) -> Result<Option<Subscription>, Error> {
        if req.request_id.is_empty() {
            return Ok(None);
        }
        let reg = self.inner.registry();
        let Some(job) = reg
            .by_request
            .get(&req.request_id)
            .and_then(|id| reg.by_id.get(id))
            .cloned()
        else {
            return Ok(None);
        };
        drop(reg);
        if job.lock().record.request != *req {
            return Err(Error::RequestIdReused(req.request_id.clone()));
        }
        self.subscribe(Source::Job(job)).map(Some)
    }
}

/// A fresh migration id.
pub(super) fn new_migration_id() -> String {
    format!("mig-{}", uuid::Uuid::new_v4())
}

/// The record of a migration just accepted.
pub(super) fn new_record(
    trace_id: String,
    id: &str,
    req: &MigrationRequest,
    plan: &Plan,
    node_id: &str,
    group: Option<GroupLink>,
) -> Record {
    let now = now_ms();
    Record {
        id: id.to_string(),
        request: req.clone(),
        bandwidth: req.options.bandwidth,
        plan: plan.clone(),
        stage: Stage::Planned,
        latest: Event {
            migration_id: id.to_string(),
            phase: Phase::Accepted,
            progress: Progress::default(),
            timestamp_ms: now,
            started_ms: now,
            message: accepted_message(plan),
            result: None,
            failure: None,
            node_id: node_id.to_string(),
            domain: plan.domain.clone(),
            disk: plan.target.clone(),
            disks: Vec::new(),
            skipped: Vec::new(),
            pivot_window_ms: 0,
            convergence: None,
            trace_id,
        },
        group,
        pivot: None,
        forced_sync_writes: false,
        created_layers: Vec::new(),
        creating_layer: None,
    }
}

fn accepted_message(plan: &Plan) -> String {
    format!(
        "accepted: {} of {} ({}, {} bytes) from {} to pool {} as {} ({})",
        plan.target,
        plan.domain,
        plan.source_format,
        plan.capacity,
        plan.source_volume
            .as_ref()
            .map(|v| format!("pool {}", v.pool))
            .unwrap_or_else(|| plan.source.display_name()),
        plan.dest_pool,
        plan.dest_volume,
        plan.dest_format
    )
}
