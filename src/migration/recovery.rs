//! Start-up reconciliation of migrations the node did not finish (it was killed,
//! or libvirtd restarted under it).
//!
//! The journal says what the node may have done; libvirt says what is true now.
//! A running copy is watched again, a finished pivot is verified and cleaned up,
//! and anything else is rolled back so the guest stays on its source.

use std::sync::Arc;

use crate::hypervisor::Definition;
use crate::migration::engine::{Inner, Job};
use crate::migration::error::Error;
use crate::migration::job::{self, Start};
use crate::migration::model::Phase;

/// Decides how an unfinished migration continues, then continues it.
pub(crate) async fn reconcile(inner: Arc<Inner>, job: Arc<Job>) {
    let record = job.record();
    let Some(plan) = record.plan.clone() else {
        job::fail(&inner, &job, interrupted("before validation finished")).await;
        return;
    };
    let phase = record.latest.phase;
    let start = match phase {
        Phase::Accepted | Phase::Validating | Phase::PreparingDestination => None,
        Phase::Copying | Phase::Synchronized | Phase::Pivoting => {
            match job::on_destination(&inner, &plan).await {
                Ok(true) => Some(Start::Verify),
                Ok(false) => {
                    let (domain, target) = (plan.domain.clone(), plan.target.clone());
                    let dest = plan.destination.clone();
                    let mirroring = inner
                        .hv(move |hv| {
                            if hv.block_job(&domain, &target)?.is_none() {
                                return Ok(false);
                            }
                            let disk = hv
                                .disks(&domain, Definition::Live)?
                                .into_iter()
                                .find(|d| d.target == target);
                            Ok(disk
                                .and_then(|d| d.mirror)
                                .and_then(|m| m.source)
                                .zip(dest)
                                .is_some_and(|(m, d)| m.display_name() == d.display_name()))
                        })
                        .await
                        .unwrap_or(false);
                    match (mirroring, phase) {
                        (true, Phase::Pivoting) => Some(Start::Pivot),
                        (true, _) => Some(Start::WatchCopy),
                        (false, _) => None,
                    }
                }
                Err(e) => {
                    job::fail(&inner, &job, e).await;
                    return;
                }
            }
        }
        Phase::Verifying | Phase::CleaningUp => Some(Start::Verify),
        Phase::Completed | Phase::Failed | Phase::Cancelled => return,
    };
    match start {
        Some(start) => {
            tracing::info!(migration_id = %job.id, ?start, "resuming migration after restart");
            job::run(inner, job, start).await
        }
        None => {
            job::fail(
                &inner,
                &job,
                interrupted(&format!("while {}", phase.name())),
            )
            .await
        }
    }
}

fn interrupted(when: &str) -> Error {
    Error::Interrupted(format!(
        "the node restarted {when} and the block copy was no longer running; the migration was rolled back, retry it"
    ))
}
