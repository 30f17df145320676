//! Start-up reconciliation of migrations the node did not finish (it was killed,
//! or libvirtd restarted under it).
//!
//! The journaled stage says what the node may have done; libvirt says what is
//! true now. A running copy is watched again, an issued pivot is finished and
//! verified, and anything else ends in [`super::rollback::fail`], which undoes only what the
//! stage proves volmig did: nothing after the pivot, and never a volume whose
//! creation was not journaled as done.

use super::verify::on_destination;
use super::{Ctx, Resume};
use crate::error::Error;
use crate::hypervisor::Definition;
use crate::journal::Stage;
use crate::model::Phase;

/// Decides where an unfinished migration continues; an error ends it.
pub(crate) async fn decide(ctx: &mut Ctx<'_>, group_uncommitted: bool) -> Result<Resume, Error> {
    let record = ctx.record();
    let plan = record.plan;
    let phase = record.latest.phase;
    tracing::info!(phase = phase.name(), stage = ?record.stage, "reconciling after restart");
    if plan.offline {
        return super::offline::recover(ctx, record.stage).await;
    }
    match record.stage {
        Stage::Planned | Stage::Creating | Stage::Created(_) => {
            Err(interrupted(&format!("while {}", phase.name())))
        }
        Stage::Mirroring(dest) => {
            if on_destination(ctx, &plan, &dest.disk).await? {
                // volmig journals the pivot before issuing it, so this is a pivot
                // made by someone else: the destination now holds the newest data.
                let pivoted = dest.clone();
                ctx.control.committed();
                ctx.publish(|r| r.stage = Stage::Pivoted(pivoted)).await?;
                return Ok(Resume::Verify(dest));
            }
            if group_uncommitted {
                return Err(Error::Interrupted(format!(
                    "the node restarted while {} before every disk of this multi-disk migration was synchronized; every disk was rolled back so the guest stays entirely on its sources; retry it",
                    phase.name()
                )));
            }
            if mirroring_to(ctx, &plan, &dest).await? {
                return Ok(Resume::Copy(dest));
            }
            Err(interrupted(&format!("while {}", phase.name())))
        }
        Stage::Pivoted(dest) => {
            if phase != Phase::Pivoting || on_destination(ctx, &plan, &dest.disk).await? {
                return Ok(Resume::Verify(dest));
            }
            if mirroring_to(ctx, &plan, &dest).await? {
                return Ok(Resume::Pivot(dest));
            }
            Err(Error::Precondition(
                "the node restarted after issuing the pivot, and the guest neither runs on the destination nor still mirrors to it".to_string(),
            ))
        }
    }
}

/// Whether the block job of the disk still mirrors to `dest`. A guest that is
/// not running has no block job (its QEMU is gone: the host lost power, or
/// someone stopped it), which libvirt answers with an error, not with "none".
pub(crate) async fn mirroring_to(
    ctx: &mut Ctx<'_>,
    plan: &crate::journal::Plan,
    dest: &crate::journal::Destination,
) -> Result<bool, Error> {
    let (domain, target, want) = (plan.domain.clone(), plan.target.clone(), dest.disk.clone());
    ctx.hv_retry("looking for the block copy", move |hv| {
        if !hv.domain(&domain)?.active || hv.block_job(&domain, &target)?.is_none() {
            return Ok(false);
        }
        let disk = hv
            .disks(&domain, Definition::Live)?
            .into_iter()
            .find(|d| d.target == target);
        Ok(disk
            .and_then(|d| d.mirror)
            .and_then(|m| m.source)
            .is_some_and(|m| m.display_name() == want.display_name()))
    })
    .await
}

fn interrupted(when: &str) -> Error {
    Error::Interrupted(format!(
        "the node restarted {when} and the block copy was no longer running; the migration was rolled back, retry it"
    ))
}
