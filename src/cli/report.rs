//! Human-readable output of the one-shot commands: tables for lists,
//! `key  value` blocks for single objects. Pure functions of the replies, so
//! they are tested without a server.

use super::progress::{
    completed_summary, failed_summary, format_name, is_terminal, percent, phase_name, progress_line,
};
use super::quantities::{human_bytes, human_duration, human_rate, utc_time};
use super::table::Table;
use crate::proto::{
    ChainPolicy, ClusterPool, CopyMode, Disk, DiskType, ListDisksResponse, MigrationOptions,
    MigrationRecord, NodeInfo, NodeStatus, Phase, PlanMigrationResponse, Pool, PoolState,
    SourcePolicy, VerifyLevel,
};

/// An enum's proto name as a lowercase word without its prefix
/// (`POOL_STATE_RUNNING` → `running`), and `-` for UNSPECIFIED.
fn word(name: &str, prefix: &str) -> String {
    match name.strip_prefix(prefix).unwrap_or(name) {
        "UNSPECIFIED" => "-".to_string(),
        rest => rest.to_ascii_lowercase(),
    }
}

fn pool_state(state: PoolState) -> String {
    word(state.as_str_name(), "POOL_STATE_")
}

fn disk_type(t: DiskType) -> String {
    word(t.as_str_name(), "DISK_TYPE_")
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Pool sizes; libvirt reports all zeros when it does not know (rbd without a
/// ceph-mgr), which must not read as an empty pool.
fn pool_sizes(p: &Pool) -> [String; 3] {
    if p.capacity_bytes == 0 {
        return ["-".into(), "-".into(), "-".into()];
    }
    [p.capacity_bytes, p.allocation_bytes, p.available_bytes].map(human_bytes)
}

/// A node's pools.
pub fn pools(pools: &[Pool]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "TYPE",
        "STATE",
        "CAPACITY",
        "ALLOCATION",
        "AVAILABLE",
        "DISK-TYPE",
        "SHARED",
    ]);
    for p in pools {
        let [capacity, allocation, available] = pool_sizes(p);
        t.row(vec![
            p.name.clone(),
            p.r#type.clone(),
            pool_state(p.state()),
            capacity,
            allocation,
            available,
            disk_type(p.disk_type()),
            yes_no(p.shared),
        ]);
    }
    t.render()
}

/// The cluster's pools with the nodes that reach each one.
pub fn cluster_pools(pools: &[ClusterPool]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "TYPE",
        "STATE",
        "CAPACITY",
        "ALLOCATION",
        "AVAILABLE",
        "DISK-TYPE",
        "SHARED",
        "NODES",
        "IN-FLIGHT",
        "TAGS",
    ]);
    for c in pools {
        let p = c.pool.clone().unwrap_or_default();
        let [capacity, allocation, available] = pool_sizes(&p);
        t.row(vec![
            if p.name.is_empty() {
                c.storage_id.clone()
            } else {
                p.name.clone()
            },
            p.r#type.clone(),
            pool_state(p.state()),
            capacity,
            allocation,
            available,
            disk_type(p.disk_type()),
            yes_no(p.shared),
            c.node_ids.join(","),
            c.in_flight_migrations.to_string(),
            c.tags.join(","),
        ]);
    }
    t.render()
}

fn size_or_dash(bytes: u64) -> String {
    if bytes == 0 {
        "-".to_string()
    } else {
        human_bytes(bytes)
    }
}

fn disk_flags(d: &Disk) -> String {
    let flags: Vec<&str> = [(d.read_only, "readonly"), (d.shareable, "shareable")]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
    flags.join(",")
}

/// A domain's disks, after a line naming the domain and whether it runs.
pub fn disks(reply: &ListDisksResponse) -> String {
    let state = if reply.running {
        "running"
    } else {
        "not running"
    };
    let mut out = format!(
        "domain {} ({}): {state}\n",
        reply.domain_name, reply.domain_uuid
    );
    let mut t = Table::new(&[
        "TARGET",
        "TYPE",
        "DEVICE",
        "FORMAT",
        "SOURCE",
        "POOL",
        "VOLUME",
        "VIRTUAL",
        "ALLOCATED",
        "CHAIN",
        "FLAGS",
        "CHECKPOINTS",
        "MIGRATION",
    ]);
    for d in &reply.disks {
        t.row(vec![
            d.target.clone(),
            disk_type(d.r#type()),
            d.device.clone(),
            format_name(d.format()).to_string(),
            d.source.clone(),
            d.pool.clone(),
            d.volume.clone(),
            size_or_dash(d.capacity_bytes),
            size_or_dash(d.allocation_bytes),
            d.backing_chain_depth.to_string(),
            disk_flags(d),
            d.checkpoints.join(","),
            d.migration_id.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

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

fn field(out: &mut String, name: &str, value: &str) {
    let value = if value.is_empty() { "-" } else { value };
    out.push_str(&format!("{name:<12} {value}\n"));
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

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// What a node is and can do (`info`).
pub fn node_info(i: &NodeInfo) -> String {
    let caps = i.capabilities.clone().unwrap_or_default();
    let mut out = String::new();
    field(&mut out, "node id", &i.node_id);
    field(&mut out, "hostname", &i.hostname);
    field(&mut out, "volmig", &i.volmig_version);
    field(
        &mut out,
        "libvirt",
        &format!(
            "{} ({})",
            or_dash(&i.libvirt_version),
            or_dash(&i.libvirt_uri)
        ),
    );
    field(&mut out, "qemu", &i.hypervisor_version);
    let disk_types: Vec<String> = caps.disk_types().map(disk_type).collect();
    field(&mut out, "disk types", &disk_types.join(", "));
    let formats: Vec<&str> = caps.formats().map(format_name).collect();
    field(&mut out, "formats", &formats.join(", "));
    field(&mut out, "pool types", &caps.pool_types.join(", "));
    field(
        &mut out,
        "concurrency",
        &caps.max_concurrent_migrations.to_string(),
    );
    out
}

/// The controller's nodes.
pub fn nodes(nodes: &[NodeStatus]) -> String {
    let mut t = Table::new(&[
        "NODE",
        "STATE",
        "ENDPOINT",
        "HOSTNAME",
        "LIBVIRT",
        "QEMU",
        "LAST-SEEN",
        "SOURCE",
    ]);
    for n in nodes {
        let info = n.info.clone().unwrap_or_default();
        t.row(vec![
            n.node_id.clone(),
            word(n.state().as_str_name(), "NODE_STATE_"),
            n.endpoint.clone(),
            info.hostname,
            info.libvirt_version,
            info.hypervisor_version,
            utc_time(n.last_seen_unix_ms),
            if n.configured {
                "configured"
            } else {
                "registered"
            }
            .to_string(),
        ]);
    }
    t.render()
}

/// A placement dry run: the disk, the chosen pool, and every candidate with
/// why it was accepted or rejected.
pub fn plan(p: &PlanMigrationResponse) -> String {
    if !p.disks.is_empty() {
        // A multi-disk plan: each disk's, judged after the ones before it.
        let mut out = String::new();
        field(&mut out, "node", &p.node_id);
        for d in &p.disks {
            out.push('\n');
            out.push_str(&plan(d));
        }
        return out;
    }
    let mut out = String::new();
    field(&mut out, "node", &p.node_id);
    if let Some(d) = &p.disk {
        field(
            &mut out,
            "disk",
            &format!(
                "{} ({}, {}, {} virtual, {} allocated): {}",
                or_dash(&d.target),
                disk_type(d.r#type()),
                format_name(d.format()),
                size_or_dash(d.capacity_bytes),
                size_or_dash(d.allocation_bytes),
                or_dash(&d.source)
            ),
        );
    }
    field(&mut out, "source pool", &p.source_pool);
    let chosen = if p.chosen_pool.is_empty() {
        "none: no candidate is acceptable"
    } else {
        &p.chosen_pool
    };
    field(&mut out, "chosen pool", chosen);
    out.push('\n');
    let mut t = Table::new(&[
        "POOL",
        "STORAGE-ID",
        "RESULT",
        "SCORE",
        "FREE-AFTER",
        "REASON",
    ]);
    for c in &p.candidates {
        let result = if c.accepted {
            "accepted".to_string()
        } else if c.rejected_by.is_empty() {
            "rejected".to_string()
        } else {
            format!("rejected:{}", c.rejected_by)
        };
        t.row(vec![
            c.pool.clone(),
            c.storage_id.clone(),
            result,
            if c.accepted {
                format!("{:.3}", c.score)
            } else {
                String::new()
            },
            human_bytes(c.free_after_bytes),
            c.reason.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        MigrateVolumeRequest, MigrationEvent, MigrationProgress, PlacementCandidate, VolumeFormat,
    };

    #[test]
    fn pools_table_shows_unknown_rbd_sizes_as_dashes() {
        let pools_ = [
            Pool {
                name: "default".into(),
                r#type: "dir".into(),
                state: PoolState::Running as i32,
                capacity_bytes: 100 << 30,
                allocation_bytes: 40 << 30,
                available_bytes: 60 << 30,
                disk_type: DiskType::File as i32,
                ..Default::default()
            },
            Pool {
                name: "ceph".into(),
                r#type: "rbd".into(),
                state: PoolState::Running as i32,
                disk_type: DiskType::Network as i32,
                shared: true,
                ..Default::default()
            },
        ];
        assert_eq!(
            pools(&pools_),
            "NAME     TYPE  STATE    CAPACITY   ALLOCATION  AVAILABLE  DISK-TYPE  SHARED\n\
             default  dir   running  100.0 GiB  40.0 GiB    60.0 GiB   file       no\n\
             ceph     rbd   running  -          -           -          network    yes\n"
        );
    }

    #[test]
    fn disks_table_lists_flags_and_the_running_migration() {
        let reply = ListDisksResponse {
            domain_name: "vm1".into(),
            domain_uuid: "u1".into(),
            running: true,
            disks: vec![Disk {
                target: "vda".into(),
                r#type: DiskType::File as i32,
                device: "disk".into(),
                format: VolumeFormat::Qcow2 as i32,
                source: "/var/lib/libvirt/images/vm1.qcow2".into(),
                pool: "default".into(),
                volume: "vm1.qcow2".into(),
                capacity_bytes: 10 << 30,
                allocation_bytes: 3 << 30,
                backing_chain_depth: 1,
                read_only: true,
                shareable: true,
                migration_id: "m1".into(),
                backing_layers: Vec::new(),
                checkpoints: vec!["daily".into(), "hourly".into()],
            }],
        };
        let text = disks(&reply);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("domain vm1 (u1): running"));
        let header = lines.next().expect("header");
        let row = lines.next().expect("row");
        let column = |name: &str| header.find(name).map(|at| row[at..].split("  ").next());
        assert_eq!(column("FLAGS"), Some(Some("readonly,shareable")), "{text}");
        assert_eq!(column("MIGRATION"), Some(Some("m1")), "{text}");
        assert_eq!(column("CHECKPOINTS"), Some(Some("daily,hourly")), "{text}");
        assert_eq!(column("VIRTUAL"), Some(Some("10.0 GiB")), "{text}");
    }

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
    fn plan_shows_the_choice_and_each_rejection_reason() {
        let reply = PlanMigrationResponse {
            node_id: "n1".into(),
            source_pool: "default".into(),
            chosen_pool: "fast".into(),
            candidates: vec![
                PlacementCandidate {
                    pool: "fast".into(),
                    accepted: true,
                    score: 0.8125,
                    free_after_bytes: 90 << 30,
                    ..Default::default()
                },
                PlacementCandidate {
                    pool: "small".into(),
                    rejected_by: "free_space".into(),
                    reason: "would be 97% used, threshold 85%".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = plan(&reply);
        assert!(text.contains("chosen pool  fast\n"), "{text}");
        assert!(
            text.contains("fast   -           accepted             0.812  90.0 GiB    -\n"),
            "{text}"
        );
        assert!(
            text.contains("small  -           rejected:free_space  -      0 B         would be 97% used, threshold 85%\n"),
            "{text}"
        );
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
