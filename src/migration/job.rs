//! One disk migration, phase by phase, in its own task.
//!
//! The task owns the disk's lease for its whole life. Each phase is journaled
//! before its action; a failure before the guest is switched rolls everything
//! back (job aborted without pivot, destination deleted), and the terminal event
//! always says where the disk is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::hypervisor::{
    CopyOptions, Definition, DiskKind, DiskSource, DiskSpec, HvError, ImageFormat, NewVolume,
};
use crate::migration::engine::{Inner, Job, StopReason};
use crate::migration::error::Error;
use crate::migration::journal::Plan;
use crate::migration::model::{Failure, MigrationResult, Phase, Progress, VerifyLevel};
use crate::migration::plan;

/// Poll interval once the copy is about to converge.
const FAST_POLL: Duration = Duration::from_millis(20);

/// Where a (possibly resumed) run begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// From VALIDATING: a new migration.
    Fresh,
    /// The block job already runs: watch it until it is ready.
    WatchCopy,
    /// The job is ready: pivot.
    Pivot,
    /// The guest is on the destination: verify and clean up.
    Verify,
}

/// Runs the migration to its terminal event.
pub(crate) async fn run(inner: Arc<Inner>, job: Arc<Job>, start: Start) {
    let span = tracing::info_span!("migration", migration_id = %job.id);
    async move {
        match steps(&inner, &job, start).await {
            Ok(result) => {
                let message = format!(
                    "completed: {} now on {}",
                    job.latest().disk,
                    result.destination.display_name()
                );
                let published = inner
                    .publish(&job, |r| {
                        r.latest.phase = Phase::Completed;
                        r.latest.message = message;
                        r.latest.result = Some(result);
                    })
                    .await;
                if let Err(e) = published {
                    tracing::error!(error = %e, "cannot journal completion");
                    inner.announce(&job);
                }
                tracing::info!("migration completed");
            }
            Err(err) => fail(&inner, &job, err).await,
        }
    }
    .instrument(span)
    .await
}

fn stop_error(job: &Job) -> Error {
    match job.lock().stop {
        Some(StopReason::TimedOut(s)) => Error::TimedOut(s),
        _ => Error::Cancelled,
    }
}

fn check_stop(job: &Job) -> Result<(), Error> {
    if job.cancel.is_cancelled() {
        Err(stop_error(job))
    } else {
        Ok(())
    }
}

async fn set_phase(inner: &Inner, job: &Job, phase: Phase, message: String) -> Result<(), Error> {
    tracing::info!(phase = phase.name(), "{message}");
    inner
        .publish(job, |r| {
            r.latest.phase = phase;
            r.latest.message = message;
        })
        .await
}

fn plan_of(job: &Job) -> Result<Plan, Error> {
    job.lock()
        .record
        .plan
        .clone()
        .ok_or_else(|| Error::Journal("migration record has no plan".to_string()))
}

/// Retries a hypervisor call while libvirtd is unreachable (restarting), up to the grace period.
async fn hv_retry<T: Send + 'static>(
    inner: &Inner,
    what: &str,
    f: impl Fn(&dyn crate::hypervisor::Hypervisor) -> Result<T, HvError> + Send + Sync + Clone + 'static,
) -> Result<T, Error> {
    let deadline = Instant::now() + inner.config.libvirt_grace;
    loop {
        match inner.hv(f.clone()).await {
            Err(HvError::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(HvError::Unreachable { uri, message }) => {
                return Err(Error::Unavailable(format!(
                    "{what}: libvirt at {uri} unreachable for {} s: {message}",
                    inner.config.libvirt_grace.as_secs()
                )))
            }
            other => return other.map_err(Error::hv(what)),
        }
    }
}

async fn steps(inner: &Inner, job: &Job, start: Start) -> Result<MigrationResult, Error> {
    let mut persistent_repaired = false;
    if start == Start::Fresh {
        set_phase(
            inner,
            job,
            Phase::Validating,
            "checking the guest, the disk and the destination pool".to_string(),
        )
        .await?;
        check_stop(job)?;
        let request = job.lock().record.request.clone();
        let fresh = inner
            .hv(move |hv| Ok(plan::plan(hv, &request)))
            .await
            .map_err(Error::hv("validating"))??;
        inner.publish(job, |r| r.plan = Some(fresh)).await?;
        check_stop(job)?;
        prepare(inner, job).await?;
        check_stop(job)?;
        start_copy(inner, job).await?;
    }
    if matches!(start, Start::Fresh | Start::WatchCopy) {
        wait_until_ready(inner, job).await?;
        set_phase(
            inner,
            job,
            Phase::Synchronized,
            "source and destination are synchronized".to_string(),
        )
        .await?;
        if !inner.config.synchronized_hold.is_zero() {
            tokio::select! {
                _ = job.cancel.cancelled() => {}
                _ = tokio::time::sleep(inner.config.synchronized_hold) => {}
            }
        }
        check_stop(job)?;
    }
    if matches!(start, Start::Fresh | Start::WatchCopy | Start::Pivot) {
        pivot(inner, job).await?;
    }
    verify(inner, job, &mut persistent_repaired).await?;
    let source_deleted = cleanup(inner, job).await?;
    let plan = plan_of(job)?;
    let destination = plan
        .destination
        .clone()
        .ok_or_else(|| Error::Journal("no destination recorded".to_string()))?;
    Ok(MigrationResult {
        destination,
        destination_pool: plan.dest_pool,
        destination_volume: plan.dest_volume,
        destination_format: plan.dest_format,
        source_pool: plan.source_pool.unwrap_or_default(),
        source_volume: plan.source_volume.unwrap_or_default(),
        previous_source: plan.source.display_name(),
        source_deleted,
        persistent_repaired,
        source_kept_reason: None,
    })
}

async fn prepare(inner: &Inner, job: &Job) -> Result<(), Error> {
    let plan = plan_of(job)?;
    // Journaled before the volume exists, so a crash right after creation still
    // leads recovery to delete it.
    inner
        .publish(job, |r| {
            r.destination_created = true;
            r.latest.phase = Phase::PreparingDestination;
            r.latest.message = format!(
                "creating volume {} ({}, {} bytes) in pool {}",
                plan.dest_volume, plan.dest_format, plan.capacity, plan.dest_pool
            );
        })
        .await?;
    let p = plan.clone();
    let (pool, volume) = inner
        .hv(move |hv| {
            let pool = hv.pool(&p.dest_pool)?;
            let volume = hv.create_volume(
                &p.dest_pool,
                &NewVolume {
                    name: p.dest_volume.clone(),
                    capacity: p.capacity,
                    format: p.dest_format,
                },
            )?;
            Ok((pool, volume))
        })
        .await
        .map_err(|e| match e {
            HvError::NoSpace(m) => Error::Exhausted(format!(
                "pool '{}' cannot hold {} bytes: {m}",
                plan.dest_pool, plan.capacity
            )),
            other => Error::hv(format!(
                "creating the destination volume in pool '{}'",
                plan.dest_pool
            ))(other),
        })?;
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
    let destination = match pool.disk_kind() {
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
    let message = format!(
        "created {} in pool {}",
        destination.display_name(),
        plan.dest_pool
    );
    inner
        .publish(job, |r| {
            if let Some(p) = r.plan.as_mut() {
                p.dest_volume = volume.name.clone();
                p.destination = Some(destination);
            }
            r.latest.message = message;
        })
        .await
}

async fn start_copy(inner: &Inner, job: &Job) -> Result<(), Error> {
    let plan = plan_of(job)?;
    let options = job.lock().record.request.options.clone();
    let dest = plan
        .destination
        .clone()
        .ok_or_else(|| Error::Journal("no destination recorded".to_string()))?;
    set_phase(
        inner,
        job,
        Phase::Copying,
        format!(
            "copying {} to {}",
            plan.source.display_name(),
            dest.display_name()
        ),
    )
    .await?;
    let copy = CopyOptions {
        bandwidth: options.bandwidth,
        synchronous_writes: options.synchronous_writes,
        shallow: false,
    };
    inner
        .hv(move |hv| hv.block_copy(&plan.domain, &plan.target, &dest, plan.dest_format, copy))
        .await
        .map_err(Error::hv("starting the block copy"))
}

fn same_source(a: &DiskSource, b: &DiskSource) -> bool {
    a.kind() == b.kind() && a.display_name() == b.display_name()
}

fn live_disk(disks: Vec<DiskSpec>, target: &str) -> Option<DiskSpec> {
    disks.into_iter().find(|d| d.target == target)
}

async fn wait_until_ready(inner: &Inner, job: &Job) -> Result<(), Error> {
    let plan = plan_of(job)?;
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut last_publish = Instant::now() - inner.config.progress_interval;
    let mut unreachable_since: Option<Instant> = None;
    let mut pause = inner.config.poll_interval;
    loop {
        tokio::select! {
            _ = job.cancel.cancelled() => return Err(stop_error(job)),
            _ = tokio::time::sleep(pause) => {}
        }
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let polled = inner
            .hv(move |hv| {
                let info = hv.block_job(&domain, &target)?;
                let ready = match info {
                    Some(j) if j.end > 0 && j.cur == j.end => {
                        live_disk(hv.disks(&domain, Definition::Live)?, &target)
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
                if since.elapsed() > inner.config.libvirt_grace {
                    return Err(Error::Unavailable(format!(
                        "libvirt at {uri} unreachable for {} s during the copy: {message}",
                        inner.config.libvirt_grace.as_secs()
                    )));
                }
                continue;
            }
            Err(HvError::InvalidState(m)) | Err(HvError::NoDomain(m)) => {
                return Err(Error::Precondition(format!(
                    "domain '{}' stopped during the copy ({m}); its disk stays on the source",
                    plan.domain
                )))
            }
            Err(e) => return Err(Error::hv("polling the block job")(e)),
        };
        let Some(info) = info else {
            return Err(Error::Precondition(format!(
                "the block copy of {} ended before it was synchronized (QEMU or libvirt dropped it; see the domain log in /var/log/libvirt/qemu/{}.log)",
                plan.target, plan.domain
            )));
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
            job.lock().record.latest.progress = progress;
            return Ok(());
        }
        // Near the end, poll fast so the pivot follows convergence closely; the
        // rest of the time, slowly, to keep the node's CPU use negligible.
        let closing = remaining == 0 || (rate > 0 && remaining <= rate / 2);
        pause = if closing {
            FAST_POLL.min(inner.config.poll_interval)
        } else {
            inner.config.poll_interval
        };
        if last_publish.elapsed() >= inner.config.progress_interval {
            last_publish = Instant::now();
            {
                let mut st = job.lock();
                st.record.latest.progress = progress;
                st.record.latest.timestamp_ms = crate::migration::model::now_ms();
                st.record.latest.message = format!(
                    "copying: {} of {} bytes",
                    progress.bytes_done, progress.bytes_total
                );
            }
            inner.announce(job);
        }
    }
}

async fn pivot(inner: &Inner, job: &Job) -> Result<(), Error> {
    let plan = plan_of(job)?;
    set_phase(
        inner,
        job,
        Phase::Pivoting,
        "switching the guest to the destination".to_string(),
    )
    .await?;
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let pivoted = hv_retry(inner, "pivoting", move |hv| {
        hv.block_job_abort(&domain, &target, true)
    })
    .await;
    if let Err(e) = pivoted {
        // Another attempt may have pivoted already (after a restart): only the
        // live definition tells.
        if !on_destination(inner, &plan).await.unwrap_or(false) {
            return Err(e);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        let job_left = hv_retry(inner, "waiting for the pivot", move |hv| {
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
        tokio::time::sleep(inner.config.poll_interval).await;
    }
}

/// Whether the live definition already names the destination.
pub(crate) async fn on_destination(inner: &Inner, plan: &Plan) -> Result<bool, Error> {
    let Some(dest) = plan.destination.clone() else {
        return Ok(false);
    };
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let disk = hv_retry(inner, "reading the live definition", move |hv| {
        Ok(live_disk(hv.disks(&domain, Definition::Live)?, &target))
    })
    .await?;
    Ok(disk
        .and_then(|d| d.source)
        .is_some_and(|s| same_source(&s, &dest)))
}

async fn verify(inner: &Inner, job: &Job, repaired: &mut bool) -> Result<(), Error> {
    let plan = plan_of(job)?;
    set_phase(
        inner,
        job,
        Phase::Verifying,
        "checking the live and persistent definitions".to_string(),
    )
    .await?;
    let dest = plan
        .destination
        .clone()
        .ok_or_else(|| Error::Journal("no destination recorded".to_string()))?;
    if !on_destination(inner, &plan).await? {
        return Err(Error::Precondition(format!(
            "after the pivot the running guest's {} does not use {}; the guest may still be on its source",
            plan.target,
            dest.display_name()
        )));
    }
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let persistent = hv_retry(inner, "reading the persistent definition", move |hv| {
        if !hv.domain(&domain)?.persistent {
            return Ok(None);
        }
        Ok(Some(live_disk(
            hv.disks(&domain, Definition::Persistent)?,
            &target,
        )))
    })
    .await?;
    if let Some(disk) = persistent {
        let ok = disk
            .and_then(|d| d.source)
            .is_some_and(|s| same_source(&s, &dest));
        if !ok {
            tracing::warn!("persistent definition still names the old source; repairing it");
            let (domain, target, d, fmt) = (
                plan.domain.clone(),
                plan.target.clone(),
                dest.clone(),
                plan.dest_format,
            );
            hv_retry(inner, "repairing the persistent definition", move |hv| {
                hv.update_persistent_disk(&domain, &target, &d, fmt)
            })
            .await?;
            let (domain, target) = (plan.domain.clone(), plan.target.clone());
            let again = hv_retry(inner, "re-reading the persistent definition", move |hv| {
                Ok(live_disk(
                    hv.disks(&domain, Definition::Persistent)?,
                    &target,
                ))
            })
            .await?;
            if !again
                .and_then(|d| d.source)
                .is_some_and(|s| same_source(&s, &dest))
            {
                return Err(Error::Precondition(format!(
                    "the persistent definition of '{}' still does not name {} after repair; the guest runs on the destination but would boot from the old disk: fix it with `virsh edit {}`",
                    plan.domain,
                    dest.display_name(),
                    plan.domain
                )));
            }
            *repaired = true;
        }
    }
    let verify_level = job.lock().record.request.options.verify;
    if verify_level == VerifyLevel::Strict {
        let p = plan.clone();
        let (vol_cap, disk_cap) = hv_retry(inner, "checking sizes", move |hv| {
            Ok((
                hv.volume(&p.dest_pool, &p.dest_volume)?.capacity,
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
    Ok(())
}

async fn cleanup(inner: &Inner, job: &Job) -> Result<bool, Error> {
    let plan = plan_of(job)?;
    let delete = job.lock().record.request.options.delete_source;
    let (Some(pool), Some(volume), true) =
        (plan.source_pool.clone(), plan.source_volume.clone(), delete)
    else {
        let message = if delete {
            format!(
                "source {} is in no storage pool; kept",
                plan.source.display_name()
            )
        } else {
            format!("source {} kept", plan.source.display_name())
        };
        set_phase(inner, job, Phase::CleaningUp, message).await?;
        return Ok(false);
    };
    set_phase(
        inner,
        job,
        Phase::CleaningUp,
        format!("deleting source volume {volume} from pool {pool}"),
    )
    .await?;
    let result = hv_retry(inner, "deleting the source volume", move |hv| {
        match hv.delete_volume(&pool, &volume) {
            // Already gone (a resumed cleanup): that is what we wanted.
            Err(HvError::NoVolume(_)) => Ok(()),
            other => other,
        }
    })
    .await;
    result.map(|_| true)
}

/// Ends the migration after an error: rolls back if the guest is still on its
/// source, and publishes the terminal event saying where the disk is.
pub(crate) async fn fail(inner: &Inner, job: &Job, err: Error) {
    let (phase_at, plan, created) = {
        let st = job.lock();
        (
            st.record.latest.phase,
            st.record.plan.clone(),
            st.record.destination_created,
        )
    };
    tracing::warn!(error = %err, phase = phase_at.name(), "migration failed");
    let disk_state = match &plan {
        None => "nothing was changed".to_string(),
        Some(plan) => match on_destination(inner, plan).await {
            Ok(true) => format!(
                "the guest runs on the destination {} (pivot done); the source {} is kept",
                plan.destination
                    .as_ref()
                    .map(DiskSource::display_name)
                    .unwrap_or_default(),
                plan.source.display_name()
            ),
            Ok(false) => rollback(inner, plan, created).await,
            Err(e) => {
                format!("unknown: libvirt could not be asked ({e}); restart the node to reconcile")
            }
        },
    };
    let failure = Failure {
        code: err.code(),
        message: err.to_string(),
        phase: phase_at,
        disk_state: disk_state.clone(),
    };
    let terminal = err.terminal_phase();
    let published = inner
        .publish(job, |r| {
            r.latest.phase = terminal;
            r.latest.message = format!("{}: {}; {}", terminal.name(), err, disk_state);
            r.latest.failure = Some(failure);
        })
        .await;
    if let Err(e) = published {
        tracing::error!(error = %e, "cannot journal the failure");
        inner.announce(job);
    }
}

async fn rollback(inner: &Inner, plan: &Plan, created: bool) -> String {
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let aborted = inner
        .hv(move |hv| match hv.block_job(&domain, &target) {
            Ok(Some(_)) => hv.block_job_abort(&domain, &target, false),
            _ => Ok(()),
        })
        .await;
    if let Err(e) = aborted {
        tracing::warn!(error = %e, "aborting the block job failed");
    }
    // The abort is synchronous in libvirt, but a job may linger briefly in QEMU.
    for _ in 0..40 {
        let (domain, target) = (plan.domain.clone(), plan.target.clone());
        match inner.hv(move |hv| hv.block_job(&domain, &target)).await {
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
            _ => break,
        }
    }
    let mut state = format!(
        "the guest stays on its source {}",
        plan.source.display_name()
    );
    if !created {
        return state;
    }
    let (pool, volume) = (plan.dest_pool.clone(), plan.dest_volume.clone());
    let deleted = inner
        .hv(move |hv| match hv.delete_volume(&pool, &volume) {
            Err(HvError::NoVolume(_)) => Ok(false),
            Ok(()) => Ok(true),
            Err(e) => Err(e),
        })
        .await;
    match deleted {
        Ok(true) => state.push_str(&format!(
            "; destination volume {}/{} deleted",
            plan.dest_pool, plan.dest_volume
        )),
        Ok(false) => {}
        Err(e) => state.push_str(&format!(
            "; destination volume {}/{} could NOT be deleted ({e}): delete it with `virsh vol-delete {} --pool {}`",
            plan.dest_pool, plan.dest_volume, plan.dest_volume, plan.dest_pool
        )),
    }
    state
}
