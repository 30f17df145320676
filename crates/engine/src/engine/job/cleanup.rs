//! CLEANING_UP: deleting the source when asked and nothing else uses it.

use super::ctx::Ctx;
use crate::error::Error;
use crate::hypervisor::Deletion;
use crate::model::Phase;

/// Deletes the source when asked and nothing else uses it. Returns whether it
/// was deleted and, when it was kept although deletion was asked, why.
pub(super) async fn cleanup(ctx: &mut Ctx<'_>) -> Result<(bool, Option<String>), Error> {
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
