//! Ending after an error: undoing what the journaled stage proves volmig did,
//! and saying where the disk is.

use super::copy::wait_for_no_job;
use super::ctx::{record_error, Ctx};
use super::disk_state::DiskState;
use super::verify::{current_source, on_destination, same_source};
use crate::engine::group::Abort;
use crate::error::Error;
use crate::hypervisor::{Definition, Deletion, DiskSource, HvError, VolumeIdentity};
use crate::journal::{Destination, Plan, Stage};
use crate::model::Failure;

/// Ends the migration after an error: undoes what the journaled stage says can
/// be undone, and publishes the terminal event saying where the disk is.
pub(crate) async fn fail(ctx: &mut Ctx<'_>, err: Error) {
    ctx.control.end();
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
    let state = match record.stage.clone() {
        Stage::Planned => DiskState::Untouched,
        Stage::Creating => DiskState::CreationUnknown,
        Stage::Created(volume) => DiskState::OnSource {
            destination: delete_destination(ctx, &volume).await,
        },
        Stage::Mirroring(dest) => roll_back_mirror(ctx, &plan, &dest).await,
        Stage::Pivoted(dest) => where_after_pivot(ctx, &plan, &dest).await,
    };
    // Layers go only while the guest provably never left its source: before
    // any mirror, or after a rollback that deleted the top over them.
    let layers_unused = state.never_left_source();
    let disk_state = format!(
        "{}{}",
        state.describe(&plan),
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
        ctx.announce();
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
async fn roll_back_mirror(ctx: &mut Ctx<'_>, plan: &Plan, dest: &Destination) -> DiskState {
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
    let live = current_source(ctx, plan, Definition::Live).await;
    let persistent = current_source(ctx, plan, Definition::Persistent).await;
    let names_dest = |s: &Result<Option<DiskSource>, Error>| match s {
        Ok(Some(s)) => same_source(s, &dest.disk),
        Ok(None) => false,
        Err(_) => true,
    };
    if let (Err(e), _) | (_, Err(e)) = (&live, &persistent) {
        return DiskState::Unknown {
            destination: dest.disk.display_name(),
            error: e.to_string(),
        };
    }
    if names_dest(&live) || names_dest(&persistent) {
        return DiskState::PivotedByOthers {
            destination: dest.disk.display_name(),
        };
    }
    DiskState::OnSource {
        destination: delete_destination(ctx, &dest.volume).await,
    }
}

/// After the pivot was issued nothing is deleted: say where each definition
/// points. A copy that still mirrors (the pivot never took effect, e.g. its
/// call failed) is aborted so no job is left writing to the destination.
async fn where_after_pivot(ctx: &mut Ctx<'_>, plan: &Plan, dest: &Destination) -> DiskState {
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
        return DiskState::OnDestination {
            destination: dest.disk.display_name(),
        };
    }
    DiskState::PivotIssued {
        destination: dest.disk.display_name(),
        live: describe(&live),
        persistent: describe(&persistent),
    }
}
