//! The offline move of a stopped guest's disk: prepare the destination, copy
//! with `qemu-img convert`, switch the persistent definition, verify, clean up.
//!
//! Phases reuse the live ones: PREPARING_DESTINATION, COPYING (the convert),
//! PIVOTING (the switch of the persistent definition), VERIFYING, CLEANING_UP.
//!
//! The guest may be started by someone else at any time, and libvirt has no
//! "change the definition only while shut off". So the switch is bracketed:
//! the domain must be shut off right before it, and is looked at again right
//! after. A guest found running on its source then (started in between) has
//! its definition switched back and the destination deleted; one running on
//! the destination booted from the complete copy, which is fine. Until the
//! switch is journaled (stage `Pivoted`), the stage stays `Created`, so any
//! failure, cancel or restart deletes the destination (by identity) and
//! leaves the guest on its source.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::verify::{current_source, disk_of, same_source};
use super::Ctx;
use crate::error::Error;
use crate::hypervisor::{Definition, DiskSpec, ImageCopy};
use crate::journal::{Destination, Stage};
use crate::model::{MigrationResult, Phase, Progress};

/// How often a running copy is checked for a cancel, the guest's state and progress.
const POLL: Duration = Duration::from_millis(500);

/// From a validated offline plan to the result.
pub(super) async fn run(ctx: &mut Ctx<'_>) -> Result<MigrationResult, Error> {
    let dest = super::prepare::prepare(ctx, Vec::new()).await?;
    ctx.checkpoint().await?;
    copy(ctx, &dest).await?;
    switch(ctx, &dest).await?;
    finish(ctx, dest).await
}

/// The convert, answering commands, until it ends; abandoned as soon as the
/// guest is found running (it may be writing to the source being read).
async fn copy(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    ctx.set_phase(
        Phase::Copying,
        format!(
            "copying {} offline (qemu-img convert) to {}",
            plan.source.display_name(),
            dest.disk.display_name()
        ),
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut copying = {
        let (hv, stop, done) = (ctx.inner.hv.clone(), stop.clone(), done.clone());
        let (source, volume) = (plan.source.display_name(), dest.volume.clone());
        let (sf, df) = (plan.source_format, plan.dest_format);
        let bandwidth = ctx.record().bandwidth;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let progress = |p: u64| done.store(p, Ordering::Relaxed);
                let copy = ImageCopy {
                    source: &source,
                    source_format: sf,
                    dest: &volume,
                    dest_format: df,
                    bandwidth,
                };
                hv.convert_image(&copy, &progress, &stop)
            })
        })
    };
    let started = std::time::Instant::now();
    loop {
        let ended = ctx.attend(tokio::time::timeout(POLL, &mut copying)).await;
        if let Ok(joined) = ended {
            let copied =
                joined.map_err(|e| Error::Journal(format!("the copy task failed: {e}")))?;
            return copied.map_err(Error::hv("copying the disk offline"));
        }
        let why = match ctx.checkpoint().await {
            Err(e) => Some(e),
            Ok(()) if domain_running(ctx, &plan.domain).await? => {
                Some(Error::StartedDuringOfflineMove(plan.domain.clone()))
            }
            Ok(()) => None,
        };
        if let Some(why) = why {
            stop.store(true, Ordering::Relaxed);
            // The copy must end before its destination is deleted.
            let _ = copying.await;
            return Err(why);
        }
        let part = done.load(Ordering::Relaxed).min(10_000);
        let bytes_done = (u128::from(plan.capacity) * u128::from(part) / 10_000) as u64;
        let secs = started.elapsed().as_secs().max(1);
        let rate = bytes_done / secs;
        ctx.note(|r| {
            r.latest.progress = Progress {
                bytes_done,
                bytes_total: plan.capacity,
                rate,
                eta_seconds: (plan.capacity - bytes_done).checked_div(rate).unwrap_or(0),
            }
        });
        ctx.announce();
    }
}

async fn domain_running(ctx: &mut Ctx<'_>, domain: &str) -> Result<bool, Error> {
    let domain = domain.to_string();
    ctx.hv_retry("reading the domain's state", move |hv| {
        Ok(hv.domain(&domain)?.active)
    })
    .await
}

/// Points the persistent definition at the destination, only while the
/// guest is shut off (see the module docs for the race this closes).
async fn switch(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
    let plan = ctx.plan();
    ctx.checkpoint().await?;
    // The definition as it is now: restored if the guest starts meanwhile.
    let (domain, target) = (plan.domain.clone(), plan.target.clone());
    let before: Option<DiskSpec> = ctx
        .hv_retry("reading the persistent definition", move |hv| {
            Ok(disk_of(hv.disks(&domain, Definition::Persistent)?, &target))
        })
        .await?;
    let Some(before) = before.filter(|d| {
        d.source
            .as_ref()
            .is_some_and(|s| same_source(s, &plan.source))
    }) else {
        return Err(Error::Precondition(format!(
            "the persistent definition of '{}' no longer names {} for {}; changed by someone else during the offline copy",
            plan.domain,
            plan.source.display_name(),
            plan.target
        )));
    };
    if domain_running(ctx, &plan.domain).await? {
        return Err(Error::StartedDuringOfflineMove(plan.domain.clone()));
    }
    // From here a cancel is refused, as after a pivot.
    if !ctx.control.begin_pivot() {
        ctx.stopped()?;
    }
    let pivoted = dest.clone();
    let message = format!(
        "switching the persistent definition of {} to {}",
        plan.target,
        dest.disk.display_name()
    );
    ctx.publish(|r| {
        r.stage = Stage::Pivoted(pivoted);
        r.latest.phase = Phase::Pivoting;
        r.latest.message = message;
    })
    .await?;
    let (domain, target, disk, format) = (
        plan.domain.clone(),
        plan.target.clone(),
        dest.disk.clone(),
        plan.dest_format,
    );
    ctx.hv_retry("switching the persistent definition", move |hv| {
        hv.update_persistent_disk(&domain, &target, &disk, format, &[])
    })
    .await?;
    if !domain_running(ctx, &plan.domain).await? {
        return Ok(());
    }
    // Started around the switch: on which disk did it boot?
    let live = current_source(ctx, &plan, Definition::Live).await?;
    if live.as_ref().is_some_and(|s| same_source(s, &dest.disk)) {
        return Ok(());
    }
    let (domain, target, source) = (
        plan.domain.clone(),
        plan.target.clone(),
        plan.source.clone(),
    );
    let (format, backing) = (plan.source_format, before.backing.clone());
    ctx.hv_retry("switching the persistent definition back", move |hv| {
        hv.update_persistent_disk(&domain, &target, &source, format, &backing)
    })
    .await?;
    // The guest never used the destination: the rollback may delete it.
    let volume = dest.volume.clone();
    ctx.publish(|r| r.stage = Stage::Created(volume)).await?;
    Err(Error::StartedDuringOfflineMove(plan.domain))
}

/// VERIFYING and the rest, once the definition names the destination.
pub(super) async fn finish(ctx: &mut Ctx<'_>, dest: Destination) -> Result<MigrationResult, Error> {
    let plan = ctx.plan();
    ctx.set_phase(
        Phase::Verifying,
        "checking the persistent definition and the copy's size".to_string(),
    )
    .await?;
    let persistent = current_source(ctx, &plan, Definition::Persistent).await?;
    if !persistent
        .as_ref()
        .is_some_and(|s| same_source(s, &dest.disk))
    {
        return Err(Error::Precondition(format!(
            "the persistent definition of '{}' does not name {} for {} after the switch; fix it with `virsh edit {}`",
            plan.domain,
            dest.disk.display_name(),
            plan.target,
            plan.domain
        )));
    }
    // A cheap check that the copy is whole: its header shows the guest the
    // size the source did (a byte comparison would read both disks again).
    let path = dest.volume.path.clone();
    let info = ctx
        .hv_retry("reading the copy's header", move |hv| hv.image_info(&path))
        .await?;
    if info.virtual_size < plan.capacity {
        return Err(Error::Precondition(format!(
            "the copy {} shows {} bytes, the source {}",
            dest.disk.display_name(),
            info.virtual_size,
            plan.capacity
        )));
    }
    super::finish(ctx, dest, false).await
}

/// A restart in the middle of an offline move: before the switch, roll back;
/// after it, finish.
pub(super) async fn recover(ctx: &mut Ctx<'_>, stage: Stage) -> Result<super::Resume, Error> {
    let plan = ctx.plan();
    if let Stage::Pivoted(dest) = stage {
        let persistent = current_source(ctx, &plan, Definition::Persistent).await?;
        if persistent.is_some_and(|s| same_source(&s, &dest.disk)) {
            ctx.control.committed();
            return Ok(super::Resume::Verify(dest));
        }
        // The node died between journaling the switch and making it: the
        // definition names the source, so the guest never used the copy.
        let volume = dest.volume.clone();
        ctx.publish(|r| r.stage = Stage::Created(volume)).await?;
    }
    Err(Error::Interrupted(format!(
        "the node restarted during the offline move of {} of '{}' before its definition was switched; the copy was deleted and the guest stays on its source; retry it",
        plan.target, plan.domain
    )))
}
