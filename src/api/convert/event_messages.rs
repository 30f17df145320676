//! Events and records: an engine event (with its progress, result, failure
//! and convergence warning) as a proto event, and journal records and group
//! views as proto records.

use super::request_messages::{group_request_to_proto, request_to_proto};
use super::{format_to_proto, phase_to_proto};
use crate::migration::journal::Record;
use crate::migration::model::{ConvergenceWarning, Event, Failure, MigrationResult, Progress};
use crate::migration::GroupView;
use crate::proto;

fn progress_to_proto(p: &Progress) -> proto::MigrationProgress {
    proto::MigrationProgress {
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        rate_bytes_per_sec: p.rate,
        eta_seconds: p.eta_seconds,
    }
}

fn result_to_proto(r: &MigrationResult) -> proto::MigrationResult {
    proto::MigrationResult {
        destination_source: r.destination.display_name(),
        destination_pool: r.destination_pool.clone(),
        destination_volume: r.destination_volume.clone(),
        destination_format: format_to_proto(r.destination_format) as i32,
        source_pool: r.source_pool.clone(),
        source_volume: r.source_volume.clone(),
        previous_source: r.previous_source.clone(),
        source_deleted: r.source_deleted,
        persistent_definition_repaired: r.persistent_repaired,
        source_kept_reason: r.source_kept_reason.clone().unwrap_or_default(),
        source_allocated_bytes: r.source_allocated,
        destination_allocated_bytes: r.destination_allocated,
    }
}

fn convergence_to_proto(c: &ConvergenceWarning) -> proto::ConvergenceWarning {
    proto::ConvergenceWarning {
        dirty_rate_bytes_per_sec: c.dirty_rate,
        copy_rate_bytes_per_sec: c.copy_rate,
        remaining_bytes: c.remaining,
        remedy: c.remedy.clone(),
    }
}

fn failure_to_proto(f: &Failure) -> proto::MigrationError {
    proto::MigrationError {
        code: f.code.number(),
        message: f.message.clone(),
        phase: phase_to_proto(f.phase) as i32,
        disk_state: f.disk_state.clone(),
    }
}

/// Proto event from an engine event.
pub fn event_to_proto(e: &Event) -> proto::MigrationEvent {
    proto::MigrationEvent {
        migration_id: e.migration_id.clone(),
        phase: phase_to_proto(e.phase) as i32,
        progress: Some(progress_to_proto(&e.progress)),
        timestamp_unix_ms: e.timestamp_ms,
        started_at_unix_ms: e.started_ms,
        message: e.message.clone(),
        result: e.result.as_ref().map(result_to_proto),
        error: e.failure.as_ref().map(failure_to_proto),
        node_id: e.node_id.clone(),
        domain: e.domain.clone(),
        disk: e.disk.clone(),
        disks: e
            .disks
            .iter()
            .map(|d| proto::DiskStatus {
                disk: d.disk.clone(),
                migration_id: d.migration_id.clone(),
                phase: phase_to_proto(d.phase) as i32,
                progress: Some(progress_to_proto(&d.progress)),
                message: d.message.clone(),
                result: d.result.as_ref().map(result_to_proto),
                error: d.failure.as_ref().map(failure_to_proto),
                pivot_started_unix_ms: d.pivot.map(|p| p.0).unwrap_or(0),
                pivot_ended_unix_ms: d.pivot.map(|p| p.1).unwrap_or(0),
                convergence: d.convergence.as_ref().map(convergence_to_proto),
            })
            .collect(),
        skipped: e
            .skipped
            .iter()
            .map(|s| proto::SkippedDisk {
                disk: s.disk.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
        pivot_window_ms: e.pivot_window_ms,
        convergence: e.convergence.as_ref().map(convergence_to_proto),
        trace_id: e.trace_id.clone(),
    }
}

/// Proto record from a journal record.
pub fn record_to_proto(r: &Record) -> proto::MigrationRecord {
    proto::MigrationRecord {
        migration_id: r.id.clone(),
        node_id: r.latest.node_id.clone(),
        request: Some(request_to_proto(&r.request)),
        latest: Some(event_to_proto(&r.latest)),
        source_pool: r
            .plan
            .source_volume
            .as_ref()
            .map(|v| v.pool.clone())
            .unwrap_or_default(),
        previous_source: r.plan.source.display_name(),
    }
}

/// Proto record of a multi-disk migration.
pub fn group_to_proto(g: &GroupView) -> proto::MigrationRecord {
    proto::MigrationRecord {
        migration_id: g.latest.migration_id.clone(),
        node_id: g.latest.node_id.clone(),
        request: Some(group_request_to_proto(&g.request)),
        latest: Some(event_to_proto(&g.latest)),
        source_pool: String::new(),
        previous_source: String::new(),
    }
}
