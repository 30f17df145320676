//! Tables of storage: a node's pools, the cluster's pools, a domain's disks,
//! a pool's volumes.

use super::{disk_type, size_or_dash, word};
use crate::cli::progress::format_name;
use crate::cli::quantities::{human_bytes, utc_time};
use crate::cli::table::Table;
use crate::proto::{
    ClusterPool, Disk, ListDisksResponse, ListPoolVolumesResponse, Pool, PoolMaintenance,
    PoolState, VolumeUse,
};

fn pool_state(state: PoolState) -> String {
    word(state.as_str_name(), "POOL_STATE_")
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
        "MAINTENANCE",
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
            maintenance(c.maintenance.as_ref()),
        ]);
    }
    t.render()
}

/// `on since … by …` while a pool is in maintenance, else `-`: the column
/// answers "may placement choose it?", and who turned it off is in `--json`.
fn maintenance(m: Option<&PoolMaintenance>) -> String {
    match m {
        Some(m) if m.on => format!("on since {} by {}", utc_time(m.since_unix_ms), m.actor),
        _ => "-".to_string(),
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

/// `domain:disk (running|defined[, backing])`.
fn volume_use(u: &VolumeUse) -> String {
    let state = if u.running { "running" } else { "defined" };
    let layer = if u.backing { ", backing" } else { "" };
    format!("{}:{} ({state}{layer})", u.domain, u.disk)
}

/// A pool's volumes, each with the disks that use it (`-` for none).
pub fn pool_volumes(reply: &ListPoolVolumesResponse) -> String {
    let mut t = Table::new(&[
        "VOLUME",
        "FORMAT",
        "VIRTUAL",
        "ALLOCATED",
        "SOURCE",
        "USED-BY",
    ]);
    for v in &reply.volumes {
        let users: Vec<String> = v.users.iter().map(volume_use).collect();
        t.row(vec![
            v.name.clone(),
            format_name(v.format()).to_string(),
            size_or_dash(v.capacity_bytes),
            size_or_dash(v.allocation_bytes),
            v.source.clone(),
            if users.is_empty() {
                "-".to_string()
            } else {
                users.join(", ")
            },
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DiskType, VolumeFormat};

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
    fn cluster_pools_show_a_pool_in_maintenance_and_since_when() {
        let flagged = |on| ClusterPool {
            storage_id: "s-fast".into(),
            pool: Some(Pool {
                name: "fast".into(),
                ..Default::default()
            }),
            maintenance: Some(PoolMaintenance {
                on,
                actor: "alice".into(),
                since_unix_ms: 1_714_564_800_000,
                reason: "new disks".into(),
            }),
            ..Default::default()
        };
        let text = cluster_pools(&[flagged(true), flagged(false)]);
        let mut lines = text.lines();
        let header = lines.next().expect("header");
        let at = header.find("MAINTENANCE").expect("column");
        let cells: Vec<&str> = lines.map(|row| row[at..].trim_end()).collect();
        assert_eq!(
            cells,
            ["on since 2024-05-01 12:00:00 UTC by alice", "-"],
            "{text}"
        );
    }

    #[test]
    fn volumes_table_names_each_user_and_how_it_uses_the_volume() {
        use crate::proto::PoolVolume;
        let volume = |name: &str, users: Vec<VolumeUse>| PoolVolume {
            name: name.into(),
            source: format!("/p/{name}"),
            format: VolumeFormat::Qcow2 as i32,
            capacity_bytes: 1 << 30,
            allocation_bytes: 0,
            users,
        };
        let user = |domain: &str, running, backing| VolumeUse {
            domain: domain.into(),
            running,
            disk: "vda".into(),
            backing,
        };
        let reply = ListPoolVolumesResponse {
            volumes: vec![
                volume(
                    "base",
                    vec![user("web", true, true), user("old", false, true)],
                ),
                volume("spare", Vec::new()),
            ],
        };
        assert_eq!(
            pool_volumes(&reply),
            "VOLUME  FORMAT  VIRTUAL  ALLOCATED  SOURCE    USED-BY\n\
             base    qcow2   1.0 GiB  -          /p/base   web:vda (running, backing), old:vda (defined, backing)\n\
             spare   qcow2   1.0 GiB  -          /p/spare  -\n"
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
}
