//! proto ↔ controller domain conversions. Events, requests and node records
//! keep their wire bytes in the domain ([`NodeEvent::wire`], [`Order::wire`]), so
//! what the controller relays is exactly what the node or the caller sent,
//! with only the controller's own decisions written over it.

use prost::Message;
use tonic::Status;

use crate::api::convert::{format_from_proto, format_to_proto, kind_to_proto, phase_from_proto};
use crate::controller::maintenance::PoolMaintenance;
use crate::controller::model::{
    BackingLayerInfo, DiskInfo, DiskOrder, DiskResult, DomainInfo, MigrationEntry, MigrationFilter,
    NodeEvent, NodeRecord, Order, PoolInfo, PoolVolumeInfo, VolumeUseInfo,
};
use crate::controller::registry::NodeFacts;
use crate::hypervisor::{DiskKind, ImageFormat, PoolRunState};
use crate::proto;

fn format_option(f: Option<ImageFormat>) -> i32 {
    f.map(format_to_proto)
        .unwrap_or(proto::VolumeFormat::Unspecified) as i32
}

fn kind_from_proto(value: i32) -> Option<DiskKind> {
    match proto::DiskType::try_from(value).ok()? {
        proto::DiskType::File => Some(DiskKind::File),
        proto::DiskType::Block => Some(DiskKind::Block),
        proto::DiskType::Network => Some(DiskKind::Network),
        proto::DiskType::Unspecified => None,
    }
}

fn kind_option(k: Option<DiskKind>) -> i32 {
    k.map(kind_to_proto).unwrap_or(proto::DiskType::Unspecified) as i32
}

/// A caller's request as the controller's order; shape errors are the caller's.
pub fn order_from_proto(req: proto::MigrateVolumeRequest) -> Result<Order, Status> {
    let multi = !req.disks.is_empty() || req.all_disks;
    if multi {
        // The same shape rules the node applies (one way of naming disks,
        // volumes per disk, known enum values), refused before any node is asked.
        crate::api::convert::requested_from_proto(req.clone())
            .map_err(crate::api::status::engine)?;
    }
    let wire = req.encode_to_vec();
    let options = req.options.unwrap_or_default();
    let disks = req
        .disks
        .into_iter()
        .map(|d| {
            Ok(DiskOrder {
                destination_format: format_from_proto(
                    d.destination_format,
                    "disks.destination_format",
                )?,
                disk: d.disk,
                destination_pool: d.destination_pool,
                destination_volume: d.destination_volume,
                source_users_elsewhere: d.source_users_elsewhere,
            })
        })
        .collect::<Result<_, crate::migration::Error>>()
        .map_err(crate::api::status::engine)?;
    Ok(Order {
        destination_format: format_from_proto(req.destination_format, "destination_format")
            .map_err(crate::api::status::engine)?,
        domain: req.domain,
        disk: req.disk,
        destination_pool: req.destination_pool,
        required_tags: req.required_tags,
        delete_source: options.source_policy == proto::SourcePolicy::Delete as i32,
        source_users_elsewhere: options.source_users_elsewhere,
        disks,
        all_disks: req.all_disks,
        same_pool: req.same_pool,
        shallow: options.chain_policy == proto::ChainPolicy::Shallow as i32,
        request_id: None,
        bandwidth: None,
        drain_id: None,
        offline_if_stopped: options.offline_if_stopped,
        wire,
    })
}

/// The request the node gets: the caller's, with the controller's choices.
pub fn order_to_proto(order: &Order) -> proto::MigrateVolumeRequest {
    let mut req = proto::MigrateVolumeRequest::decode(order.wire.as_slice()).unwrap_or_default();
    req.domain = order.domain.clone();
    req.disk = order.disk.clone();
    req.destination_pool = order.destination_pool.clone();
    if let Some(id) = &order.request_id {
        req.request_id = id.clone();
    }
    let options = req.options.get_or_insert_with(Default::default);
    options.source_users_elsewhere = order.source_users_elsewhere.clone();
    if let Some(bps) = order.bandwidth {
        options.bandwidth_bytes_per_sec = bps;
    }
    // Orders the controller builds (a drain's) have no caller's bytes to
    // carry the policy; a caller's order says the same thing in both.
    if order.delete_source {
        options.source_policy = proto::SourcePolicy::Delete as i32;
    }
    if order.offline_if_stopped {
        options.offline_if_stopped = true;
    }
    req.disks = order
        .disks
        .iter()
        .map(|d| proto::DiskDestination {
            disk: d.disk.clone(),
            destination_pool: d.destination_pool.clone(),
            destination_volume: d.destination_volume.clone(),
            destination_format: format_option(d.destination_format),
            source_users_elsewhere: d.source_users_elsewhere.clone(),
        })
        .collect();
    req
}

/// A node's event as the controller reads it.
pub fn event_from_proto(e: &proto::MigrationEvent) -> NodeEvent {
    NodeEvent {
        migration_id: e.migration_id.clone(),
        node_id: e.node_id.clone(),
        phase: proto::Phase::try_from(e.phase)
            .ok()
            .and_then(phase_from_proto),
        timestamp_ms: e.timestamp_unix_ms,
        started_at_ms: e.started_at_unix_ms,
        domain: e.domain.clone(),
        bytes_done: e.progress.as_ref().map_or(0, |p| p.bytes_done),
        bytes_total: e.progress.as_ref().map_or(0, |p| p.bytes_total),
        error: e
            .error
            .as_ref()
            .map(|x| x.message.clone())
            .unwrap_or_default(),
        results: disk_results(e),
        wire: e.encode_to_vec(),
    }
}

/// Where each disk of a completed migration went: the one result of a
/// single-disk event, or each disk's of a multi-disk one.
fn disk_results(e: &proto::MigrationEvent) -> Vec<DiskResult> {
    let one = |disk: &str, r: &proto::MigrationResult| DiskResult {
        disk: disk.to_string(),
        destination_source: r.destination_source.clone(),
        destination_pool: r.destination_pool.clone(),
        destination_volume: r.destination_volume.clone(),
        source_pool: r.source_pool.clone(),
        source_volume: r.source_volume.clone(),
        previous_source: r.previous_source.clone(),
        source_deleted: r.source_deleted,
    };
    if e.disks.is_empty() {
        return e.result.iter().map(|r| one(&e.disk, r)).collect();
    }
    e.disks
        .iter()
        .filter_map(|d| d.result.as_ref().map(|r| one(&d.disk, r)))
        .collect()
}

/// The event as the node sent it.
pub fn event_to_proto(e: &NodeEvent) -> proto::MigrationEvent {
    proto::MigrationEvent::decode(e.wire.as_slice()).unwrap_or_else(|_| proto::MigrationEvent {
        migration_id: e.migration_id.clone(),
        node_id: e.node_id.clone(),
        timestamp_unix_ms: e.timestamp_ms,
        started_at_unix_ms: e.started_at_ms,
        domain: e.domain.clone(),
        ..Default::default()
    })
}

/// A history entry as a record.
pub fn entry_to_proto(e: &MigrationEntry) -> proto::MigrationRecord {
    proto::MigrationRecord {
        migration_id: e.migration_id.clone(),
        node_id: e.node_id.clone(),
        request: Some(order_to_proto(&e.order)),
        latest: Some(event_to_proto(&e.latest)),
        source_pool: e.source_pool.clone(),
        previous_source: e.previous_source.clone(),
    }
}

/// A node's record as the controller reads it.
pub fn node_record_from_proto(r: &proto::MigrationRecord) -> NodeRecord {
    NodeRecord {
        latest: r.latest.as_ref().map(event_from_proto),
        wire: r.encode_to_vec(),
    }
}

/// The node's record as it sent it.
pub fn node_record_to_proto(r: &NodeRecord) -> proto::MigrationRecord {
    proto::MigrationRecord::decode(r.wire.as_slice()).unwrap_or_default()
}

/// The controller's list filter.
pub fn filter_from_proto(req: &proto::ListMigrationsRequest) -> MigrationFilter {
    let engine = crate::api::convert::filter_from_proto(req);
    MigrationFilter {
        node_id: Some(req.node_id.clone()).filter(|n| !n.is_empty()),
        domain: engine.domain,
        phases: engine.phases,
        started_after_ms: engine.started_after_ms,
        started_before_ms: engine.started_before_ms,
        active_only: engine.active_only,
    }
}

fn pool_state(value: i32) -> Option<PoolRunState> {
    match proto::PoolState::try_from(value).ok()? {
        proto::PoolState::Inactive => Some(PoolRunState::Inactive),
        proto::PoolState::Building => Some(PoolRunState::Building),
        proto::PoolState::Running => Some(PoolRunState::Running),
        proto::PoolState::Degraded => Some(PoolRunState::Degraded),
        proto::PoolState::Inaccessible => Some(PoolRunState::Inaccessible),
        proto::PoolState::Unspecified => None,
    }
}

fn pool_state_to_proto(s: Option<PoolRunState>) -> i32 {
    (match s {
        None => proto::PoolState::Unspecified,
        Some(PoolRunState::Inactive) => proto::PoolState::Inactive,
        Some(PoolRunState::Building) => proto::PoolState::Building,
        Some(PoolRunState::Running) => proto::PoolState::Running,
        Some(PoolRunState::Degraded) => proto::PoolState::Degraded,
        Some(PoolRunState::Inaccessible) => proto::PoolState::Inaccessible,
    }) as i32
}

/// A node's pool.
pub fn pool_from_proto(p: proto::Pool) -> PoolInfo {
    PoolInfo {
        state: pool_state(p.state),
        disk_kind: kind_from_proto(p.disk_type),
        name: p.name,
        uuid: p.uuid,
        pool_type: p.r#type,
        capacity: p.capacity_bytes,
        allocation: p.allocation_bytes,
        available: p.available_bytes,
        target_path: p.target_path,
        storage_id: p.storage_id,
        shared: p.shared,
        provisioned: p.provisioned_bytes,
    }
}

/// A pool's maintenance flag for the caller.
pub fn maintenance_to_proto(m: &PoolMaintenance) -> proto::PoolMaintenance {
    proto::PoolMaintenance {
        on: m.on,
        actor: m.actor.clone(),
        since_unix_ms: m.since_ms,
        reason: m.reason.clone().unwrap_or_default(),
    }
}

/// A pool for the caller.
pub fn pool_to_proto(p: &PoolInfo) -> proto::Pool {
    proto::Pool {
        name: p.name.clone(),
        uuid: p.uuid.clone(),
        r#type: p.pool_type.clone(),
        state: pool_state_to_proto(p.state),
        capacity_bytes: p.capacity,
        allocation_bytes: p.allocation,
        available_bytes: p.available,
        disk_type: kind_option(p.disk_kind),
        target_path: p.target_path.clone(),
        storage_id: p.storage_id.clone(),
        shared: p.shared,
        provisioned_bytes: p.provisioned,
    }
}

/// A node's disk.
pub fn disk_from_proto(d: proto::Disk) -> DiskInfo {
    DiskInfo {
        kind: kind_from_proto(d.r#type),
        format: format_from_proto(d.format, "format").ok().flatten(),
        target: d.target,
        device: d.device,
        source: d.source,
        pool: d.pool,
        volume: d.volume,
        capacity: d.capacity_bytes,
        allocation: d.allocation_bytes,
        backing_chain_depth: d.backing_chain_depth,
        read_only: d.read_only,
        shareable: d.shareable,
        migration_id: d.migration_id,
        checkpoints: d.checkpoints,
        backing_layers: d
            .backing_layers
            .into_iter()
            .map(|l| BackingLayerInfo {
                source: l.source,
                volume: l.volume,
                capacity: l.capacity_bytes,
                allocation: l.allocation_bytes,
                present_in_pools: l.present_in_pools,
            })
            .collect(),
    }
}

/// A disk for the caller.
pub fn disk_to_proto(d: &DiskInfo) -> proto::Disk {
    proto::Disk {
        target: d.target.clone(),
        r#type: kind_option(d.kind),
        device: d.device.clone(),
        format: format_option(d.format),
        source: d.source.clone(),
        pool: d.pool.clone(),
        volume: d.volume.clone(),
        capacity_bytes: d.capacity,
        allocation_bytes: d.allocation,
        backing_chain_depth: d.backing_chain_depth,
        read_only: d.read_only,
        shareable: d.shareable,
        migration_id: d.migration_id.clone(),
        checkpoints: d.checkpoints.clone(),
        backing_layers: d
            .backing_layers
            .iter()
            .map(|l| proto::BackingLayer {
                source: l.source.clone(),
                volume: l.volume.clone(),
                capacity_bytes: l.capacity,
                allocation_bytes: l.allocation,
                present_in_pools: l.present_in_pools.clone(),
            })
            .collect(),
    }
}

/// A node's disk listing.
pub fn disks_from_proto(r: proto::ListDisksResponse) -> DomainInfo {
    DomainInfo {
        name: r.domain_name,
        uuid: r.domain_uuid,
        running: r.running,
        disks: r.disks.into_iter().map(disk_from_proto).collect(),
    }
}

/// A node's volumes of one pool, each with its users there. A format the
/// controller does not know reads as unknown rather than failing the listing.
pub fn pool_volumes_from_proto(r: proto::ListPoolVolumesResponse) -> Vec<PoolVolumeInfo> {
    r.volumes
        .into_iter()
        .map(|v| PoolVolumeInfo {
            format: format_from_proto(v.format, "format").ok().flatten(),
            name: v.name,
            source: v.source,
            capacity: v.capacity_bytes,
            allocation: v.allocation_bytes,
            users: v
                .users
                .into_iter()
                .map(|u| VolumeUseInfo {
                    domain: u.domain,
                    running: u.running,
                    disk: u.disk,
                    backing: u.backing,
                })
                .collect(),
        })
        .collect()
}

/// A node's facts.
pub fn facts_from_proto(info: &proto::NodeInfo) -> NodeFacts {
    NodeFacts {
        hostname: info.hostname.clone(),
        libvirt_version: info.libvirt_version.clone(),
        hypervisor_version: info.hypervisor_version.clone(),
        volmig_version: info.volmig_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_messages_survive_the_domain_unchanged() {
        let event = proto::MigrationEvent {
            migration_id: "m".into(),
            node_id: "n".into(),
            phase: proto::Phase::Copying as i32,
            message: "copying".into(),
            progress: Some(proto::MigrationProgress {
                bytes_done: 5,
                bytes_total: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(event_to_proto(&event_from_proto(&event)), event);
        let req = proto::MigrateVolumeRequest {
            domain: "d".into(),
            disk: "vda".into(),
            options: Some(proto::MigrationOptions {
                bandwidth_bytes_per_sec: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut order = order_from_proto(req.clone()).expect("order");
        order.destination_pool = "chosen".into();
        let sent = order_to_proto(&order);
        assert_eq!(sent.destination_pool, "chosen");
        assert_eq!(sent.options.map(|o| o.bandwidth_bytes_per_sec), Some(7));
        let pool = proto::Pool {
            name: "p".into(),
            state: proto::PoolState::Running as i32,
            disk_type: proto::DiskType::File as i32,
            capacity_bytes: 9,
            ..Default::default()
        };
        assert_eq!(pool_to_proto(&pool_from_proto(pool.clone())), pool);
    }

    #[test]
    fn a_node_s_pool_volumes_reach_the_controller_with_their_users() {
        use crate::migration::{PoolVolume, VolumeUse};
        let node_side = [PoolVolume {
            name: "base.qcow2".into(),
            source: "/p/base.qcow2".into(),
            format: Some(ImageFormat::Qcow2),
            capacity: 10,
            allocation: 4,
            users: vec![VolumeUse {
                domain: "off".into(),
                running: false,
                disk: "vdb".into(),
                backing: true,
            }],
        }];
        let wire = crate::api::convert::pool_volumes_to_proto(&node_side);
        let mut unknown_format = wire.clone();
        unknown_format.volumes[0].format = 99;
        assert_eq!(
            pool_volumes_from_proto(wire),
            [PoolVolumeInfo {
                name: "base.qcow2".into(),
                source: "/p/base.qcow2".into(),
                format: Some(ImageFormat::Qcow2),
                capacity: 10,
                allocation: 4,
                users: vec![VolumeUseInfo {
                    domain: "off".into(),
                    running: false,
                    disk: "vdb".into(),
                    backing: true,
                }],
            }]
        );
        // A format this controller does not know is unknown, not a failed listing.
        assert_eq!(pool_volumes_from_proto(unknown_format)[0].format, None);
    }

    #[test]
    fn a_drains_order_carries_its_request_id_bandwidth_and_source_policy() {
        let order = Order {
            domain: "d".into(),
            disks: vec![DiskOrder {
                disk: "vda".into(),
                destination_pool: "new".into(),
                ..Default::default()
            }],
            delete_source: true,
            request_id: Some("d-1-i0-a1".into()),
            bandwidth: Some(50),
            ..Default::default()
        };
        let sent = order_to_proto(&order);
        assert_eq!(sent.request_id, "d-1-i0-a1");
        let options = sent.options.expect("options");
        assert_eq!(options.bandwidth_bytes_per_sec, 50);
        assert_eq!(options.source_policy, proto::SourcePolicy::Delete as i32);
    }

    #[test]
    fn a_terminal_event_tells_where_each_disk_went() {
        let result = |pool: &str| proto::MigrationResult {
            destination_source: format!("/{pool}/v"),
            destination_pool: pool.into(),
            destination_volume: "v".into(),
            source_pool: "old".into(),
            source_volume: "v0".into(),
            previous_source: "/old/v0".into(),
            ..Default::default()
        };
        let event = proto::MigrationEvent {
            phase: proto::Phase::Completed as i32,
            disks: vec![
                proto::DiskStatus {
                    disk: "vda".into(),
                    result: Some(result("a")),
                    ..Default::default()
                },
                proto::DiskStatus {
                    disk: "vdb".into(),
                    result: Some(result("b")),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let read = event_from_proto(&event);
        let went: Vec<(&str, &str, &str)> = read
            .results
            .iter()
            .map(|r| {
                (
                    r.disk.as_str(),
                    r.destination_pool.as_str(),
                    r.previous_source.as_str(),
                )
            })
            .collect();
        assert_eq!(went, [("vda", "a", "/old/v0"), ("vdb", "b", "/old/v0")]);
        let failed = proto::MigrationEvent {
            phase: proto::Phase::Failed as i32,
            error: Some(proto::MigrationError {
                message: "no room".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(event_from_proto(&failed).error, "no room");
    }
}
