//! Migrations as `list` shows them (a table) and as `status` shows one (a
//! `key  value` block followed by how it ended).

use super::field;
use crate::cli::progress::{
    completed_summary, failed_summary, format_name, is_terminal, or_dash, percent, phase_name,
    progress_line,
};
use crate::cli::quantities::{human_duration, human_rate, utc_time};
use crate::cli::table::Table;
use crate::proto::{
    ChainPolicy, CopyMode, MigrationOptions, MigrationRecord, Phase, SourcePolicy, VerifyLevel,
};

/// Where a migration is going: the pool the result names, else the requested one.
fn destination_pool(r: &MigrationRecord) -> String {
    let from_result = r
        .latest
        .as_ref()
        .and_then(|e| e.result.as_ref())
        .map(|res| res.destination_pool.clone());
    let requested = r.request.as_ref().map(|q| q.destination_pool.clone());
    from_result
        .filter(|p| !p.is_empty())
        .or(requested)
        .unwrap_or_default()
}

/// Migrations, newest first as the server sends them.
pub fn migrations(records: &[MigrationRecord]) -> String {
    let mut t = Table::new(&[
        "ID", "NODE", "DOMAIN", "DISK", "PHASE", "PROGRESS", "FROM", "TO", "STARTED",
    ]);
    for r in records {
        let latest = r.latest.clone().unwrap_or_default();
        let request = r.request.clone().unwrap_or_default();
        let progress = latest
            .progress
            .and_then(|p| percent(p.bytes_done, p.bytes_total))
            .filter(|_| !is_terminal(latest.phase()))
            .unwrap_or_default();
        t.row(vec![
            r.migration_id.clone(),
            r.node_id.clone(),
            if latest.domain.is_empty() {
                request.domain.clone()
            } else {
                latest.domain.clone()
            },
            if latest.disk.is_empty() {
                request.disk.clone()
            } else {
                latest.disk.clone()
            },
            phase_name(latest.phase()).to_string(),
            progress,
            r.source_pool.clone(),
            destination_pool(r),
            utc_time(latest.started_at_unix_ms),
        ]);
    }
    t.render()
}

/// The options that differ from the defaults, or `defaults`.
fn options_summary(o: &MigrationOptions) -> String {
    let mut parts = Vec::new();
    if o.bandwidth_bytes_per_sec > 0 {
        parts.push(format!(
            "bandwidth {}",
            human_rate(o.bandwidth_bytes_per_sec)
        ));
    }
    if o.copy_mode() == CopyMode::SynchronousWrites {
        parts.push("synchronous writes".to_string());
    }
    if o.chain_policy() == ChainPolicy::Shallow {
        parts.push("shallow".to_string());
    }
    if o.source_policy() == SourcePolicy::Delete {
        parts.push("delete source".to_string());
    }
    if o.timeout_seconds > 0 {
        parts.push(format!("timeout {}", human_duration(o.timeout_seconds)));
    }
    if o.verify() == VerifyLevel::Strict {
        parts.push("verify strict".to_string());
    }
    if parts.is_empty() {
        "defaults".to_string()
    } else {
        parts.join(", ")
    }
}

/// One migration (`status`): what was asked, where it is, and how it ended.
pub fn record(r: &MigrationRecord) -> String {
    let latest = r.latest.clone().unwrap_or_default();
    let request = r.request.clone().unwrap_or_default();
    let mut out = String::new();
    field(&mut out, "migration", &r.migration_id);
    field(&mut out, "node", &r.node_id);
    field(&mut out, "domain", &request.domain);
    let disk = if request.all_disks {
        format!("all eligible disks: {}", latest.disk)
    } else if request.disks.is_empty() {
        request.disk.clone()
    } else {
        latest.disk.clone()
    };
    field(
        &mut out,
        if latest.disks.len() > 1 {
            "disks"
        } else {
            "disk"
        },
        &disk,
    );
    field(
        &mut out,
        "from",
        &format!(
            "{} ({})",
            or_dash(&r.source_pool),
            or_dash(&r.previous_source)
        ),
    );
    let mut to = destination_pool(r);
    if !request.destination_volume.is_empty() {
        to.push_str(&format!(" as {}", request.destination_volume));
    }
    if request.destination_format() != crate::proto::VolumeFormat::Unspecified {
        to.push_str(&format!(" ({})", format_name(request.destination_format())));
    }
    field(&mut out, "to", &to);
    field(&mut out, "request id", &request.request_id);
    field(&mut out, "trace id", &latest.trace_id);
    field(
        &mut out,
        "options",
        &options_summary(&request.options.unwrap_or_default()),
    );
    field(&mut out, "started", &utc_time(latest.started_at_unix_ms));
    field(&mut out, "updated", &utc_time(latest.timestamp_unix_ms));
    field(&mut out, "phase", &progress_line(&latest));
    field(&mut out, "message", &latest.message);
    match latest.phase() {
        Phase::Completed => out.push_str(&completed_summary(&latest)),
        phase if is_terminal(phase) => out.push_str(&failed_summary(&latest)),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{MigrateVolumeRequest, MigrationEvent, MigrationProgress};

    #[test]
    fn migrations_table_shows_progress_only_while_running() {
        let record = |phase: Phase| MigrationRecord {
            migration_id: "m1".into(),
            node_id: "n1".into(),
            request: Some(MigrateVolumeRequest {
                domain: "vm1".into(),
                disk: "vda".into(),
                destination_pool: "fast".into(),
                ..Default::default()
            }),
            latest: Some(MigrationEvent {
                phase: phase as i32,
                progress: Some(MigrationProgress {
                    bytes_done: 1,
                    bytes_total: 4,
                    ..Default::default()
                }),
                started_at_unix_ms: 1_714_564_800_000,
                ..Default::default()
            }),
            source_pool: "default".into(),
            ..Default::default()
        };
        let text = migrations(&[record(Phase::Copying), record(Phase::Failed)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "m1  n1    vm1     vda   COPYING  25.0%     default  fast  2024-05-01 12:00:00 UTC"
        );
        assert!(lines[2].contains("FAILED   -"), "{text}");
    }

    #[test]
    fn status_lists_only_non_default_options() {
        let options = MigrationOptions {
            bandwidth_bytes_per_sec: 50 << 20,
            copy_mode: CopyMode::SynchronousWrites as i32,
            source_policy: SourcePolicy::Delete as i32,
            ..Default::default()
        };
        assert_eq!(
            options_summary(&options),
            "bandwidth 50.0 MiB/s, synchronous writes, delete source"
        );
        assert_eq!(options_summary(&MigrationOptions::default()), "defaults");
    }
}
