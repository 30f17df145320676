//! proto ↔ domain for drains: the request in, the plan and the job's view out.

use crate::api::convert::format_to_proto;
use crate::controller::drain::{
    DrainJob, DrainPlan, DrainSpec, DrainView, ItemProgress, ItemState, LeftBehind, OrderPolicy,
    PlannedItem, Projection, ReportRow, SourcePolicy, Unmovable,
};
use crate::proto;

/// The domain's request from the caller's; zero fields take the defaults of
/// [`DrainSpec::of`].
pub fn spec_from_proto(req: &proto::DrainRequest) -> DrainSpec {
    let mut spec = DrainSpec::of(req.pool.clone());
    spec.destination = Some(req.destination_pool.clone()).filter(|p| !p.is_empty());
    spec.required_tags = req.destination_tags.clone();
    if req.max_parallel > 0 {
        spec.max_parallel = req.max_parallel;
    }
    if req.per_node > 0 {
        spec.per_node = req.per_node;
    }
    spec.per_destination = req.per_destination;
    spec.bandwidth = req.bandwidth_budget_bytes_per_sec;
    spec.include_stopped = req.include_stopped;
    spec.source_policy = match proto::SourcePolicy::try_from(req.source_policy) {
        Ok(proto::SourcePolicy::Delete) => SourcePolicy::Delete,
        _ => SourcePolicy::Keep,
    };
    spec.order = match proto::DrainOrder::try_from(req.order) {
        Ok(proto::DrainOrder::SmallestFirst) => OrderPolicy::SmallestFirst,
        _ => OrderPolicy::LargestFirst,
    };
    if req.max_tries > 0 {
        spec.max_tries = req.max_tries;
    }
    spec
}

/// The caller's request as the domain recorded it (defaults filled in).
fn spec_to_proto(spec: &DrainSpec) -> proto::DrainRequest {
    proto::DrainRequest {
        pool: spec.pool.clone(),
        destination_pool: spec.destination.clone().unwrap_or_default(),
        destination_tags: spec.required_tags.clone(),
        max_parallel: spec.max_parallel,
        per_node: spec.per_node,
        per_destination: spec.per_destination,
        bandwidth_budget_bytes_per_sec: spec.bandwidth,
        include_stopped: spec.include_stopped,
        source_policy: match spec.source_policy {
            SourcePolicy::Keep => proto::SourcePolicy::Keep,
            SourcePolicy::Delete => proto::SourcePolicy::Delete,
        } as i32,
        order: match spec.order {
            OrderPolicy::LargestFirst => proto::DrainOrder::LargestFirst,
            OrderPolicy::SmallestFirst => proto::DrainOrder::SmallestFirst,
        } as i32,
        max_tries: spec.max_tries,
    }
}

fn item_to_proto(index: usize, item: &PlannedItem) -> proto::DrainItem {
    proto::DrainItem {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        node_id: item.node_id.clone(),
        domain: item.domain.clone(),
        disks: item
            .disks
            .iter()
            .map(|d| proto::DrainDisk {
                disk: d.target.clone(),
                volume: d.volume.clone(),
                source: d.source.clone(),
                format: d
                    .format
                    .map(format_to_proto)
                    .unwrap_or(proto::VolumeFormat::Unspecified) as i32,
                capacity_bytes: d.capacity,
                allocation_bytes: d.allocation,
                destination_pool: d.dest_pool.clone(),
                destination_storage_id: d.dest_storage_id.clone(),
                destination_free_after_bytes: d.free_after,
            })
            .collect(),
        state: proto::DrainItemState::Pending as i32,
        ..Default::default()
    }
}

/// The stable word of a reason, for programs.
fn reason_code(reason: &Unmovable) -> &'static str {
    match reason {
        Unmovable::NoPoolFits { .. } => "no_pool_fits",
        Unmovable::Stopped => "stopped",
        Unmovable::OfflineNotSupported => "offline_not_supported",
        Unmovable::DefinedOnSeveralNodes { .. } => "defined_on_several_nodes",
        Unmovable::BackingOnly => "backing_only",
        Unmovable::NoUser => "no_user",
        Unmovable::DiskNotMovable { .. } => "disk_not_movable",
        Unmovable::Busy { .. } => "busy",
        Unmovable::Changed => "changed",
        Unmovable::NodeUnreachable { .. } => "node_unreachable",
    }
}

fn left_to_proto(left: &LeftBehind) -> proto::LeftBehind {
    proto::LeftBehind {
        node_id: left.node_id.clone(),
        domain: left.domain.clone(),
        volumes: left.volumes.clone(),
        reason_code: reason_code(&left.reason).to_string(),
        reason: left.reason.to_string(),
    }
}

fn projection_to_proto(p: &Projection) -> proto::PoolProjection {
    proto::PoolProjection {
        pool: p.name.clone(),
        storage_id: p.storage_id.clone(),
        items: p.items,
        bytes: p.bytes,
        used_before: p.used_before,
        used_after: p.used_after,
    }
}

/// A plan, every item pending.
pub fn plan_to_proto(plan: &DrainPlan) -> proto::DrainPlan {
    proto::DrainPlan {
        storage_id: plan.storage_id.clone(),
        items: plan
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| item_to_proto(i, item))
            .collect(),
        left: plan.left.iter().map(left_to_proto).collect(),
        destinations: plan.projections.iter().map(projection_to_proto).collect(),
    }
}

fn move_to_proto(row: &ReportRow) -> proto::VolumeMove {
    proto::VolumeMove {
        disk: row.disk.clone(),
        old_pool: row.old_pool.clone(),
        old_source: row.old_path.clone(),
        old_volume: row.old_volume.clone(),
        new_pool: row.new_pool.clone(),
        new_source: row.new_path.clone(),
        new_volume: row.new_volume.clone(),
        source_deleted: row.source_deleted,
    }
}

/// Fills `item` with what `state` (and, while it runs, `progress`) says.
fn apply_state(item: &mut proto::DrainItem, state: &ItemState, progress: Option<&ItemProgress>) {
    use proto::DrainItemState as S;
    match state {
        ItemState::Pending { tries, last_error } => {
            item.state = S::Pending as i32;
            item.attempts = *tries;
            item.last_error = last_error.clone().unwrap_or_default();
        }
        ItemState::Running {
            request_id,
            migration_id,
            attempt,
            ..
        } => {
            item.state = S::Running as i32;
            item.attempts = *attempt;
            item.request_id = request_id.clone();
            item.migration_id = migration_id.clone().unwrap_or_default();
            if let Some(p) = progress {
                item.bytes_done = p.bytes_done;
                item.bytes_total = p.bytes_total;
                item.bandwidth_bytes_per_sec = p.bandwidth;
            }
        }
        ItemState::Done {
            rows,
            bytes,
            duration_ms,
            migration_id,
        } => {
            item.state = S::Done as i32;
            item.migration_id = migration_id.clone();
            item.moves = rows.iter().map(move_to_proto).collect();
            item.bytes_moved = *bytes;
            item.duration_ms = *duration_ms;
        }
        ItemState::Failed { tries, last_error } => {
            item.state = S::Failed as i32;
            item.attempts = *tries;
            item.last_error = last_error.clone();
        }
        ItemState::Skipped { reason } => {
            item.state = S::Skipped as i32;
            item.skipped_because = reason.clone();
        }
    }
}

fn state_of(job: &DrainJob) -> proto::DrainState {
    let failed = job
        .items
        .iter()
        .any(|s| matches!(s, ItemState::Failed { .. }));
    match (job.is_finished(), job.cancel_requested) {
        (false, false) => proto::DrainState::Running,
        (false, true) => proto::DrainState::Cancelling,
        (true, true) => proto::DrainState::Cancelled,
        (true, false) if failed => proto::DrainState::Failed,
        (true, false) => proto::DrainState::Succeeded,
    }
}

/// A drain as the API shows it.
pub fn drain_to_proto(view: &DrainView) -> proto::Drain {
    let job = &view.job;
    let mut plan = plan_to_proto(&job.plan);
    for (i, (item, state)) in plan.items.iter_mut().zip(&job.items).enumerate() {
        let progress = view.running.iter().find(|p| p.index == i);
        apply_state(item, state, progress);
    }
    proto::Drain {
        drain_id: job.id.clone(),
        request: Some(spec_to_proto(&job.spec)),
        state: state_of(job) as i32,
        plan: Some(plan),
        counts: Some(proto::DrainCounts {
            pending: view.counts.pending,
            running: view.counts.running,
            done: view.counts.done,
            failed: view.counts.failed,
            skipped: view.counts.skipped,
        }),
        bytes_done: view.bytes_done,
        bytes_remaining: view.bytes_remaining,
        actor: job.actor.clone().unwrap_or_default(),
        created_at_unix_ms: i64::try_from(job.created_ms).unwrap_or(i64::MAX),
        finished_at_unix_ms: job
            .finished_ms
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}

/// Whether `drain` ended (its stream ends with it).
pub fn ended(drain: &proto::Drain) -> bool {
    drain.finished_at_unix_ms != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_take_the_domain_defaults_and_set_ones_are_kept() {
        let spec = spec_from_proto(&proto::DrainRequest {
            pool: "old".into(),
            ..Default::default()
        });
        assert_eq!(spec, DrainSpec::of("old"));
        let spec = spec_from_proto(&proto::DrainRequest {
            pool: "old".into(),
            destination_pool: "new".into(),
            max_parallel: 4,
            per_node: 2,
            bandwidth_budget_bytes_per_sec: 64 << 20,
            source_policy: proto::SourcePolicy::Delete as i32,
            order: proto::DrainOrder::SmallestFirst as i32,
            max_tries: 5,
            ..Default::default()
        });
        assert_eq!(spec.destination.as_deref(), Some("new"));
        assert_eq!((spec.max_parallel, spec.per_node), (4, 2));
        assert_eq!(spec.bandwidth, 64 << 20);
        assert_eq!(spec.source_policy, SourcePolicy::Delete);
        assert_eq!(spec.order, OrderPolicy::SmallestFirst);
        assert_eq!(spec.max_tries, 5);
        assert_eq!(spec_from_proto(&spec_to_proto(&spec)), spec);
    }

    #[test]
    fn a_cancelled_drain_with_failures_reads_cancelled_and_a_finished_one_with_failures_failed() {
        let job = |finished: bool, cancel: bool| DrainJob {
            id: "d-1".into(),
            actor: None,
            spec: DrainSpec::of("old"),
            plan: DrainPlan {
                storage_id: "s".into(),
                items: Vec::new(),
                left: Vec::new(),
                projections: Vec::new(),
            },
            items: vec![ItemState::Failed {
                tries: 3,
                last_error: "e".into(),
            }],
            cancel_requested: cancel,
            created_ms: 1,
            finished_ms: finished.then_some(2),
        };
        assert_eq!(state_of(&job(false, false)), proto::DrainState::Running);
        assert_eq!(state_of(&job(false, true)), proto::DrainState::Cancelling);
        assert_eq!(state_of(&job(true, true)), proto::DrainState::Cancelled);
        assert_eq!(state_of(&job(true, false)), proto::DrainState::Failed);
    }
}
