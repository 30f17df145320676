//! The `--json` output: one object per line, built from the proto messages.
//!
//! The shape is a contract with scripts, so it is spelled out here rather than
//! derived: keys are the proto field names, enum values their proto names
//! (`"PHASE_COPYING"`), sizes and times plain numbers (bytes, Unix ms), and an
//! absent sub-message is `null` so every key is always present.

use serde_json::{json, Value};

use crate::proto::{
    ClusterPool, ConvergenceWarning, Disk, DiskStatus, ListDisksResponse, ListPoolVolumesResponse,
    MigrateVolumeRequest, MigrationError, MigrationEvent, MigrationOptions, MigrationProgress,
    MigrationRecord, MigrationResult, NodeInfo, NodeStatus, PlacementCandidate,
    PlanMigrationResponse, Pool, PoolMaintenance, PoolVolume, SetPoolMaintenanceResponse,
};

/// One migration event, as printed by `migrate --json` and `watch --json`.
pub fn event(ev: &MigrationEvent) -> Value {
    json!({
        "migration_id": ev.migration_id,
        "node_id": ev.node_id,
        "domain": ev.domain,
        "disk": ev.disk,
        "phase": ev.phase().as_str_name(),
        "progress": ev.progress.as_ref().map(progress),
        "timestamp_unix_ms": ev.timestamp_unix_ms,
        "started_at_unix_ms": ev.started_at_unix_ms,
        "message": ev.message,
        "result": ev.result.as_ref().map(result),
        "error": ev.error.as_ref().map(error),
        "disks": ev.disks.iter().map(disk_status).collect::<Vec<_>>(),
        "skipped": ev.skipped.iter().map(|s| json!({"disk": s.disk, "reason": s.reason})).collect::<Vec<_>>(),
        "pivot_window_ms": ev.pivot_window_ms,
        "convergence": ev.convergence.as_ref().map(convergence),
        "trace_id": ev.trace_id,
    })
}

fn disk_status(d: &DiskStatus) -> Value {
    json!({
        "disk": d.disk,
        "migration_id": d.migration_id,
        "phase": d.phase().as_str_name(),
        "progress": d.progress.as_ref().map(progress),
        "message": d.message,
        "result": d.result.as_ref().map(result),
        "error": d.error.as_ref().map(error),
        "pivot_started_unix_ms": d.pivot_started_unix_ms,
        "pivot_ended_unix_ms": d.pivot_ended_unix_ms,
        "convergence": d.convergence.as_ref().map(convergence),
    })
}

fn convergence(c: &ConvergenceWarning) -> Value {
    json!({
        "dirty_rate_bytes_per_sec": c.dirty_rate_bytes_per_sec,
        "copy_rate_bytes_per_sec": c.copy_rate_bytes_per_sec,
        "remaining_bytes": c.remaining_bytes,
        "remedy": c.remedy,
    })
}

fn progress(p: &MigrationProgress) -> Value {
    json!({
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "rate_bytes_per_sec": p.rate_bytes_per_sec,
        "eta_seconds": p.eta_seconds,
    })
}

fn result(r: &MigrationResult) -> Value {
    json!({
        "destination_source": r.destination_source,
        "destination_pool": r.destination_pool,
        "destination_volume": r.destination_volume,
        "destination_format": r.destination_format().as_str_name(),
        "source_pool": r.source_pool,
        "source_volume": r.source_volume,
        "previous_source": r.previous_source,
        "source_deleted": r.source_deleted,
        "persistent_definition_repaired": r.persistent_definition_repaired,
        "source_kept_reason": r.source_kept_reason,
        "source_allocated_bytes": r.source_allocated_bytes,
        "destination_allocated_bytes": r.destination_allocated_bytes,
    })
}

fn error(e: &MigrationError) -> Value {
    json!({
        "code": e.code,
        "code_name": crate::api::client::code_name(tonic::Code::from_i32(e.code)),
        "message": e.message,
        "phase": e.phase().as_str_name(),
        "disk_state": e.disk_state,
    })
}

fn request(r: &MigrateVolumeRequest) -> Value {
    json!({
        "request_id": r.request_id,
        "domain": r.domain,
        "disk": r.disk,
        "disks": r.disks.iter().map(|d| json!({
            "disk": d.disk,
            "destination_pool": d.destination_pool,
            "destination_volume": d.destination_volume,
            "destination_format": d.destination_format().as_str_name(),
        })).collect::<Vec<_>>(),
        "all_disks": r.all_disks,
        "max_parallel_copies": r.max_parallel_copies,
        "same_pool": r.same_pool,
        "destination_pool": r.destination_pool,
        "destination_volume": r.destination_volume,
        "destination_format": r.destination_format().as_str_name(),
        "options": r.options.as_ref().map(options),
        "required_tags": r.required_tags,
    })
}

fn options(o: &MigrationOptions) -> Value {
    json!({
        "bandwidth_bytes_per_sec": o.bandwidth_bytes_per_sec,
        "copy_mode": o.copy_mode().as_str_name(),
        "chain_policy": o.chain_policy().as_str_name(),
        "source_policy": o.source_policy().as_str_name(),
        "timeout_seconds": o.timeout_seconds,
        "verify": o.verify().as_str_name(),
        "on_no_convergence": o.on_no_convergence().as_str_name(),
        "convergence_window_seconds": o.convergence_window_seconds,
        "offline_if_stopped": o.offline_if_stopped,
    })
}

/// One migration record (`status --json`, and each element of `list --json`).
pub fn record(r: &MigrationRecord) -> Value {
    json!({
        "migration_id": r.migration_id,
        "node_id": r.node_id,
        "request": r.request.as_ref().map(request),
        "latest": r.latest.as_ref().map(event),
        "source_pool": r.source_pool,
        "previous_source": r.previous_source,
    })
}

/// A list of migration records.
pub fn records(rs: &[MigrationRecord]) -> Value {
    json!({ "migrations": rs.iter().map(record).collect::<Vec<_>>() })
}

/// One node's storage pool.
fn pool(p: &Pool) -> Value {
    json!({
        "name": p.name,
        "uuid": p.uuid,
        "type": p.r#type,
        "state": p.state().as_str_name(),
        "capacity_bytes": p.capacity_bytes,
        "allocation_bytes": p.allocation_bytes,
        "available_bytes": p.available_bytes,
        "disk_type": p.disk_type().as_str_name(),
        "target_path": p.target_path,
        "storage_id": p.storage_id,
        "shared": p.shared,
    })
}

/// A node's pools (`pools --json` against a node).
pub fn pools(ps: &[Pool]) -> Value {
    json!({ "pools": ps.iter().map(pool).collect::<Vec<_>>() })
}

/// The cluster's pools (`pools --json` against the controller).
pub fn cluster_pools(ps: &[ClusterPool]) -> Value {
    let one = |c: &ClusterPool| {
        json!({
            "storage_id": c.storage_id,
            "pool": c.pool.as_ref().map(pool),
            "node_ids": c.node_ids,
            "in_flight_migrations": c.in_flight_migrations,
            "tags": c.tags,
            "used_threshold": c.used_threshold,
            "maintenance": c.maintenance.as_ref().map(maintenance),
        })
    };
    json!({ "pools": ps.iter().map(one).collect::<Vec<_>>() })
}

fn maintenance(m: &PoolMaintenance) -> Value {
    json!({
        "on": m.on,
        "actor": m.actor,
        "since_unix_ms": m.since_unix_ms,
        "reason": m.reason,
    })
}

/// What `pool maintenance --json` prints: the pool and its flag as now set.
pub fn pool_maintenance_set(r: &SetPoolMaintenanceResponse) -> Value {
    json!({
        "storage_id": r.storage_id,
        "pool": r.pool,
        "maintenance": r.maintenance.as_ref().map(maintenance),
    })
}

fn disk(d: &Disk) -> Value {
    json!({
        "target": d.target,
        "type": d.r#type().as_str_name(),
        "device": d.device,
        "format": d.format().as_str_name(),
        "source": d.source,
        "pool": d.pool,
        "volume": d.volume,
        "capacity_bytes": d.capacity_bytes,
        "allocation_bytes": d.allocation_bytes,
        "backing_chain_depth": d.backing_chain_depth,
        "read_only": d.read_only,
        "shareable": d.shareable,
        "migration_id": d.migration_id,
    })
}

/// A domain's disks (`disks --json`).
pub fn disks(r: &ListDisksResponse) -> Value {
    json!({
        "domain_name": r.domain_name,
        "domain_uuid": r.domain_uuid,
        "running": r.running,
        "disks": r.disks.iter().map(disk).collect::<Vec<_>>(),
    })
}

fn pool_volume(v: &PoolVolume) -> Value {
    let users: Vec<Value> = v
        .users
        .iter()
        .map(|u| {
            json!({
                "domain": u.domain,
                "running": u.running,
                "disk": u.disk,
                "backing": u.backing,
            })
        })
        .collect();
    json!({
        "name": v.name,
        "source": v.source,
        "format": v.format().as_str_name(),
        "capacity_bytes": v.capacity_bytes,
        "allocation_bytes": v.allocation_bytes,
        "users": users,
    })
}

/// A pool's volumes and their users (`volumes --json`).
pub fn pool_volumes(r: &ListPoolVolumesResponse) -> Value {
    json!({ "volumes": r.volumes.iter().map(pool_volume).collect::<Vec<_>>() })
}

/// What a node says about itself (`info --json`).
pub fn node_info(i: &NodeInfo) -> Value {
    json!({
        "node_id": i.node_id,
        "hostname": i.hostname,
        "libvirt_version": i.libvirt_version,
        "hypervisor_version": i.hypervisor_version,
        "volmig_version": i.volmig_version,
        "libvirt_uri": i.libvirt_uri,
        "capabilities": i.capabilities.as_ref().map(|c| json!({
            "disk_types": c.disk_types().map(|t| t.as_str_name()).collect::<Vec<_>>(),
            "formats": c.formats().map(|f| f.as_str_name()).collect::<Vec<_>>(),
            "pool_types": c.pool_types,
            "max_concurrent_migrations": c.max_concurrent_migrations,
        })),
    })
}

/// The controller's nodes (`nodes --json`).
pub fn nodes(ns: &[NodeStatus]) -> Value {
    let one = |n: &NodeStatus| {
        json!({
            "node_id": n.node_id,
            "endpoint": n.endpoint,
            "state": n.state().as_str_name(),
            "info": n.info.as_ref().map(node_info),
            "last_seen_unix_ms": n.last_seen_unix_ms,
            "configured": n.configured,
        })
    };
    json!({ "nodes": ns.iter().map(one).collect::<Vec<_>>() })
}

/// A placement dry run (`plan --json`).
pub fn plan(p: &PlanMigrationResponse) -> Value {
    let candidate = |c: &PlacementCandidate| {
        json!({
            "pool": c.pool,
            "storage_id": c.storage_id,
            "accepted": c.accepted,
            "rejected_by": c.rejected_by,
            "reason": c.reason,
            "score": c.score,
            "free_after_bytes": c.free_after_bytes,
        })
    };
    json!({
        "node_id": p.node_id,
        "disk": p.disk.as_ref().map(disk),
        "source_pool": p.source_pool,
        "candidates": p.candidates.iter().map(candidate).collect::<Vec<_>>(),
        "chosen_pool": p.chosen_pool,
        "disks": p.disks.iter().map(plan).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Phase, VolumeFormat};

    #[test]
    fn copying_event_has_every_key_with_proto_enum_names() {
        let ev = MigrationEvent {
            migration_id: "m1".into(),
            phase: Phase::Copying as i32,
            progress: Some(MigrationProgress {
                bytes_done: 1 << 30,
                bytes_total: 4 << 30,
                rate_bytes_per_sec: 100 << 20,
                eta_seconds: 31,
            }),
            timestamp_unix_ms: 1_714_564_805_000,
            started_at_unix_ms: 1_714_564_800_000,
            message: "copying".into(),
            node_id: "n1".into(),
            domain: "vm1".into(),
            disk: "vda".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            convergence: Some(ConvergenceWarning {
                dirty_rate_bytes_per_sec: 3 << 20,
                copy_rate_bytes_per_sec: 1 << 20,
                remaining_bytes: 32 << 20,
                remedy: "raise the bandwidth".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            event(&ev),
            json!({
                "migration_id": "m1",
                "node_id": "n1",
                "domain": "vm1",
                "disk": "vda",
                "phase": "PHASE_COPYING",
                "progress": {
                    "bytes_done": 1_073_741_824u64,
                    "bytes_total": 4_294_967_296u64,
                    "rate_bytes_per_sec": 104_857_600u64,
                    "eta_seconds": 31,
                },
                "timestamp_unix_ms": 1_714_564_805_000u64,
                "started_at_unix_ms": 1_714_564_800_000u64,
                "message": "copying",
                "result": null,
                "error": null,
                "disks": [],
                "skipped": [],
                "pivot_window_ms": 0,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "convergence": {
                    "dirty_rate_bytes_per_sec": 3_145_728u64,
                    "copy_rate_bytes_per_sec": 1_048_576u64,
                    "remaining_bytes": 33_554_432u64,
                    "remedy": "raise the bandwidth",
                },
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            })
        );
    }

    #[test]
    fn failed_event_names_the_error_code_and_phase() {
        let ev = MigrationEvent {
            phase: Phase::Failed as i32,
            error: Some(MigrationError {
                code: 8,
                message: "pool full".into(),
                phase: Phase::Copying as i32,
                disk_state: "guest still on its source".into(),
            }),
            ..Default::default()
        };
        let value = event(&ev);
        assert_eq!(value["phase"], "PHASE_FAILED");
        assert_eq!(
            value["error"],
            json!({
                "code": 8,
                "code_name": "RESOURCE_EXHAUSTED",
                "message": "pool full",
                "phase": "PHASE_COPYING",
                "disk_state": "guest still on its source",
            })
        );
        assert_eq!(value["progress"], Value::Null);
    }

    #[test]
    fn completed_event_carries_the_result() {
        let ev = MigrationEvent {
            phase: Phase::Completed as i32,
            result: Some(MigrationResult {
                destination_source: "/fast/vm1.qcow2".into(),
                destination_pool: "fast".into(),
                destination_volume: "vm1.qcow2".into(),
                destination_format: VolumeFormat::Qcow2 as i32,
                source_deleted: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = event(&ev);
        assert_eq!(value["result"]["destination_format"], "VOLUME_FORMAT_QCOW2");
        assert_eq!(value["result"]["source_deleted"], true);
        assert_eq!(value["error"], Value::Null);
    }

    #[test]
    fn unknown_enum_values_read_as_unspecified() {
        let ev = MigrationEvent {
            phase: 99,
            ..Default::default()
        };
        assert_eq!(event(&ev)["phase"], "PHASE_UNSPECIFIED");
    }

    #[test]
    fn event_is_one_line() {
        let ev = MigrationEvent {
            message: "two\nlines".into(),
            ..Default::default()
        };
        let line = event(&ev).to_string();
        assert!(!line.contains('\n'), "{line}");
    }
}
