//! `--json` of the drain commands: one object per drain, plan or event, with
//! the proto's field names and enum values as their names.

use serde_json::{json, Value};

use crate::proto::{Drain, DrainItem, DrainPlan, LeftBehind, PoolProjection, VolumeMove};

fn volume_move(m: &VolumeMove) -> Value {
    json!({
        "disk": m.disk,
        "old_pool": m.old_pool,
        "old_source": m.old_source,
        "old_volume": m.old_volume,
        "new_pool": m.new_pool,
        "new_source": m.new_source,
        "new_volume": m.new_volume,
        "source_deleted": m.source_deleted,
    })
}

fn item(i: &DrainItem) -> Value {
    json!({
        "index": i.index,
        "node_id": i.node_id,
        "domain": i.domain,
        "state": i.state().as_str_name(),
        "disks": i.disks.iter().map(|d| json!({
            "disk": d.disk,
            "volume": d.volume,
            "source": d.source,
            "format": d.format().as_str_name(),
            "capacity_bytes": d.capacity_bytes,
            "allocation_bytes": d.allocation_bytes,
            "destination_pool": d.destination_pool,
            "destination_storage_id": d.destination_storage_id,
            "destination_free_after_bytes": d.destination_free_after_bytes,
        })).collect::<Vec<_>>(),
        "attempts": i.attempts,
        "migration_id": i.migration_id,
        "request_id": i.request_id,
        "last_error": i.last_error,
        "moves": i.moves.iter().map(volume_move).collect::<Vec<_>>(),
        "bytes_moved": i.bytes_moved,
        "duration_ms": i.duration_ms,
        "bytes_done": i.bytes_done,
        "bytes_total": i.bytes_total,
        "bandwidth_bytes_per_sec": i.bandwidth_bytes_per_sec,
        "skipped_because": i.skipped_because,
    })
}

fn left(l: &LeftBehind) -> Value {
    json!({
        "node_id": l.node_id,
        "domain": l.domain,
        "volumes": l.volumes,
        "reason_code": l.reason_code,
        "reason": l.reason,
    })
}

fn projection(p: &PoolProjection) -> Value {
    json!({
        "pool": p.pool,
        "storage_id": p.storage_id,
        "items": p.items,
        "bytes": p.bytes,
        "used_before": p.used_before,
        "used_after": p.used_after,
    })
}

/// A plan (`drain --dry-run`).
pub fn plan(p: &DrainPlan) -> Value {
    json!({
        "storage_id": p.storage_id,
        "items": p.items.iter().map(item).collect::<Vec<_>>(),
        "left": p.left.iter().map(left).collect::<Vec<_>>(),
        "destinations": p.destinations.iter().map(projection).collect::<Vec<_>>(),
    })
}

/// A drain with its plan, item states and report rows.
pub fn drain(d: &Drain) -> Value {
    let counts = d.counts.unwrap_or_default();
    json!({
        "drain_id": d.drain_id,
        "state": d.state().as_str_name(),
        "pool": d.request.as_ref().map(|r| r.pool.clone()).unwrap_or_default(),
        "actor": d.actor,
        "counts": {
            "pending": counts.pending,
            "running": counts.running,
            "done": counts.done,
            "failed": counts.failed,
            "skipped": counts.skipped,
        },
        "bytes_done": d.bytes_done,
        "bytes_remaining": d.bytes_remaining,
        "created_at_unix_ms": d.created_at_unix_ms,
        "finished_at_unix_ms": d.finished_at_unix_ms,
        "plan": d.plan.as_ref().map(plan),
    })
}
