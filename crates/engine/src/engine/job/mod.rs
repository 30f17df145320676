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

mod cleanup;
mod commands;
mod control;
mod copy;
mod ctx;
mod disk_state;
mod offline;
mod pivot;
mod prepare;
mod recovery;
mod rollback;
mod verify;

use std::sync::Arc;

use tracing::Instrument;

use crate::engine::{Inner, Job};
use crate::error::Error;
use crate::hypervisor::DiskSource;
use crate::journal::Destination;
use crate::model::{MigrationResult, Phase};
use crate::{chain, plan};

use copy::{start_copy, wait_until_ready};
use ctx::migration_span;
pub(crate) use ctx::Ctx;
use pivot::{begin_pivot, timed_pivot, wait_for_group};
use prepare::prepare_layers;
use rollback::fail;
use verify::redefine_snapshots;

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

/// Runs the migration to its terminal event.
pub(crate) async fn run(inner: Arc<Inner>, job: Arc<Job>, entry: Entry) {
    let record = job.record();
    let span = migration_span(&record);
    if let Entry::Recover { .. } = entry {
        inner.traces.continue_trace(&span, &record.latest.trace_id);
    }
    async move {
        let Some(task) = job.take_task() else {
            tracing::error!("a second task was started for one migration; ignored");
            return;
        };
        let mut ctx = Ctx::new(&inner, &job, task);
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
        ctx.announce();
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
    let offline = fresh.offline;
    ctx.publish(|r| r.plan = fresh).await?;
    ctx.checkpoint().await?;
    if offline {
        return offline::run(ctx).await;
    }
    if let Some(member) = ctx.member.clone() {
        // Waits before anything is created, so a limited group holds at most
        // its limit of destinations being filled.
        ctx.copy_slot = ctx.attend(member.gate.copy_slot()).await;
        ctx.checkpoint().await?;
    }
    let backing = prepare_layers(ctx).await?;
    ctx.checkpoint().await?;
    let dest = prepare::prepare(ctx, backing).await?;
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
        Resume::Verify(dest) if ctx.plan().offline => return offline::finish(ctx, dest).await,
        Resume::Verify(dest) => dest,
    };
    let persistent_repaired = verify::verify(ctx, &dest).await?;
    finish(ctx, dest, persistent_repaired).await
}

/// After VERIFYING: the snapshots' metadata, the source's cleanup and the result.
async fn finish(
    ctx: &mut Ctx<'_>,
    dest: crate::journal::Destination,
    persistent_repaired: bool,
) -> Result<MigrationResult, Error> {
    redefine_snapshots(ctx, &dest).await?;
    // Measured before a source deletion, so both sides can be compared.
    let source_allocated = allocated(ctx, &ctx.plan().source).await;
    let destination_allocated = allocated(ctx, &dest.disk).await;
    let (source_deleted, source_kept_reason) = cleanup::cleanup(ctx).await?;
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
