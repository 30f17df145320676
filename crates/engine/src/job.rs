//! One disk migration, stage by stage, in its own task.
//!
//! The task owns the migration for its whole life: it alone changes the record,
//! and cancel, bandwidth changes and the timeout reach it as commands it answers
//! itself (see [`Ctx`]), so a cancel is either honoured before the pivot or
//! refused because the pivot has begun, never acknowledged and then ignored.
//!
//! Each stage is journaled before its action. What a failure undoes follows
//! from the journaled stage alone: before the pivot, the block job is aborted
//! and the destination volume volmig created is deleted (by identity, never by
//! name); once the pivot is issued, nothing is deleted and the terminal event
//! says where the disk is.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
// tokio's clock, the one the job's sleeps run on, so that unit tests with
// paused time see windows and grace periods pass without waiting for them.
use tokio::time::Instant;
use tracing::Instrument;

use crate::engine::{Command, Inner, Job};
use crate::error::Error;
use crate::group::{Abort, Member};
use crate::hypervisor::{
    BackingLayer, CopyOptions, Definition, Deletion, DiskKind, DiskSource, DiskSpec, HvError,
    Hypervisor, ImageFormat, NewVolume, VolumeIdentity,
};
use crate::journal::{Destination, Plan, Record, Stage};
use crate::model::{
    now_ms, ConvergenceWarning, Failure, MigrationResult, NoConvergencePolicy, Phase, Progress,
    VerifyLevel,
};
use crate::{chain, convergence, plan, recovery, tuning};

/// The shortest poll interval: the first, and while the copy has converged
/// but QEMU has not yet declared it ready.
const FAST_POLL: Duration = Duration::from_millis(20);

/// How a job's task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A new migration, from VALIDATING.
    Fresh,
    /// An unfinished migration found in the journal at start-up.
    Recover {
        /// It belongs to a group whose disks had not all been synchronized:
        /// it rolls back even if its copy still runs.
        group_uncommitted: bool,
    },
}

/// Where a recovered migration continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// The block job still runs: watch it until it is ready, then pivot.
    Copy(Destination),
    /// The job is ready and the pivot was issued: pivot (again).
    Pivot(Destination),
    /// The guest is on the destination: verify and clean up.
    Verify(Destination),
}

/// Why a job stops before its pivot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    TimedOut(u64),
    /// Another disk of the group failed.
    MemberFailed {
        disk: String,
        reason: String,
    },
}

/// What a SetBandwidth acts on, from the COPYING event on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyControl {
    /// COPYING has not been announced (or the copy is over): refused.
    NotAnnounced,
    /// COPYING is announced but no block job can be changed (it is not
    /// issued yet, is being issued again, or a recovered one is not yet
    /// confirmed): the new bandwidth is recorded, and the copy is issued with
    /// it or given it once it runs (see [`Ctx::copy_runs`]).
    Pending,
    /// The block job runs: its speed is changed in place.
    Running,
}

/// The job task's own state: its command inbox and what it has decided.
pub(crate) struct Ctx<'a> {
    pub inner: &'a Inner,
    pub job: &'a Job,
    inbox: mpsc::Receiver<Command>,
    stop: Option<StopReason>,
    deadline: Option<(tokio::time::Instant, u64)>,
    /// Set once the pivot has begun: cancel and the timeout no longer apply.
    pub pivot_begun: bool,
    /// What a bandwidth change acts on.
    copy: CopyControl,
    /// The job is recording a failure (rolling back).
    ending: bool,
    /// Its place in a group, when it moves with other disks.
    member: Option<Member>,
    /// Its place among a group's copies allowed at once, until it is synchronized.
    copy_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The migration's span (see [`migration_span`]).
    span: tracing::Span,
    /// The phase being worked on and its span, a child of `span`: the work
    /// the job awaits runs in it, so libvirt calls and journal writes are
    /// children of their phase.
    phase: Option<(Phase, tracing::Span)>,
}

/// The span of one migration, carrying the attributes that identify it
/// (passed on to every span beneath it by the trace exporter), and an error
/// status once it fails.
fn migration_span(record: &Record) -> tracing::Span {
    tracing::info_span!(
        "migration",
        migration.id = %record.id,
        domain = %record.plan.domain.escape_debug(),
        disk = %record.plan.target,
        node.id = %record.latest.node_id,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// Marks `span` as failed with `message` (OpenTelemetry status ERROR).
fn record_error(span: &tracing::Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
}

/// Runs the migration to its terminal event.
pub(crate) async fn run(inner: Arc<Inner>, job: Arc<Job>, entry: Entry) {
    let record = job.record();
    let span = migration_span(&record);
    if let Entry::Recover { .. } = entry {
        inner.traces.continue_trace(&span, &record.latest.trace_id);
    }
    async move {
        let Some(inbox) = job.take_inbox() else {
            tracing::error!("a second task was started for one migration; ignored");
            return;
        };
        let mut ctx = Ctx::new(&inner, &job, inbox);
        let outcome = match entry {
            Entry::Fresh => fresh(&mut ctx).await,
            Entry::Recover { group_uncommitted } => {
                // The phase the journal left it in goes on in this process.
                ctx.enter_phase(record.latest.phase);
                match recovery::decide(&mut ctx, group_uncommitted).await {
                    Ok(resume) => {
                        if let Resume::Copy(_) = resume {
                            // The copy found running has the journaled speed.
                            ctx.copy_runs(record.bandwidth).await;
                        }
                        continue_from(&mut ctx, resume).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            Ok(result) => complete(&mut ctx, result).await,
            Err(err) => fail(&mut ctx, err).await,
        }
    }
    .instrument(span)
    .await
}

impl<'a> Ctx<'a> {
    fn new(inner: &'a Inner, job: &'a Job, inbox: mpsc::Receiver<Command>) -> Self {
        let record = job.record();
        let deadline = record.request.options.timeout.map(|t| {
            let ends_ms = record
                .latest
                .started_ms
                .saturating_add(t.as_millis() as u64);
            let left = Duration::from_millis(ends_ms.saturating_sub(now_ms()));
            (tokio::time::Instant::now() + left, t.as_secs())
        });
        Ctx {
            inner,
            job,
            inbox,
            stop: None,
            deadline,
            pivot_begun: matches!(record.stage, Stage::Pivoted(_)),
            // A recovered copy is announced already; it is confirmed running
            // (or not) by `recovery::decide`.
            copy: if matches!(record.stage, Stage::Mirroring(_)) {
                CopyControl::Pending
            } else {
                CopyControl::NotAnnounced
            },
            ending: false,
            member: job.group().and_then(|g| {
                let gate = g.gate.clone()?;
                let index = g.members.iter().position(|m| m.id == job.id)?;
                Some(Member { gate, index })
            }),
            copy_slot: None,
            // Created inside the migration's span (see `run`).
            span: tracing::Span::current(),
            phase: None,
        }
    }

    /// Opens the span of `phase` unless it is the one open (the terminal
    /// phases have none: they end the migration's span).
    fn enter_phase(&mut self, phase: Phase) {
        if phase.is_terminal() || self.phase.as_ref().is_some_and(|(p, _)| *p == phase) {
            return;
        }
        // The migration's identity is its parent's: the exporter copies it
        // to the span, and a JSON log line lists the parent's fields.
        let span = tracing::info_span!(
            parent: &self.span,
            "phase",
            otel.name = %format!("phase {}", phase.name()),
            phase = phase.name(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        self.phase = Some((phase, span));
    }

    /// The span work belongs in now: the phase's, else the migration's.
    fn work_span(&self) -> tracing::Span {
        self.phase
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| self.span.clone())
    }

    pub fn record(&self) -> Record {
        self.job.record()
    }

    pub fn plan(&self) -> Plan {
        self.job.lock().record.plan.clone()
    }

    fn stopped(&self) -> Result<(), Error> {
        match &self.stop {
            Some(StopReason::Cancelled) => Err(Error::Cancelled),
            Some(StopReason::TimedOut(s)) => Err(Error::TimedOut(*s)),
            Some(StopReason::MemberFailed { disk, reason }) => Err(Error::GroupAborted {
                disk: disk.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The instant the timeout fires, while it still applies.
    fn live_deadline(&self) -> Option<(tokio::time::Instant, u64)> {
        self.deadline
            .filter(|_| self.stop.is_none() && !self.pivot_begun && !self.ending)
    }

    /// The group's gate, while an abort of the group still stops this job.
    fn live_gate(&self) -> Option<Arc<crate::group::Gate>> {
        self.member
            .as_ref()
            .filter(|_| self.stop.is_none() && !self.pivot_begun && !self.ending)
            .map(|m| m.gate.clone())
    }

    /// Drives `fut` to completion while answering commands.
    async fn attend<F: Future>(&mut self, fut: F) -> F::Output {
        let fut = fut.instrument(self.work_span());
        tokio::pin!(fut);
        loop {
            let deadline = self.live_deadline();
            let gate = self.live_gate();
            tokio::select! {
                biased;
                out = &mut fut => return out,
                Some(cmd) = self.inbox.recv() => self.handle(cmd).await,
                _ = until(deadline) => self.time_out(),
                why = group_abort(gate) => self.group_stopped(why),
            }
        }
    }

    /// Waits `d`, answering commands; returns early with the stop error as soon
    /// as the job is cancelled or times out.
    async fn pause(&mut self, d: Duration) -> Result<(), Error> {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            let deadline = self.live_deadline();
            let gate = self.live_gate();
            tokio::select! {
                biased;
                Some(cmd) = self.inbox.recv() => self.handle(cmd).await,
                _ = until(deadline) => self.time_out(),
                why = group_abort(gate) => self.group_stopped(why),
                _ = &mut sleep => return self.stopped(),
            }
            self.stopped()?;
        }
    }

    fn group_stopped(&mut self, why: Abort) {
        self.stop.get_or_insert(match why {
            Abort::Cancelled => StopReason::Cancelled,
            Abort::MemberFailed { disk, reason } => StopReason::MemberFailed { disk, reason },
        });
    }

    /// Answers every queued command, then says whether the job must stop.
    async fn checkpoint(&mut self) -> Result<(), Error> {
        while let Ok(cmd) = self.inbox.try_recv() {
            self.handle(cmd).await;
        }
        if self
            .live_deadline()
            .is_some_and(|(at, _)| at <= tokio::time::Instant::now())
        {
            self.time_out();
        }
        self.stopped()
    }

    fn time_out(&mut self) {
        if let Some((_, secs)) = self.deadline {
            self.stop.get_or_insert(StopReason::TimedOut(secs));
        }
    }

    fn wrong_phase(&self, reason: &'static str) -> Error {
        Error::WrongPhase {
            id: self.job.id.clone(),
            phase: self.job.latest().phase.name(),
            reason,
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Cancel(reply) => {
                // A disk of a group is cancelled with its whole group, and
                // only while the group can still roll back.
                let group_refused = self
                    .member
                    .as_ref()
                    .is_some_and(|m| !m.gate.abort(Abort::Cancelled));
                let answer = if self.pivot_begun || group_refused {
                    Err(self.wrong_phase(
                        "the pivot has begun: the guest is being switched to the destination and the migration can no longer be cancelled",
                    ))
                } else if self.ending && self.stop != Some(StopReason::Cancelled) {
                    Err(self.wrong_phase("it is already failing and being rolled back"))
                } else {
                    self.stop.get_or_insert(StopReason::Cancelled);
                    Ok(self.job.latest())
                };
                // The caller may be gone; the decision stands either way.
                let _ = reply.send(answer);
            }
            Command::SetBandwidth(bandwidth, reply) => {
                let answer = if self.pivot_begun {
                    Err(self.wrong_phase("bandwidth can only be changed while copying"))
                } else if self.stop.is_some() || self.ending {
                    Err(self.wrong_phase("it is stopping"))
                } else {
                    match self.copy {
                        CopyControl::NotAnnounced => {
                            Err(self
                                .wrong_phase("the copy has not begun: wait for the COPYING event"))
                        }
                        CopyControl::Pending => {
                            self.job.lock().record.bandwidth = bandwidth;
                            Ok(())
                        }
                        CopyControl::Running => {
                            let plan = self.plan();
                            self.inner
                                .hv(move |hv| {
                                    hv.block_job_set_speed(&plan.domain, &plan.target, bandwidth)
                                })
                                .await
                                .map(|()| self.job.lock().record.bandwidth = bandwidth)
                                .map_err(Error::hv("changing the copy bandwidth"))
                        }
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// The block job runs at `speed`: from now on a bandwidth change is made in
    /// place, and one recorded while it was pending is applied. Should that
    /// fail, the copy goes on at `speed` and the record says so.
    async fn copy_runs(&mut self, speed: u64) {
        self.copy = CopyControl::Running;
        let wanted = self.job.lock().record.bandwidth;
        if wanted == speed {
            return;
        }
        let plan = self.plan();
        // Not attended: a SetBandwidth answered meanwhile would race this one.
        let applied = self
            .inner
            .hv(move |hv| hv.block_job_set_speed(&plan.domain, &plan.target, wanted))
            .await;
        if let Err(e) = applied {
            tracing::warn!(error = %e, bandwidth = wanted, "cannot apply the bandwidth set while the copy was being issued; it runs at {speed} bytes/s");
            self.job.lock().record.bandwidth = speed;
        }
    }

    /// A hypervisor call, answering commands while it runs.
    pub async fn hv<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let inner = self.inner;
        self.attend(inner.hv(f)).await
    }

    /// A hypervisor call retried while libvirtd is unreachable (restarting), up
    /// to the grace period.
    pub async fn hv_retry<T: Send + 'static>(
        &mut self,
        what: &str,
        f: impl Fn(&dyn Hypervisor) -> Result<T, HvError> + Send + Sync + Clone + 'static,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + self.inner.config.libvirt_grace;
        loop {
            match self.hv(f.clone()).await {
                Err(HvError::Unreachable { .. }) if Instant::now() < deadline => {
                    let inner = self.inner;
                    self.attend(tokio::time::sleep(retry_pause(inner))).await;
                }
                Err(HvError::Unreachable { uri, message }) => {
                    return Err(Error::Unavailable(format!(
                        "{what}: libvirt at {uri} unreachable for {} s: {message}",
                        self.inner.config.libvirt_grace.as_secs()
                    )))
                }
                other => return other.map_err(Error::hv(what)),
            }
        }
    }

    /// Journals, then announces, a change of the record.
    pub async fn publish(&mut self, update: impl FnOnce(&mut Record)) -> Result<(), Error> {
        let (inner, job) = (self.inner, self.job);
        let published = self.attend(inner.publish(job, update)).await;
        self.enter_phase(self.job.latest().phase);
        published
    }

    pub async fn set_phase(&mut self, phase: Phase, message: String) -> Result<(), Error> {
        self.enter_phase(phase);
        self.work_span()
            .in_scope(|| tracing::info!(phase = phase.name(), "{message}"));
        self.publish(|r| {
            r.latest.phase = phase;
            r.latest.message = message;
            // A convergence warning is about the copy, which this phase ends.
            r.latest.convergence = None;
        })
        .await
    }
}

fn retry_pause(inner: &Inner) -> Duration {
    Duration::from_millis(500).min(inner.config.libvirt_grace / 4 + Duration::from_millis(1))
}

async fn group_abort(gate: Option<Arc<crate::group::Gate>>) -> Abort {
    match gate {
        Some(gate) => gate.aborted().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<(tokio::time::Instant, u64)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn complete(ctx: &mut Ctx<'_>, result: MigrationResult) {
    let message = format!(
        "completed: {} now on {}",
        ctx.job.latest().disk,
        result.destination.display_name()
    );
    let published = ctx
        .publish(|r| {
            r.latest.phase = Phase::Completed;
            r.latest.message = message;
            r.latest.result = Some(result);
        })
        .await;
    if let Err(e) = published {
        tracing::error!(error = %e, "cannot journal completion");
        ctx.inner.announce(ctx.job);
    }
    tracing::info!("migration completed");
}

async fn fresh(ctx: &mut Ctx<'_>) -> Result<MigrationResult, Error> {
    ctx.set_phase(
        Phase::Validating,
        "checking the guest, the disk and the destination pool".to_string(),
    )
    .await?;
    ctx.checkpoint().await?;
    // Validated again right before anything changes, under the reserved name.
    let mut request = ctx.record().request;
    request.destination_volume = Some(ctx.plan().dest_volume);
    let fresh = ctx
        .hv(move |hv| {
            Ok(plan::plan(hv, &request).and_then(|p| {
                // Proven here, right before anything is created, and not when
                // the request is accepted: it reads both layers whole.
                chain::prove_reuse(hv, &p.chain)?;
                Ok(p)
            }))
        })
        .await
        .map_err(Error::hv("validating"))??;
    ctx.publish(|r| r.plan = fresh).await?;
    ctx.checkpoint().await?;
    if let Some(member) = ctx.member.clone() {
        // Waits before anything is created, so a limited group holds at most
        // its limit of destinations being filled.
        ctx.copy_slot = ctx.attend(member.gate.copy_slot()).await;
        ctx.checkpoint().await?;
    }
    let backing = prepare_layers(ctx).await?;
    ctx.checkpoint().await?;
    let dest = prepare(ctx, backing).await?;
    ctx.checkpoint().await?;
    start_copy(ctx, &dest).await?;
    continue_from(ctx, Resume::Copy(dest)).await
}

async fn continue_from(ctx: &mut Ctx<'_>, resume: Resume) -> Result<MigrationResult, Error> {
    let dest = match resume {
        Resume::Copy(dest) => {
            wait_until_ready(ctx, &dest).await?;
            ctx.set_phase(
                Phase::Synchronized,
                "source and destination are synchronized".to_string(),
            )
            .await?;
            ctx.copy_slot = None;
            let hold = ctx.inner.config.synchronized_hold;
            if !hold.is_zero() {
                ctx.pause(hold).await?;
            }
            let member = ctx.member.clone();
            if let Some(member) = &member {
                wait_for_group(ctx, member, &dest).await?;
            }
            begin_pivot(ctx, &dest).await?;
            if let Some(member) = &member {
                // One pivot at a time, in request order, with nothing else in
                // between: every member journaled its pivot already.
                ctx.attend(member.gate.turn(member.index)).await;
            }
            timed_pivot(ctx, &dest).await?;
            dest
        }
        Resume::Pivot(dest) => {
            timed_pivot(ctx, &dest).await?;
            dest
        }
        Resume::Verify(dest) => dest,
    };
    let persistent_repaired = verify(ctx, &dest).await?;
    redefine_snapshots(ctx, &dest).await?;
    // Measured before a source deletion, so both sides can be compared.
    let source_allocated = allocated(ctx, &ctx.plan().source).await;
    let destination_allocated = allocated(ctx, &dest.disk).await;
    let (source_deleted, source_kept_reason) = cleanup(ctx).await?;
    let plan = ctx.plan();
    let source = plan.source_volume.clone();
    Ok(MigrationResult {
        destination: dest.disk,
        destination_pool: plan.dest_pool,
        destination_volume: dest.volume.name,
        destination_format: plan.dest_format,
        source_pool: source.as_ref().map(|v| v.pool.clone()).unwrap_or_default(),
        source_volume: source.map(|v| v.name).unwrap_or_default(),
        previous_source: plan.source.display_name(),
        source_deleted,
        persistent_repaired,
        source_kept_reason,
        source_allocated,
        destination_allocated,
    })
}

/// What the storage spends on `disk`; 0 when it cannot be measured (the
/// migration is done either way).
async fn allocated(ctx: &mut Ctx<'_>, disk: &DiskSource) -> u64 {
    let disk = disk.clone();
    match ctx.hv(move |hv| hv.allocated_bytes(&disk)).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot measure an allocation for the result");
            0
        }
    }
}

/// SHALLOW: makes every read-only layer of the chain present in the
/// destination pool, bottom first: a layer the pool holds already (proven in
/// VALIDATING) is used as it is; any other is created, journaled, and filled
/// with an exact copy of the source layer linked to the destination's copy of
/// the layer below. Returns the destination chain, nearest first, for the
/// top to be created over (empty when the chain is flattened).
async fn prepare_layers(ctx: &mut Ctx<'_>) -> Result<Vec<BackingLayer>, Error> {
    let plan = ctx.plan();
    if plan.chain.is_empty() {
        return Ok(Vec::new());
    }
    let to_copy = plan.chain.iter().filter(|l| l.reused.is_none()).count();
    ctx.set_phase(
        Phase::PreparingDestination,
        format!(
            "making the {} backing layer(s) present in pool {}: {} reused, {} to copy ({} bytes)",
            plan.chain.len(),
            plan.dest_pool,
            plan.chain.len() - to_copy,
            to_copy,
            chain::layers_to_copy_bytes(&plan.chain)
        ),
    )
    .await?;
    let mut below: Option<(String, ImageFormat)> = None;
    let mut chain = Vec::new();
    for layer in &plan.chain {
        ctx.checkpoint().await?;
        let path = match &layer.reused {
            Some(volume) => volume.path.clone(),
            None => {
                // Journaled before the call, as for the top (see `prepare`).
                let name = layer.dest_volume.clone();
                ctx.publish(|r| r.creating_layer = Some(name)).await?;
                let new = NewVolume {
                    name: layer.dest_volume.clone(),
                    capacity: layer.capacity,
                    format: layer.format,
                    backing: below.clone(),
                };
                let pool = plan.dest_pool.clone();
                let created = ctx.hv(move |hv| hv.create_volume(&pool, &new)).await;
                let volume = match created {
                    Ok(v) => v,
                    Err(e) => {
                        if !matches!(e, HvError::Unreachable { .. }) {
                            ctx.job.lock().record.creating_layer = None;
                        }
                        return Err(layer_error(&plan, &layer.dest_volume, e));
                    }
                };
                let identity = volume.identity();
                let message = format!(
                    "copying backing layer {} ({} bytes) to {}",
                    layer.source, layer.allocation, volume.path
                );
                ctx.publish(|r| {
                    r.creating_layer = None;
                    r.created_layers.push(identity.clone());
                    r.latest.message = message;
                })
                .await?;
                let (source, back) = (layer.source.clone(), below.clone());
                ctx.hv_retry("copying a backing layer", move |hv| {
                    hv.copy_layer(
                        &source,
                        &identity,
                        back.as_ref().map(|(p, f)| (p.as_str(), *f)),
                    )
                })
                .await?;
                volume.path
            }
        };
        below = Some((path.clone(), layer.format));
        chain.push(BackingLayer {
            source: DiskSource::File { path },
            format: Some(layer.format.as_str().to_string()),
        });
    }
    chain.reverse();
    Ok(chain)
}

fn layer_error(plan: &Plan, name: &str, e: HvError) -> Error {
    match e {
        HvError::NoSpace(m) => Error::Exhausted(format!(
            "pool '{}' cannot hold backing layer {name}: {m}",
            plan.dest_pool
        )),
        HvError::VolumeExists(_) => Error::DestinationExists {
            pool: plan.dest_pool.clone(),
            volume: name.to_string(),
        },
        other => Error::hv(format!(
            "creating backing layer {name} in pool '{}'",
            plan.dest_pool
        ))(other),
    }
}

async fn prepare(ctx: &mut Ctx<'_>, backing: Vec<BackingLayer>) -> Result<Destination, Error> {
    let plan = ctx.plan();
    ctx.set_phase(
        Phase::PreparingDestination,
        format!(
            "creating volume {} ({}, {} bytes) in pool {}",
            plan.dest_volume, plan.dest_format, plan.capacity, plan.dest_pool
        ),
    )
    .await?;
    let name = plan.dest_pool.clone();
    let pool = ctx
        .hv_retry("reading the destination pool", move |hv| hv.pool(&name))
        .await?;
    // Journaled before the call: a node that dies inside it cannot know whether
    // the volume was made, and must not delete a volume of that name later.
    ctx.publish(|r| r.stage = Stage::Creating).await?;
    let new = NewVolume {
        name: plan.dest_volume.clone(),
        capacity: plan.capacity,
        format: plan.dest_format,
        backing: backing
            .first()
            .map(|l| (l.source.display_name(), ImageFormat::Qcow2)),
    };
    let dest_pool = plan.dest_pool.clone();
    let created = ctx.hv(move |hv| hv.create_volume(&dest_pool, &new)).await;
    let volume = match created {
        Ok(volume) => volume,
        Err(e) => {
            if !matches!(e, HvError::Unreachable { .. }) {
                // libvirt refused the create: nothing exists to roll back.
                ctx.job.lock().record.stage = Stage::Planned;
            }
            return Err(create_error(&plan, e));
        }
    };
    ctx.inner
        .rename_reservation(ctx.job, &plan.dest_pool, &plan.dest_volume, &volume.name);
    let identity = volume.identity();
    ctx.publish(|r| {
        r.plan.dest_volume = identity.name.clone();
        r.stage = Stage::Created(identity.clone());
    })
    .await?;
    if volume.capacity < plan.capacity {
        return Err(Error::Exhausted(format!(
            "pool '{}' created volume {} with {} bytes, less than the disk's {} bytes",
            plan.dest_pool, volume.name, volume.capacity, plan.capacity
        )));
    }
    // QEMU's mirror needs the destination to have exactly the source's virtual size.
    // Pools round sizes up (partitions, extents, KiB for qcow2 files): a storage
    // slice hides the excess of a block volume; elsewhere the copy cannot work.
    let exact = volume.capacity == plan.capacity;
    let inexact = || {
        Error::Precondition(format!(
            "pool '{}' made volume {} {} bytes for a {}-byte disk and QEMU's mirror needs the exact size; choose a block pool or a raw destination whose size the pool does not round",
            plan.dest_pool, volume.name, volume.capacity, plan.capacity
        ))
    };
    let disk = match pool.disk_kind() {
        Some(DiskKind::File) if exact => DiskSource::File {
            path: volume.path.clone(),
        },
        Some(DiskKind::Block) if plan.dest_format == ImageFormat::Raw => DiskSource::Block {
            path: volume.path.clone(),
            slice_size: (!exact).then_some(plan.capacity),
        },
        Some(DiskKind::Network) if exact => DiskSource::Rbd {
            pool: pool.source_name.clone(),
            image: volume.name.clone(),
            hosts: pool.source_hosts.clone(),
            auth: pool.auth.clone(),
        },
        Some(_) => return Err(inexact()),
        None => {
            return Err(Error::Precondition(format!(
                "pool '{}' has type '{}', which cannot hold a live disk",
                pool.name, pool.pool_type
            )))
        }
    };
    let message = format!("created {} in pool {}", disk.display_name(), plan.dest_pool);
    ctx.publish(|r| r.latest.message = message).await?;
    Ok(Destination {
        volume: identity,
        disk,
        backing,
    })
}

fn create_error(plan: &Plan, e: HvError) -> Error {
    match e {
        HvError::NoSpace(m) => Error::Exhausted(format!(
            "pool '{}' cannot hold {} bytes: {m}",
            plan.dest_pool, plan.capacity
        )),
        HvError::VolumeExists(_) => Error::DestinationExists {
            pool: plan.dest_pool.clone(),
            volume: plan.dest_volume.clone(),
        },
        HvError::Unreachable { uri, message } => Error::Unavailable(format!(
            "libvirt at {uri} went away while creating volume {} in pool '{}' ({message}); whether it was created is unknown",
            plan.dest_volume, plan.dest_pool
        )),
        other => Error::hv(format!(
            "creating the destination volume in pool '{}'",
            plan.dest_pool
        ))(other),
    }
}

async fn start_copy(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    let message = format!(
        "copying {} to {}",
        plan.source.display_name(),
        dest.disk.display_name()
    );
    ctx.enter_phase(Phase::Copying);
    tracing::info!(phase = Phase::Copying.name(), "{message}");
    let mirroring = dest.clone();
    // Set before the event goes out: whoever sees COPYING may change the bandwidth.
    ctx.copy = CopyControl::Pending;
    ctx.publish(|r| {
        r.stage = Stage::Mirroring(mirroring);
        r.latest.phase = Phase::Copying;
        r.latest.message = message;
    })
    .await?;
    issue_copy(ctx, dest).await
}

/// Starts the block copy onto `dest`, in synchronous-writes mode when the
/// request asked for it or a copy that did not converge was switched to it,
/// at the bandwidth recorded last (a SetBandwidth may come while it is issued).
async fn issue_copy(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    let disk = dest.disk.clone();
    let object_size = match ctx.hv(move |hv| hv.rbd_object_size(&disk)).await {
        Ok(size) => size,
        Err(e) => {
            // Not fatal: QEMU's defaults copy correctly, only less thinly.
            tracing::warn!(error = %e, "cannot read the RBD object size; copying with QEMU's default granularity");
            None
        }
    };
    let (buf_size, granularity) = tuning::for_object_size(object_size);
    let record = ctx.record();
    let copy = CopyOptions {
        bandwidth: record.bandwidth,
        synchronous_writes: record.request.options.synchronous_writes || record.forced_sync_writes,
        shallow: !dest.backing.is_empty(),
        buf_size,
        granularity,
    };
    let (disk, backing) = (dest.disk.clone(), dest.backing.clone());
    ctx.hv(move |hv| {
        hv.block_copy(
            &plan.domain,
            &plan.target,
            &disk,
            plan.dest_format,
            &backing,
            copy,
        )
    })
    .await
    .map_err(Error::hv("starting the block copy"))?;
    ctx.copy_runs(copy.bandwidth).await;
    Ok(())
}

fn same_source(a: &DiskSource, b: &DiskSource) -> bool {
    a.kind() == b.kind() && a.display_name() == b.display_name()
}

/// Whether a definition's disk shows exactly the destination chain below its
/// top; always true for a flattened copy, which has none to show.
fn chain_matches(disk: &DiskSpec, backing: &[BackingLayer]) -> bool {
    backing.is_empty()
        || (disk.backing.len() == backing.len()
            && disk
                .backing
                .iter()
                .zip(backing)
                .all(|(a, b)| same_source(&a.source, &b.source)))
}

fn chain_names(chain: &[BackingLayer]) -> String {
    let names: Vec<String> = chain.iter().map(|l| l.source.display_name()).collect();
    format!("[{}]", names.join(" <- "))
}

/// SHALLOW, after the pivot: redefines the domain's snapshots with the
/// destination's paths, so listing, reverting and deleting them act on the
/// moved chain. Idempotent: a restarted node redoes it harmlessly.
async fn redefine_snapshots(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    if plan.snapshots == 0 {
        return Ok(());
    }
    let mut renames = vec![(plan.source.display_name(), dest.disk.display_name())];
    renames.extend(
        plan.chain
            .iter()
            .zip(dest.backing.iter().rev())
            .map(|(l, d)| (l.source.clone(), d.source.display_name())),
    );
    let domain = plan.domain.clone();
    let redefined = ctx
        .hv_retry("redefining the snapshots on the moved chain", move |hv| {
            hv.redefine_snapshots(&domain, &renames)
        })
        .await
        .map_err(|e| {
            Error::Precondition(format!(
                "the disk is on its destination, but its {} snapshot(s) could not be redefined there ({e}); they still name the source images, which are kept: retry with `virsh snapshot-create {} FILE --redefine` on each snapshot's XML with the paths changed",
                plan.snapshots, plan.domain
            ))
        })?;
    let message = format!("{redefined} snapshot(s) redefined on the destination chain");
    ctx.publish(|r| r.latest.message = message).await
}

fn disk_of(disks: Vec<DiskSpec>, target: &str) -> Option<DiskSpec> {
    disks.into_iter().find(|d| d.target == target)
}

/// Watches the copy until it is synchronized, publishing its progress and
/// applying the request's policy when the copy does not converge.
async fn wait_until_ready(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    let config = ctx.inner.config.clone();
    let mut detector = convergence_detector(&ctx.record());
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut last_publish = Instant::now() - config.progress_interval;
    let mut unreachable_since: Option<Instant> = None;
    // A short copy is often done within one full interval, which would then be
    // waited out: start fast and double up to the interval, a handful of extra
    // calls on a long copy.
    let mut pause = FAST_POLL.min(config.poll_interval);
    loop {
        ctx.pause(pause).await?;
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let polled = ctx
            .hv(move |hv| {
                let info = hv.block_job(&domain, &target)?;
                let ready = match info {
                    Some(j) if j.end > 0 && j.cur == j.end => {
                        disk_of(hv.disks(&domain, Definition::Live)?, &target)
                            .and_then(|d| d.mirror)
                            .is_some_and(|m| m.ready)
                    }
                    _ => false,
                };
                Ok((info, ready))
            })
            .await;
        let (info, ready) = match polled {
            Ok(v) => {
                unreachable_since = None;
                v
            }
            Err(HvError::Unreachable { uri, message }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > config.libvirt_grace {
                    return Err(Error::Unavailable(format!(
                        "libvirt at {uri} unreachable for {} s during the copy: {message}",
                        config.libvirt_grace.as_secs()
                    )));
                }
                continue;
            }
            Err(HvError::InvalidState(m)) | Err(HvError::NoDomain(m)) => {
                return Err(stopped_during_copy(&plan.domain, &m))
            }
            Err(e) => {
                // A guest destroyed while the call was in flight surfaces as a
                // broken monitor connection rather than as "not running".
                let domain = plan.domain.clone();
                let stopped = ctx
                    .hv(move |hv| Ok(hv.domain(&domain).map_or(true, |d| !d.active)))
                    .await
                    .unwrap_or(false);
                if stopped {
                    return Err(stopped_during_copy(&plan.domain, &e));
                }
                return Err(Error::hv("polling the block job")(e));
            }
        };
        let Some(info) = info else {
            return Err(copy_vanished(ctx, &plan).await);
        };
        let now = Instant::now();
        samples.push_back((now, info.cur));
        while samples.len() > 2 && now.duration_since(samples[0].0) > Duration::from_secs(5) {
            samples.pop_front();
        }
        let rate = match (samples.front(), samples.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                (c1.saturating_sub(c0) as f64 / t1.duration_since(t0).as_secs_f64()) as u64
            }
            _ => 0,
        };
        let remaining = info.end.saturating_sub(info.cur);
        let progress = Progress {
            bytes_done: info.cur,
            bytes_total: info.end,
            rate,
            eta_seconds: if rate > 0 {
                remaining.div_ceil(rate)
            } else {
                0
            },
        };
        if ready {
            ctx.job.lock().record.latest.progress = progress;
            return Ok(());
        }
        if let Some(rates) = detector
            .as_mut()
            .and_then(|d| d.observe(now.into_std(), info.cur, info.end))
        {
            // Once per copy: a restarted copy writes synchronously and
            // always converges, and a warned one has said all there is.
            detector = None;
            if not_converging(ctx, &plan, dest, rates, progress).await? {
                samples.clear();
                last_publish = Instant::now() - config.progress_interval;
                continue;
            }
        }
        // The next poll comes when the copy should have converged at its current
        // rate, so the pivot follows convergence closely without polling fast
        // for long; between, slowly, to keep the node's CPU use negligible.
        let converging_in = if remaining == 0 {
            Duration::ZERO
        } else if rate > 0 {
            Duration::from_secs_f64(remaining as f64 / rate as f64)
        } else {
            config.poll_interval
        };
        pause = (pause * 2)
            .min(config.poll_interval)
            .min(converging_in.max(FAST_POLL));
        if last_publish.elapsed() >= config.progress_interval {
            last_publish = Instant::now();
            {
                let mut st = ctx.job.lock();
                st.record.latest.progress = progress;
                st.record.latest.timestamp_ms = now_ms();
                st.record.latest.message = format!(
                    "copying: {} of {} bytes",
                    progress.bytes_done, progress.bytes_total
                );
            }
            ctx.inner.announce(ctx.job);
        }
    }
}

/// A detector for the copy about to be watched; `None` when it writes
/// synchronously, since then guest writes reach both sides and it converges.
fn convergence_detector(record: &Record) -> Option<convergence::Detector> {
    let options = &record.request.options;
    (!options.synchronous_writes && !record.forced_sync_writes)
        .then(|| convergence::Detector::new(options.convergence_window()))
}

/// What an operator can do about a copy that does not converge.
fn remedy(id: &str, bandwidth: u64) -> String {
    let faster = if bandwidth > 0 {
        format!(
            "raise the bandwidth limit ({bandwidth} bytes/s now) with SetBandwidth (`volmig set-bandwidth {id} RATE`)"
        )
    } else {
        "the copy is not limited, so the destination cannot keep up with the guest: choose faster storage".to_string()
    };
    format!(
        "{faster}, or migrate with synchronous writes (`--sync-writes`), or let volmig switch to them (`--on-no-convergence switch-to-sync-writes`)"
    )
}

/// Warns (journaled) that the copy does not converge, then applies the
/// request's policy. Returns whether the copy was restarted.
async fn not_converging(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    dest: &Destination,
    rates: convergence::Rates,
    progress: Progress,
) -> Result<bool, Error> {
    let record = ctx.record();
    let options = &record.request.options;
    let window_secs = options.convergence_window().as_secs();
    let warning = ConvergenceWarning {
        dirty_rate: rates.dirty,
        copy_rate: rates.copy,
        remaining: rates.remaining,
        remedy: remedy(&record.id, record.bandwidth),
    };
    let message = format!(
        "copy of {} not converging: over the last {window_secs} s the guest dirtied {} bytes/s while {} bytes/s were copied ({} bytes left); {}",
        plan.target, rates.dirty, rates.copy, rates.remaining, warning.remedy
    );
    tracing::warn!(
        dirty_rate = rates.dirty,
        copy_rate = rates.copy,
        remaining = rates.remaining,
        "copy not converging"
    );
    let error = Error::NoConvergence {
        disk: plan.target.clone(),
        window_secs,
        dirty_rate: rates.dirty,
        copy_rate: rates.copy,
        remedy: warning.remedy.clone(),
    };
    ctx.publish(|r| {
        r.latest.progress = progress;
        r.latest.message = message;
        r.latest.convergence = Some(warning);
    })
    .await?;
    match options.on_no_convergence {
        NoConvergencePolicy::Warn => Ok(false),
        NoConvergencePolicy::Fail => Err(error),
        NoConvergencePolicy::SwitchToSyncWrites => {
            switch_to_sync_writes(ctx, plan, dest).await?;
            Ok(true)
        }
    }
}

/// Restarts the copy onto the same destination in synchronous-writes mode.
///
/// libvirt 9.0 has no call that changes a running copy's mode. QEMU 8.2 and
/// later can (`block-job-change` with `copy-mode: write-blocking`), but libvirt
/// offers it only through `virDomainQemuMonitorCommand`, which it documents as
/// unsupported (the domain is marked tainted and libvirt's view of the job is
/// bypassed), so the copy is aborted and started again on every QEMU version.
/// QEMU zeroes or fully rewrites the reused destination before it counts as
/// synchronized, so nothing of the first copy's partial data survives there.
///
/// The mode is journaled first: a node that restarts after the new copy began
/// keeps watching it as a synchronous copy; one that restarts in between finds
/// no copy and rolls back.
async fn switch_to_sync_writes(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    dest: &Destination,
) -> Result<(), Error> {
    let qemu = match ctx.hv(|hv| hv.host_info()).await {
        Ok(host) => host.hypervisor_version,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the QEMU version");
            "unknown".to_string()
        }
    };
    let in_place = if convergence::qemu_has_block_job_change(&qemu) {
        format!("QEMU {qemu} could switch in place (block-job-change) but libvirt has no supported call for it")
    } else {
        format!("QEMU {qemu} cannot switch a running copy")
    };
    let message = format!(
        "restarting the copy of {} to {} with synchronous writes ({in_place}); the copy starts over",
        plan.target,
        dest.disk.display_name()
    );
    tracing::info!("{message}");
    ctx.publish(|r| {
        r.forced_sync_writes = true;
        r.latest.message = message;
        r.latest.convergence = None;
        r.latest.progress = Progress::default();
    })
    .await?;
    ctx.copy = CopyControl::Pending;
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    ctx.hv_retry("aborting the copy to restart it", move |hv| {
        hv.block_job_abort(&domain, &target, false)
    })
    .await?;
    if !wait_for_no_job(ctx, plan).await {
        return Err(Error::Precondition(format!(
            "the aborted block copy of {} did not go away, so it could not be restarted with synchronous writes",
            plan.target
        )));
    }
    ctx.checkpoint().await?;
    issue_copy(ctx, dest).await
}

/// Waits (up to 10 s) until the disk has no block job; says whether it has none.
async fn wait_for_no_job(ctx: &mut Ctx<'_>, plan: &Plan) -> bool {
    // The abort is synchronous in libvirt, but a job may linger briefly in QEMU.
    for _ in 0..40 {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        match ctx.hv(move |hv| hv.block_job(&domain, &target)).await {
            Ok(Some(_)) => {
                ctx.attend(tokio::time::sleep(Duration::from_millis(250)))
                    .await
            }
            _ => return true,
        }
    }
    false
}

/// Space below which a destination pool counts as full when its copy stopped.
const FULL_MARGIN: u64 = 16 << 20;

/// Why a block copy ended on its own before it was synchronized. libvirt does
/// not say through the job calls; a destination pool that is now full is the
/// usual reason (QEMU fails the mirror on ENOSPC, the guest is unaffected).
async fn copy_vanished(ctx: &mut Ctx<'_>, plan: &Plan) -> Error {
    let pool_name = plan.dest_pool.clone();
    let pool = ctx.hv(move |hv| hv.pool(&pool_name)).await;
    match pool {
        Ok(pool) if pool.capacity > 0 && pool.available < FULL_MARGIN => {
            Error::Exhausted(format!(
                "the block copy of {} stopped because destination pool '{}' ran out of space ({} of {} bytes left); free space or choose another pool",
                plan.target, plan.dest_pool, pool.available, pool.capacity
            ))
        }
        _ => Error::Precondition(format!(
            "the block copy of {} ended before it was synchronized (QEMU or libvirt dropped it; see the domain log in /var/log/libvirt/qemu/{}.log)",
            plan.target, plan.domain
        )),
    }
}

/// Waits, synchronized, until every disk of the group is: then the pivots go
/// ahead and nothing stops this job before its own pivot any more. Until then a
/// cancel, a timeout or this copy ending on its own aborts the whole group.
async fn wait_for_group(
    ctx: &mut Ctx<'_>,
    member: &Member,
    dest: &Destination,
) -> Result<(), Error> {
    let gate = member.gate.clone();
    let all = gate.synchronized(member.index);
    tokio::pin!(all);
    let plan = ctx.plan();
    let poll = ctx.inner.config.poll_interval;
    loop {
        let outcome = tokio::select! {
            biased;
            all = &mut all => Some(all),
            paused = ctx.pause(poll) => match paused {
                Ok(()) => None,
                Err(e) => {
                    if gate.abort(Abort::MemberFailed { disk: plan.target.clone(), reason: e.to_string() }) {
                        return Err(e);
                    }
                    // Too late: the others were already told to pivot.
                    None
                }
            },
        };
        match outcome {
            Some(Ok(())) => {
                ctx.stop = None;
                ctx.pivot_begun = true;
                return Ok(());
            }
            Some(Err(why)) => {
                ctx.group_stopped(why);
                return ctx.stopped();
            }
            None => {}
        }
        if ctx.pivot_begun {
            continue;
        }
        if !recovery::mirroring_to(ctx, &plan, dest).await? {
            return Err(copy_vanished(ctx, &plan).await);
        }
    }
}

/// Pivots and keeps when the pivot was issued and when it ended.
async fn timed_pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let started = now_ms();
    let pivoted = pivot(ctx, dest).await;
    ctx.job.lock().record.pivot = Some((started, now_ms()));
    if let Some(member) = &ctx.member {
        member.gate.done(member.index);
    }
    pivoted
}

/// The one place a job commits to the pivot: it answers every queued command
/// first, and from the moment it sets `pivot_begun` (with no await in between)
/// every cancel is refused. The stage is journaled before the pivot is issued.
async fn begin_pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    ctx.checkpoint().await?;
    ctx.pivot_begun = true;
    let pivoted = dest.clone();
    ctx.enter_phase(Phase::Pivoting);
    tracing::info!(
        phase = Phase::Pivoting.name(),
        "switching the guest to the destination"
    );
    ctx.publish(|r| {
        r.stage = Stage::Pivoted(pivoted);
        r.latest.phase = Phase::Pivoting;
        r.latest.message = "switching the guest to the destination".to_string();
    })
    .await
}

async fn pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let pivoted = ctx
        .hv_retry("pivoting", move |hv| {
            hv.block_job_abort(&domain, &target, true)
        })
        .await;
    if let Err(e) = pivoted {
        // Another attempt may have pivoted already (after a restart): only the
        // live definition tells.
        if !on_destination(ctx, &plan, &dest.disk)
            .await
            .unwrap_or(false)
        {
            return Err(e);
        }
    }
    ctx.copy = CopyControl::NotAnnounced;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let job_left = ctx
            .hv_retry("waiting for the pivot", move |hv| {
                hv.block_job(&domain, &target)
            })
            .await?;
        if job_left.is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Precondition(format!(
                "the block job on {} did not end within 60 s of the pivot",
                plan.target
            )));
        }
        let inner = ctx.inner;
        ctx.attend(tokio::time::sleep(inner.config.poll_interval))
            .await;
    }
}

/// The source a definition of the disk names now.
pub(crate) async fn current_source(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    which: Definition,
) -> Result<Option<DiskSource>, Error> {
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let disk = ctx
        .hv_retry("reading the domain definition", move |hv| {
            if which == Definition::Persistent && !hv.domain(&domain)?.persistent {
                return Ok(None);
            }
            Ok(disk_of(hv.disks(&domain, which)?, &target))
        })
        .await?;
    Ok(disk.and_then(|d| d.source))
}

/// Whether the live definition names `dest`.
pub(crate) async fn on_destination(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    dest: &DiskSource,
) -> Result<bool, Error> {
    Ok(current_source(ctx, plan, Definition::Live)
        .await?
        .is_some_and(|s| same_source(&s, dest)))
}

/// Checks both definitions; repairs the persistent one where libvirt skipped it.
/// Returns whether it had to be repaired.
async fn verify(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<bool, Error> {
    let plan = ctx.plan();
    ctx.set_phase(
        Phase::Verifying,
        "checking the live and persistent definitions".to_string(),
    )
    .await?;
    if !on_destination(ctx, &plan, &dest.disk).await? {
        return Err(Error::Precondition(format!(
            "after the pivot the running guest's {} does not use {}; the guest may still be on its source",
            plan.target,
            dest.disk.display_name()
        )));
    }
    if !dest.backing.is_empty() {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let live = ctx
            .hv_retry("reading the live definition", move |hv| {
                Ok(disk_of(hv.disks(&domain, Definition::Live)?, &target))
            })
            .await?;
        if !live
            .as_ref()
            .is_some_and(|d| chain_matches(d, &dest.backing))
        {
            return Err(Error::Precondition(format!(
                "after the pivot the running guest's {} is on {} but its backing chain is {}, not {}",
                plan.target,
                dest.disk.display_name(),
                live.map(|d| chain_names(&d.backing)).unwrap_or_default(),
                chain_names(&dest.backing)
            )));
        }
    }
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let persistent = ctx
        .hv_retry("reading the persistent definition", move |hv| {
            if !hv.domain(&domain)?.persistent {
                return Ok(None);
            }
            Ok(Some(disk_of(
                hv.disks(&domain, Definition::Persistent)?,
                &target,
            )))
        })
        .await?;
    let mut repaired = false;
    if let Some(disk) = persistent {
        let ok = disk.is_some_and(|d| {
            d.source
                .as_ref()
                .is_some_and(|s| same_source(s, &dest.disk))
                && chain_matches(&d, &dest.backing)
        });
        if !ok {
            tracing::warn!(
                "persistent definition still names the old source or chain; repairing it"
            );
            let (domain, target, d, fmt, backing) = (
                plan.domain.clone(),
                plan.target.clone(),
                dest.disk.clone(),
                plan.dest_format,
                dest.backing.clone(),
            );
            ctx.hv_retry("repairing the persistent definition", move |hv| {
                hv.update_persistent_disk(&domain, &target, &d, fmt, &backing)
            })
            .await?;
            let (domain, target) = (plan.domain.clone(), plan.target.clone());
            let again = ctx
                .hv_retry("reading the persistent definition", move |hv| {
                    Ok(disk_of(hv.disks(&domain, Definition::Persistent)?, &target))
                })
                .await?;
            if !again.is_some_and(|d| {
                d.source
                    .as_ref()
                    .is_some_and(|s| same_source(s, &dest.disk))
                    && chain_matches(&d, &dest.backing)
            }) {
                return Err(Error::Precondition(format!(
                    "the persistent definition of '{}' still does not name {} after repair; the guest runs on the destination but would boot from the old disk: fix it with `virsh edit {}`",
                    plan.domain,
                    dest.disk.display_name(),
                    plan.domain
                )));
            }
            repaired = true;
        }
    }
    keep_checkpoints(ctx, &plan, dest).await?;
    if ctx.record().request.options.verify == VerifyLevel::Strict {
        let (vol, p) = (dest.volume.clone(), plan.clone());
        let (vol_cap, disk_cap) = ctx
            .hv_retry("checking sizes", move |hv| {
                Ok((
                    hv.volume(&vol.pool, &vol.name)?.capacity,
                    hv.disk_capacity(&p.domain, &p.target)?,
                ))
            })
            .await?;
        if vol_cap < plan.capacity || disk_cap != plan.capacity {
            return Err(Error::Precondition(format!(
                "size check failed: the disk was {} bytes; destination volume has {vol_cap}, the guest now sees {disk_cap}",
                plan.capacity
            )));
        }
    }
    Ok(repaired)
}

/// Points every checkpoint that tracks the disk at the destination and has
/// libvirt validate its bitmap there (libvirt merged the bitmaps into the
/// destination during the pivot; it skips that silently when it cannot).
async fn keep_checkpoints(ctx: &mut Ctx<'_>, plan: &Plan, dest: &Destination) -> Result<(), Error> {
    let domain = plan.domain.clone();
    let checkpoints = ctx
        .hv_retry("reading the checkpoints", move |hv| {
            if hv.domain(&domain)?.checkpoints == 0 {
                return Ok(Vec::new());
            }
            hv.checkpoints(&domain)
        })
        .await?;
    let names: Vec<String> = checkpoints
        .into_iter()
        .filter(|c| c.bitmap_on(&plan.target).is_some())
        .map(|c| c.name)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    for name in &names {
        let (domain, target, disk, format, cp) = (
            plan.domain.clone(),
            plan.target.clone(),
            dest.disk.clone(),
            plan.dest_format,
            name.clone(),
        );
        let kept = ctx
            .hv_retry("redefining a checkpoint on the destination", move |hv| {
                hv.redefine_checkpoint(&domain, &cp, &target, &disk, format)
            })
            .await;
        if let Err(e) = kept {
            return Err(Error::Precondition(format!(
                "the guest runs on {} but checkpoint '{name}' is not usable there ({e}); incremental backups from it will fail: take a full backup and a new checkpoint, then delete it (`virsh checkpoint-delete {} {name} --metadata`)",
                dest.disk.display_name(),
                plan.domain
            )));
        }
    }
    let message = format!(
        "checkpoint(s) {} now describe {} and their bitmaps are valid there",
        names.join(", "),
        dest.disk.display_name()
    );
    tracing::info!("{message}");
    ctx.publish(|r| r.latest.message = message).await
}

/// Deletes the source when asked and nothing else uses it. Returns whether it
/// was deleted and, when it was kept although deletion was asked, why.
async fn cleanup(ctx: &mut Ctx<'_>) -> Result<(bool, Option<String>), Error> {
    let plan = ctx.plan();
    let options = ctx.record().request.options;
    let source = plan.source.display_name();
    if !options.delete_source {
        ctx.set_phase(Phase::CleaningUp, format!("source {source} kept"))
            .await?;
        return Ok((false, None));
    }
    let Some(volume) = plan.source_volume.clone() else {
        let why = format!("source {source} is in no storage pool, so volmig does not delete it");
        ctx.set_phase(Phase::CleaningUp, format!("{why}; kept"))
            .await?;
        return Ok((false, Some(why)));
    };
    ctx.set_phase(
        Phase::CleaningUp,
        format!(
            "checking that nothing else uses source volume {}",
            volume.display_name()
        ),
    )
    .await?;
    let path = volume.path.clone();
    let found = ctx
        .hv_retry("looking for other users of the source", move |hv| {
            hv.volume_users(&path)
        })
        .await;
    // What cannot be checked is not deleted; the migration itself is done.
    let mut users: Vec<String> = match found {
        Ok(users) => users.iter().map(ToString::to_string).collect(),
        Err(e) => vec![format!("its users could not be checked ({e})")],
    };
    users.extend(options.source_users_elsewhere.iter().cloned());
    if !users.is_empty() {
        let why = format!("still in use: {}", users.join("; "));
        let message = format!("source volume {} kept: {why}", volume.display_name());
        ctx.publish(|r| r.latest.message = message).await?;
        return Ok((false, Some(why)));
    }
    let expected = volume.clone();
    let deleted = ctx
        .hv_retry("deleting the source volume", move |hv| {
            hv.delete_volume_if_same(&expected)
        })
        .await?;
    let (gone, why, message) = match deleted {
        Deletion::Deleted => (
            true,
            None,
            format!("source volume {} deleted", volume.display_name()),
        ),
        // A resumed cleanup after a restart finds its own earlier delete.
        Deletion::Gone => (
            true,
            None,
            format!("source volume {} was already gone", volume.display_name()),
        ),
        Deletion::Replaced(what) => {
            let why = format!("a different volume now has its name: {what}");
            let message = format!("source volume {} kept: {why}", volume.display_name());
            (false, Some(why), message)
        }
    };
    // The source may be gone now: a journal hiccup on this message must not
    // turn a finished migration into a failure that says the source is kept.
    if let Err(e) = ctx.publish(|r| r.latest.message = message).await {
        tracing::warn!(error = %e, "cannot journal the clean-up message");
    }
    Ok((gone, why))
}

/// Ends the migration after an error: undoes what the journaled stage says can
/// be undone, and publishes the terminal event saying where the disk is.
pub(crate) async fn fail(ctx: &mut Ctx<'_>, err: Error) {
    ctx.ending = true;
    ctx.copy_slot = None;
    let record = ctx.record();
    if let Some(member) = &ctx.member {
        // Before the commit the other disks roll back too; after it they carry on.
        member.gate.abort(Abort::MemberFailed {
            disk: record.plan.target.clone(),
            reason: err.to_string(),
        });
        member.gate.done(member.index);
    }
    let phase_at = record.latest.phase;
    tracing::warn!(error = %err, phase = phase_at.name(), "migration failed");
    let status = format!("{}: {err}", err.terminal_phase().name());
    record_error(&ctx.span, &status);
    record_error(&ctx.work_span(), &status);
    let plan = record.plan;
    let disk_state = match record.stage.clone() {
        Stage::Planned => format!(
            "nothing was changed; the guest stays on its source {}",
            plan.source.display_name()
        ),
        Stage::Creating => format!(
            "the guest stays on its source {}; the node lost track while creating volume {} in pool {}: if that volume exists, volmig did not delete it because it cannot prove it created it (check with `virsh vol-info {} --pool {}` and delete it if nothing uses it)",
            plan.source.display_name(),
            plan.dest_volume,
            plan.dest_pool,
            plan.dest_volume,
            plan.dest_pool
        ),
        Stage::Created(volume) => {
            let deleted = delete_destination(ctx, &volume).await;
            format!(
                "the guest stays on its source {}{deleted}",
                plan.source.display_name()
            )
        }
        Stage::Mirroring(dest) => roll_back_mirror(ctx, &plan, &dest).await,
        Stage::Pivoted(dest) => where_after_pivot(ctx, &plan, &dest).await,
    };
    // Layers go only while the guest provably never left its source: before
    // any mirror, or after a rollback that deleted the top over them.
    let layers_unused = match &record.stage {
        Stage::Planned | Stage::Creating | Stage::Created(_) => true,
        Stage::Mirroring(_) => disk_state.starts_with("the guest stays on its source"),
        Stage::Pivoted(_) => false,
    };
    let disk_state = format!(
        "{disk_state}{}",
        roll_back_layers(
            ctx,
            &record.created_layers,
            record.creating_layer.as_deref(),
            &plan.dest_pool,
            layers_unused
        )
        .await
    );
    let failure = Failure {
        code: err.code(),
        message: err.to_string(),
        phase: phase_at,
        disk_state: disk_state.clone(),
    };
    let terminal = err.terminal_phase();
    let published = ctx
        .publish(|r| {
            r.latest.phase = terminal;
            r.latest.message = format!("{}: {}; {}", terminal.name(), err, disk_state);
            r.latest.failure = Some(failure);
        })
        .await;
    if let Err(e) = published {
        tracing::error!(error = %e, "cannot journal the failure");
        ctx.inner.announce(ctx.job);
    }
}

/// Deletes the backing layers this migration copied (topmost first, never a
/// reused one), each only while it is still the volume volmig created and
/// nothing uses it (another migration's overlay, a domain); says what
/// happened, as a suffix of the disk state. With `unused` false (the guest
/// may be on the destination chain) every layer is kept and named.
async fn roll_back_layers(
    ctx: &mut Ctx<'_>,
    created: &[VolumeIdentity],
    creating: Option<&str>,
    pool: &str,
    unused: bool,
) -> String {
    let mut said = String::new();
    if let Some(name) = creating {
        said.push_str(&format!(
            "; the node lost track while creating backing layer {name} in pool {pool}: if it exists, volmig did not delete it (check with `virsh vol-info {name} --pool {pool}` and delete it if nothing uses it)"
        ));
    }
    if created.is_empty() {
        return said;
    }
    if !unused {
        let names: Vec<String> = created.iter().map(|v| v.display_name()).collect();
        said.push_str(&format!(
            "; the backing layers volmig copied are kept: {}",
            names.join(", ")
        ));
        return said;
    }
    for layer in created.iter().rev() {
        let path = layer.path.clone();
        let users = ctx
            .hv_retry("looking for users of a copied layer", move |hv| {
                hv.volume_users(&path)
            })
            .await;
        match users {
            Ok(users) if users.is_empty() => said.push_str(&delete_destination(ctx, layer).await),
            Ok(users) => {
                let users: Vec<String> = users.iter().map(ToString::to_string).collect();
                said.push_str(&format!(
                    "; backing layer {} kept: {}",
                    layer.display_name(),
                    users.join("; ")
                ));
            }
            Err(e) => said.push_str(&format!(
                "; backing layer {} kept: its users could not be checked ({e})",
                layer.display_name()
            )),
        }
    }
    said
}

/// Deletes the destination volume volmig created, only while it is still that
/// volume; says what happened, as a suffix of the disk state.
async fn delete_destination(ctx: &mut Ctx<'_>, volume: &VolumeIdentity) -> String {
    let expected = volume.clone();
    let deleted = ctx
        .hv_retry("deleting the destination volume", move |hv| {
            hv.delete_volume_if_same(&expected)
        })
        .await;
    let name = volume.display_name();
    match deleted {
        Ok(Deletion::Deleted) => format!("; destination volume {name} deleted"),
        Ok(Deletion::Gone) => format!("; destination volume {name} was already gone"),
        Ok(Deletion::Replaced(why)) => format!(
            "; a volume {name} exists but is not the one volmig created ({why}), so it was kept"
        ),
        Err(e) => format!(
            "; destination volume {name} could NOT be deleted ({e}): check nothing uses it, then `virsh vol-delete {} --pool {}`",
            volume.name, volume.pool
        ),
    }
}

/// Before the pivot: abort the copy, and delete the destination only when
/// neither definition of the guest names it.
async fn roll_back_mirror(ctx: &mut Ctx<'_>, plan: &Plan, dest: &Destination) -> String {
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let aborted = ctx
        .hv_retry("aborting the block copy", move |hv| {
            match hv.block_job(&domain, &target) {
                Ok(Some(_)) => hv.block_job_abort(&domain, &target, false),
                Ok(None) | Err(HvError::InvalidState(_)) | Err(HvError::NoDomain(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await;
    if let Err(e) = &aborted {
        tracing::warn!(error = %e, "aborting the block job failed");
    }
    if !wait_for_no_job(ctx, plan).await {
        tracing::warn!("the aborted block job is still listed");
    }
    ctx.copy = CopyControl::NotAnnounced;
    let live = current_source(ctx, plan, Definition::Live).await;
    let persistent = current_source(ctx, plan, Definition::Persistent).await;
    let names_dest = |s: &Result<Option<DiskSource>, Error>| match s {
        Ok(Some(s)) => same_source(s, &dest.disk),
        Ok(None) => false,
        Err(_) => true,
    };
    if let (Err(e), _) | (_, Err(e)) = (&live, &persistent) {
        return format!(
            "unknown: libvirt could not be asked where disk {} is ({e}); both the source {} and the destination {} are kept: check with `virsh domblklist {}` and delete the unused one",
            plan.target,
            plan.source.display_name(),
            dest.disk.display_name(),
            plan.domain
        );
    }
    if names_dest(&live) || names_dest(&persistent) {
        return format!(
            "the guest's definitions name the destination {} although volmig did not pivot (someone else did); both it and the source {} are kept",
            dest.disk.display_name(),
            plan.source.display_name()
        );
    }
    let deleted = delete_destination(ctx, &dest.volume).await;
    format!(
        "the guest stays on its source {}{deleted}",
        plan.source.display_name()
    )
}

/// After the pivot was issued nothing is deleted: say where each definition
/// points. A copy that still mirrors (the pivot never took effect, e.g. its
/// call failed) is aborted so no job is left writing to the destination.
async fn where_after_pivot(ctx: &mut Ctx<'_>, plan: &Plan, dest: &Destination) -> String {
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let still_mirroring = ctx
        .hv_retry("looking for the block copy", move |hv| {
            hv.block_job(&domain, &target)
        })
        .await
        .is_ok_and(|j| j.is_some());
    if still_mirroring && !on_destination(ctx, plan, &dest.disk).await.unwrap_or(true) {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let aborted = ctx
            .hv_retry("aborting the block copy", move |hv| {
                hv.block_job_abort(&domain, &target, false)
            })
            .await;
        if let Err(e) = aborted {
            tracing::warn!(error = %e, "aborting the block job failed");
        }
    }
    let describe = |s: &Result<Option<DiskSource>, Error>| match s {
        Ok(Some(s)) if same_source(s, &dest.disk) => {
            format!("the destination {}", s.display_name())
        }
        Ok(Some(s)) if same_source(s, &plan.source) => format!("the source {}", s.display_name()),
        Ok(Some(s)) => s.display_name(),
        Ok(None) => "no such disk".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let live = current_source(ctx, plan, Definition::Live).await;
    let persistent = current_source(ctx, plan, Definition::Persistent).await;
    if matches!(&live, Ok(Some(s)) if same_source(s, &dest.disk))
        && matches!(&persistent, Ok(None) | Ok(Some(_)) if persistent.as_ref().is_ok_and(|p| p.as_ref().is_none_or(|s| same_source(s, &dest.disk))))
    {
        return format!(
            "the guest runs on the destination {} (pivot done); the source {} is kept",
            dest.disk.display_name(),
            plan.source.display_name()
        );
    }
    format!(
        "the pivot was issued; the running guest uses {}, its persistent definition names {}; both the source {} and the destination {} are kept",
        describe(&live),
        describe(&persistent),
        plan.source.display_name(),
        dest.disk.display_name()
    )
}

/// The guest stopped under a running copy: its disk stays on the source.
fn stopped_during_copy(domain: &str, why: &dyn std::fmt::Display) -> Error {
    Error::Precondition(format!(
        "domain '{domain}' stopped during the copy ({why}); its disk stays on the source"
    ))
}
