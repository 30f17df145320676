//! VERIFYING: where the definitions point after the pivot, the checkpoints
//! and snapshots moved with the disk.

use super::ctx::Ctx;
use crate::error::Error;
use crate::hypervisor::{BackingLayer, Definition, DiskSource, DiskSpec};
use crate::journal::{Destination, Plan};
use crate::model::{Phase, VerifyLevel};

pub(super) fn same_source(a: &DiskSource, b: &DiskSource) -> bool {
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

pub(super) fn disk_of(disks: Vec<DiskSpec>, target: &str) -> Option<DiskSpec> {
    disks.into_iter().find(|d| d.target == target)
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
pub(super) async fn verify(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<bool, Error> {
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

/// SHALLOW, after the pivot: redefines the domain's snapshots with the
/// destination's paths, so listing, reverting and deleting them act on the
/// moved chain. Idempotent: a restarted node redoes it harmlessly.
pub(super) async fn redefine_snapshots(ctx: &mut Ctx<'_>, dest: &Destination) -> Result<(), Error> {
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
