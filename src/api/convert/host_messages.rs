//! What a host has: pools (with the storage id that tells shared pools
//! apart), a domain's disks, and the node's own info and capabilities.

use super::{format_to_proto, kind_to_proto};
use crate::hypervisor::{DiskSource, HostInfo, ImageFormat, PoolRunState, PoolSpec};
use crate::migration::{DiskView, DomainDisks, PoolVolume};
use crate::proto;

fn format_name_to_proto(f: Option<&str>) -> proto::VolumeFormat {
    f.and_then(ImageFormat::parse)
        .map(format_to_proto)
        .unwrap_or(proto::VolumeFormat::Unspecified)
}

/// Proto pool from a pool spec (its storage id was decided where the spec
/// was built, from the host's facts).
pub fn pool_to_proto(p: &PoolSpec) -> proto::Pool {
    proto::Pool {
        name: p.name.clone(),
        uuid: p.uuid.clone(),
        r#type: p.pool_type.clone(),
        state: match p.state {
            PoolRunState::Inactive => proto::PoolState::Inactive,
            PoolRunState::Building => proto::PoolState::Building,
            PoolRunState::Running => proto::PoolState::Running,
            PoolRunState::Degraded => proto::PoolState::Degraded,
            PoolRunState::Inaccessible => proto::PoolState::Inaccessible,
        } as i32,
        capacity_bytes: p.capacity,
        allocation_bytes: p.allocation,
        available_bytes: p.available,
        disk_type: p
            .disk_kind()
            .map(kind_to_proto)
            .unwrap_or(proto::DiskType::Unspecified) as i32,
        target_path: p.target_path.clone(),
        storage_id: p.storage_id.clone(),
        shared: p.shared,
        provisioned_bytes: p.provisioned,
    }
}

fn disk_to_proto(d: &DiskView) -> proto::Disk {
    proto::Disk {
        target: d.spec.target.clone(),
        r#type: d
            .spec
            .source
            .as_ref()
            .map(|s| kind_to_proto(s.kind()))
            .unwrap_or(proto::DiskType::Unspecified) as i32,
        device: d.spec.device.clone(),
        format: format_name_to_proto(d.spec.format.as_deref()) as i32,
        source: d
            .spec
            .source
            .as_ref()
            .map(DiskSource::display_name)
            .unwrap_or_default(),
        pool: d.pool.clone().unwrap_or_default(),
        volume: d.volume.clone().unwrap_or_default(),
        capacity_bytes: d.capacity,
        allocation_bytes: d.allocation,
        backing_chain_depth: d.spec.backing_depth,
        read_only: d.spec.read_only,
        shareable: d.spec.shareable,
        migration_id: d.migration_id.clone().unwrap_or_default(),
        backing_layers: d
            .layers
            .iter()
            .map(|l| proto::BackingLayer {
                source: l.source.clone(),
                volume: l.volume.clone(),
                capacity_bytes: l.capacity,
                allocation_bytes: l.allocation,
                present_in_pools: l.present_in_pools.clone(),
            })
            .collect(),
        checkpoints: d.checkpoints.clone(),
    }
}

/// Proto disk list from the engine's view.
pub fn disks_to_proto(d: &DomainDisks) -> proto::ListDisksResponse {
    proto::ListDisksResponse {
        domain_name: d.name.clone(),
        domain_uuid: d.uuid.clone(),
        running: d.running,
        disks: d.disks.iter().map(disk_to_proto).collect(),
    }
}

/// Proto volume list of a pool, with each volume's users.
pub fn pool_volumes_to_proto(volumes: &[PoolVolume]) -> proto::ListPoolVolumesResponse {
    proto::ListPoolVolumesResponse {
        volumes: volumes
            .iter()
            .map(|v| proto::PoolVolume {
                name: v.name.clone(),
                source: v.source.clone(),
                format: v
                    .format
                    .map(format_to_proto)
                    .unwrap_or(proto::VolumeFormat::Unspecified) as i32,
                capacity_bytes: v.capacity,
                allocation_bytes: v.allocation,
                users: v
                    .users
                    .iter()
                    .map(|u| proto::VolumeUse {
                        domain: u.domain.clone(),
                        running: u.running,
                        disk: u.disk.clone(),
                        backing: u.backing,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Proto node info.
pub fn node_info_to_proto(
    node_id: &str,
    host: &HostInfo,
    max_concurrent: usize,
) -> proto::NodeInfo {
    proto::NodeInfo {
        node_id: node_id.to_string(),
        hostname: host.hostname.clone(),
        libvirt_version: host.libvirt_version.clone(),
        hypervisor_version: host.hypervisor_version.clone(),
        volmig_version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: Some(proto::Capabilities {
            disk_types: vec![
                proto::DiskType::File as i32,
                proto::DiskType::Block as i32,
                proto::DiskType::Network as i32,
            ],
            formats: vec![
                proto::VolumeFormat::Raw as i32,
                proto::VolumeFormat::Qcow2 as i32,
            ],
            pool_types: ["dir", "fs", "netfs", "logical", "disk", "iscsi", "rbd"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_concurrent_migrations: u32::try_from(max_concurrent).unwrap_or(u32::MAX),
        }),
        libvirt_uri: host.uri.clone(),
    }
}
