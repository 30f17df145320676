//! SYNCHRONIZED to PIVOTING: waiting for the group, committing to the pivot, pivoting.

use std::time::Duration;

use tokio::time::Instant;

use super::copy::copy_vanished;
use super::ctx::Ctx;
use super::recovery;
use super::verify::on_destination;
use crate::engine::group::{Abort, Member};
use crate::error::Error;
use crate::journal::{Destination, Stage};
use crate::model::{now_ms, Phase};

/// Waits, synchronized, until every disk of the group is: then the pivots go
/// ahead and nothing stops this job before its own pivot any more. Until then a
/// cancel, a timeout or this copy ending on its own aborts the whole group.
pub(super) async fn wait_for_group(
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
                ctx.control.committed();
                return Ok(());
            }
            Some(Err(why)) => {
                ctx.group_stopped(why);
                return ctx.stopped();
            }
            None => {}
        }
        if ctx.control.pivot_begun() {
            continue;
        }
        if !recovery::mirroring_to(ctx, &plan, dest).await? {
            return Err(copy_vanished(ctx, &plan).await);
        }
    }
}

/// Pivots and keeps when the pivot was issued and when it ended.
pub(super) async fn timed_pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let started = now_ms();
    let pivoted = pivot(ctx, dest).await;
    ctx.note(|r| r.pivot = Some((started, now_ms())));
    if let Some(member) = &ctx.member {
        member.gate.done(member.index);
    }
    pivoted
}

/// The one place a job commits to the pivot: it answers every queued command
/// first (so nothing stops it once that returns), and from the moment its
/// control state is Pivoting (with no await in between) every cancel is
/// refused. The stage is journaled before the pivot is issued.
pub(super) async fn begin_pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    ctx.checkpoint().await?;
    ctx.control.begin_pivot();
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

pub(super) async fn pivot(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
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
