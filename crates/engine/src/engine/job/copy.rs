//! COPYING: issuing the block copy, watching it until it is synchronized, and
//! what happens when it does not converge or ends on its own.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use volmig_types::retry::RetryPolicy;

use super::ctx::Ctx;
use super::verify::disk_of;
use crate::error::Error;
use crate::hypervisor::{CopyOptions, Definition, HvError};
use crate::journal::{Destination, Plan, Record, Stage};
use crate::model::{now_ms, ConvergenceWarning, NoConvergencePolicy, Phase, Progress};
use crate::{convergence, tuning};

/// The shortest poll interval: the first, and while the copy has converged
/// but QEMU has not yet declared it ready.
const FAST_POLL: Duration = Duration::from_millis(20);

pub(super) async fn start_copy(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
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
    ctx.control.copy_announced();
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

/// Watches the copy until it is synchronized, publishing its progress and
/// applying the request's policy when the copy does not converge.
pub(super) async fn wait_until_ready(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
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
                // broken monitor connection rather than as "not running", and
                // libvirt may still call the domain active until it has handled
                // QEMU's exit: ask again for a moment before calling it a failure.
                for _ in 0..STOPPED_CHECKS {
                    let domain = plan.domain.clone();
                    let stopped = ctx
                        .hv(move |hv| Ok(hv.domain(&domain).map_or(true, |d| !d.active)))
                        .await
                        .unwrap_or(false);
                    if stopped {
                        return Err(stopped_during_copy(&plan.domain, &e));
                    }
                    tokio::time::sleep(STOPPED_CHECK_INTERVAL).await;
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
            ctx.note(|r| r.latest.progress = progress);
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
            ctx.note(|r| {
                r.latest.progress = progress;
                r.latest.timestamp_ms = now_ms();
                r.latest.message = format!(
                    "copying: {} of {} bytes",
                    progress.bytes_done, progress.bytes_total
                );
            });
            ctx.announce();
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
    ctx.control.copy_announced();
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

/// How long an aborted block job may linger: the abort is synchronous in
/// libvirt, but a job may stay listed briefly in QEMU.
const JOB_GONE: RetryPolicy = RetryPolicy::attempts(
    40,
    Duration::from_millis(250),
    1,
    Duration::from_millis(250),
);

/// Waits (up to 10 s) until the disk has no block job; says whether it has none.
pub(super) async fn wait_for_no_job(ctx: &mut Ctx<'_>, plan: &Plan) -> bool {
    let mut listed = 0;
    loop {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        match ctx.hv(move |hv| hv.block_job(&domain, &target)).await {
            Ok(Some(_)) => {
                listed += 1;
                let Some(pause) = JOB_GONE.next_pause(listed, Duration::ZERO) else {
                    return false;
                };
                ctx.attend(tokio::time::sleep(pause)).await;
            }
            _ => return true,
        }
    }
}

/// Space below which a destination pool counts as full when its copy stopped.
const FULL_MARGIN: u64 = 16 << 20;

/// Why a block copy ended on its own before it was synchronized. libvirt does
/// not say through the job calls; a destination pool that is now full is the
/// usual reason (QEMU fails the mirror on ENOSPC, the guest is unaffected).
pub(super) async fn copy_vanished(ctx: &mut Ctx<'_>, plan: &Plan) -> Error {
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

/// How often, and how far apart, a failed poll asks whether the guest stopped.
const STOPPED_CHECKS: u32 = 10;
const STOPPED_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The guest stopped under a running copy: its disk stays on the source.
fn stopped_during_copy(domain: &str, why: &dyn std::fmt::Display) -> Error {
    Error::Precondition(format!(
        "domain '{domain}' stopped during the copy ({why}); its disk stays on the source"
    ))
}
