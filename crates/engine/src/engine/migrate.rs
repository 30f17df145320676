//! Accepting a single-disk migration, and the record every accepted
//! migration starts from.

use tracing::Instrument;

use super::admission::{Admitted, Requested};
use super::job;
use super::{blocking, Engine, Job, Source, Subscription};
use crate::error::Error;
use crate::journal::{GroupLink, Plan, Record, Stage};
use crate::model::{now_ms, Event, MigrationRequest, Phase, Progress};
use crate::{plan, validate};

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
        // Admitted before asking libvirt: a running migration of this disk
        // would otherwise surface as a less helpful error (its destination
        // volume or block job).
        let mut reservation = match self.admit(&Requested::Disk(req.clone())).await? {
            Admitted::Attached(sub) => return Ok(*sub),
            Admitted::Reserved(reservation) => reservation,
        };
        let planned_req = req.clone();
        let planned = blocking({
            let hv = self.inner.hv.clone();
            move || plan::plan(hv.as_ref(), &planned_req)
        })
        .await
        .map_err(|e| Error::Journal(e.to_string()))?;
        let plan = match planned {
            Ok(plan) => plan,
            Err(Error::DestinationExists { pool, volume }) => {
                return Err(self.inner.registry().reserved_or_exists(pool, volume));
            }
            Err(e) => return Err(e),
        };

        let id = reservation.id().to_string();
        let trace_id = self.inner.traces.current_trace_id().unwrap_or_default();
        let record = new_record(trace_id, &id, &req, &plan, &self.inner.config.node_id, None);
        let job = Job::new(record.clone());
        reservation.register(std::slice::from_ref(&job), None)?;
        let journal = self.inner.journal.clone();
        blocking(move || journal.save(&record))
            .await
            .map_err(|e| Error::Journal(e.to_string()))?
            .map_err(Error::Journal)?;
        reservation.confirm();
        tracing::info!(migration_id = %id, "migration accepted");
        let sub = Subscription::new(Source::Job(job.clone()));
        // The job's task continues the request's trace (its span's parent).
        tokio::spawn(
            job::run(self.inner.clone(), job, job::Entry::Fresh)
                .instrument(tracing::Span::current()),
        );
        Ok(sub)
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
