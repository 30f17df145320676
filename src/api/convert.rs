//! Conversions between proto messages and engine types.

use std::time::Duration;

use crate::hypervisor::{DiskKind, DiskSource, HostInfo, ImageFormat, PoolRunState, PoolSpec};
use crate::migration::journal::Record;
use crate::migration::model::{
    ChainPolicy, ConvergenceWarning, DiskChoice, DiskSelection, Event, Failure, GroupRequest,
    MigrationRequest, MigrationResult, NoConvergencePolicy, Options, Phase, Progress, VerifyLevel,
};
use crate::migration::{DiskView, DomainDisks, Error, GroupView, ListFilter};
use crate::proto;

/// Proto phase for an engine phase.
pub fn phase_to_proto(p: Phase) -> proto::Phase {
    match p {
        Phase::Accepted => proto::Phase::Accepted,
        Phase::Validating => proto::Phase::Validating,
        Phase::PreparingDestination => proto::Phase::PreparingDestination,
        Phase::Copying => proto::Phase::Copying,
        Phase::Synchronized => proto::Phase::Synchronized,
        Phase::Pivoting => proto::Phase::Pivoting,
        Phase::Verifying => proto::Phase::Verifying,
        Phase::CleaningUp => proto::Phase::CleaningUp,
        Phase::Completed => proto::Phase::Completed,
        Phase::Failed => proto::Phase::Failed,
        Phase::Cancelled => proto::Phase::Cancelled,
    }
}

pub(crate) fn phase_from_proto(p: proto::Phase) -> Option<Phase> {
    Some(match p {
        proto::Phase::Unspecified => return None,
        proto::Phase::Accepted => Phase::Accepted,
        proto::Phase::Validating => Phase::Validating,
        proto::Phase::PreparingDestination => Phase::PreparingDestination,
        proto::Phase::Copying => Phase::Copying,
        proto::Phase::Synchronized => Phase::Synchronized,
        proto::Phase::Pivoting => Phase::Pivoting,
        proto::Phase::Verifying => Phase::Verifying,
        proto::Phase::CleaningUp => Phase::CleaningUp,
        proto::Phase::Completed => Phase::Completed,
        proto::Phase::Failed => Phase::Failed,
        proto::Phase::Cancelled => Phase::Cancelled,
    })
}

pub(crate) fn format_to_proto(f: ImageFormat) -> proto::VolumeFormat {
    match f {
        ImageFormat::Raw => proto::VolumeFormat::Raw,
        ImageFormat::Qcow2 => proto::VolumeFormat::Qcow2,
    }
}

fn format_name_to_proto(f: Option<&str>) -> proto::VolumeFormat {
    f.and_then(ImageFormat::parse)
        .map(format_to_proto)
        .unwrap_or(proto::VolumeFormat::Unspecified)
}

pub(crate) fn kind_to_proto(k: DiskKind) -> proto::DiskType {
    match k {
        DiskKind::File => proto::DiskType::File,
        DiskKind::Block => proto::DiskType::Block,
        DiskKind::Network => proto::DiskType::Network,
    }
}

fn invalid(field: &'static str, reason: &str) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.to_string(),
    }
}

/// What a MigrateVolume request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// One disk (`disk`).
    Disk(MigrationRequest),
    /// Several disks as one migration (`disks` or `all_disks`).
    Group(GroupRequest),
}

pub(crate) fn format_from_proto(
    value: i32,
    field: &'static str,
) -> Result<Option<ImageFormat>, Error> {
    match proto::VolumeFormat::try_from(value).map_err(|_| invalid(field, "unknown value"))? {
        proto::VolumeFormat::Unspecified => Ok(None),
        proto::VolumeFormat::Raw => Ok(Some(ImageFormat::Raw)),
        proto::VolumeFormat::Qcow2 => Ok(Some(ImageFormat::Qcow2)),
    }
}

fn options_from_proto(options: proto::MigrationOptions) -> Result<Options, Error> {
    let copy_mode = proto::CopyMode::try_from(options.copy_mode)
        .map_err(|_| invalid("options.copy_mode", "unknown value"))?;
    let chain = match proto::ChainPolicy::try_from(options.chain_policy)
        .map_err(|_| invalid("options.chain_policy", "unknown value"))?
    {
        proto::ChainPolicy::Shallow => ChainPolicy::Shallow,
        _ => ChainPolicy::Flatten,
    };
    let delete_source = proto::SourcePolicy::try_from(options.source_policy)
        .map_err(|_| invalid("options.source_policy", "unknown value"))?
        == proto::SourcePolicy::Delete;
    let verify = match proto::VerifyLevel::try_from(options.verify)
        .map_err(|_| invalid("options.verify", "unknown value"))?
    {
        proto::VerifyLevel::Strict => VerifyLevel::Strict,
        _ => VerifyLevel::Xml,
    };
    let on_no_convergence = match proto::NoConvergencePolicy::try_from(options.on_no_convergence)
        .map_err(|_| invalid("options.on_no_convergence", "unknown value"))?
    {
        proto::NoConvergencePolicy::Unspecified | proto::NoConvergencePolicy::Warn => {
            NoConvergencePolicy::Warn
        }
        proto::NoConvergencePolicy::Fail => NoConvergencePolicy::Fail,
        proto::NoConvergencePolicy::SwitchToSyncWrites => NoConvergencePolicy::SwitchToSyncWrites,
    };
    Ok(Options {
        bandwidth: options.bandwidth_bytes_per_sec,
        synchronous_writes: copy_mode == proto::CopyMode::SynchronousWrites,
        chain,
        delete_source,
        timeout: (options.timeout_seconds > 0)
            .then(|| Duration::from_secs(options.timeout_seconds)),
        verify,
        source_users_elsewhere: options.source_users_elsewhere,
        on_no_convergence,
        convergence_window: (options.convergence_window_seconds > 0)
            .then(|| Duration::from_secs(options.convergence_window_seconds)),
    })
}

/// Engine request from a proto request; rejects unknown enum values and
/// requests that name disks in more than one way.
pub fn requested_from_proto(req: proto::MigrateVolumeRequest) -> Result<Requested, Error> {
    let multi = !req.disks.is_empty() || req.all_disks;
    if !multi {
        if req.max_parallel_copies > 0 || req.same_pool {
            return Err(invalid(
                "max_parallel_copies",
                "max_parallel_copies and same_pool apply to multi-disk requests (disks or all_disks) only",
            ));
        }
        return request_from_proto(req).map(Requested::Disk);
    }
    if !req.disk.is_empty() {
        return Err(invalid(
            "disk",
            "name one disk in `disk`, or several in `disks`, or ask for `all_disks`: not more than one of these",
        ));
    }
    if !req.destination_volume.is_empty() {
        return Err(invalid(
            "destination_volume",
            "a multi-disk request names destination volumes per disk (disks[].destination_volume)",
        ));
    }
    let destination_format = format_from_proto(req.destination_format, "destination_format")?;
    let choices = req
        .disks
        .into_iter()
        .map(|d| {
            Ok(DiskChoice {
                disk: d.disk,
                destination_pool: Some(d.destination_pool).filter(|p| !p.is_empty()),
                destination_volume: Some(d.destination_volume).filter(|v| !v.is_empty()),
                destination_format: format_from_proto(
                    d.destination_format,
                    "disks.destination_format",
                )?,
                source_users_elsewhere: d.source_users_elsewhere,
            })
        })
        .collect::<Result<_, Error>>()?;
    let disks = if req.all_disks {
        DiskSelection::All(choices)
    } else {
        DiskSelection::Listed(choices)
    };
    Ok(Requested::Group(GroupRequest {
        request_id: req.request_id,
        domain: req.domain,
        disks,
        destination_pool: req.destination_pool,
        destination_format,
        options: options_from_proto(req.options.unwrap_or_default())?,
        max_parallel_copies: req.max_parallel_copies,
    }))
}

/// Engine request from a single-disk proto request; rejects unknown enum values.
pub fn request_from_proto(req: proto::MigrateVolumeRequest) -> Result<MigrationRequest, Error> {
    let destination_format = format_from_proto(req.destination_format, "destination_format")?;
    Ok(MigrationRequest {
        request_id: req.request_id,
        domain: req.domain,
        disk: req.disk,
        destination_pool: req.destination_pool,
        destination_volume: Some(req.destination_volume).filter(|v| !v.is_empty()),
        destination_format,
        options: options_from_proto(req.options.unwrap_or_default())?,
    })
}

fn format_option_to_proto(f: Option<ImageFormat>) -> i32 {
    f.map(format_to_proto)
        .unwrap_or(proto::VolumeFormat::Unspecified) as i32
}

fn options_to_proto(o: &Options) -> proto::MigrationOptions {
    proto::MigrationOptions {
        bandwidth_bytes_per_sec: o.bandwidth,
        copy_mode: if o.synchronous_writes {
            proto::CopyMode::SynchronousWrites
        } else {
            proto::CopyMode::Background
        } as i32,
        chain_policy: match o.chain {
            ChainPolicy::Flatten => proto::ChainPolicy::Flatten,
            ChainPolicy::Shallow => proto::ChainPolicy::Shallow,
        } as i32,
        source_policy: if o.delete_source {
            proto::SourcePolicy::Delete
        } else {
            proto::SourcePolicy::Keep
        } as i32,
        timeout_seconds: o.timeout.map(|t| t.as_secs()).unwrap_or(0),
        verify: match o.verify {
            VerifyLevel::Xml => proto::VerifyLevel::Xml,
            VerifyLevel::Strict => proto::VerifyLevel::Strict,
        } as i32,
        source_users_elsewhere: o.source_users_elsewhere.clone(),
        on_no_convergence: match o.on_no_convergence {
            NoConvergencePolicy::Warn => proto::NoConvergencePolicy::Warn,
            NoConvergencePolicy::Fail => proto::NoConvergencePolicy::Fail,
            NoConvergencePolicy::SwitchToSyncWrites => {
                proto::NoConvergencePolicy::SwitchToSyncWrites
            }
        } as i32,
        convergence_window_seconds: o.convergence_window.map(|w| w.as_secs()).unwrap_or(0),
    }
}

/// Proto request from an engine request (for records).
pub fn request_to_proto(req: &MigrationRequest) -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        request_id: req.request_id.clone(),
        domain: req.domain.clone(),
        disk: req.disk.clone(),
        destination_pool: req.destination_pool.clone(),
        destination_volume: req.destination_volume.clone().unwrap_or_default(),
        destination_format: format_option_to_proto(req.destination_format),
        options: Some(options_to_proto(&req.options)),
        ..Default::default()
    }
}

/// Proto request from a multi-disk engine request (for records).
pub fn group_request_to_proto(req: &GroupRequest) -> proto::MigrateVolumeRequest {
    let (choices, all_disks) = match &req.disks {
        DiskSelection::All(choices) => (choices, true),
        DiskSelection::Listed(choices) => (choices, false),
    };
    let disks = choices
        .iter()
        .map(|c| proto::DiskDestination {
            disk: c.disk.clone(),
            destination_pool: c.destination_pool.clone().unwrap_or_default(),
            destination_volume: c.destination_volume.clone().unwrap_or_default(),
            destination_format: format_option_to_proto(c.destination_format),
            source_users_elsewhere: c.source_users_elsewhere.clone(),
        })
        .collect();
    proto::MigrateVolumeRequest {
        request_id: req.request_id.clone(),
        domain: req.domain.clone(),
        destination_pool: req.destination_pool.clone(),
        destination_format: format_option_to_proto(req.destination_format),
        options: Some(options_to_proto(&req.options)),
        disks,
        all_disks,
        max_parallel_copies: req.max_parallel_copies,
        ..Default::default()
    }
}

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

/// Engine list filter from a proto request.
pub fn filter_from_proto(req: &proto::ListMigrationsRequest) -> ListFilter {
    ListFilter {
        domain: Some(req.domain.clone()).filter(|d| !d.is_empty()),
        phases: req
            .phases
            .iter()
            .filter_map(|p| proto::Phase::try_from(*p).ok())
            .filter_map(phase_from_proto)
            .collect(),
        started_after_ms: Some(req.started_after_unix_ms).filter(|t| *t > 0),
        started_before_ms: Some(req.started_before_unix_ms).filter(|t| *t > 0),
        active_only: req.active_only,
    }
}

/// Proto pool from a pool spec; `hostname` scopes local storage ids.
pub fn pool_to_proto(p: &PoolSpec, hostname: &str) -> proto::Pool {
    let storage_id = match p.pool_type.as_str() {
        "netfs" => format!(
            "netfs:{}:{}",
            p.source_hosts
                .first()
                .map(|h| h.name.as_str())
                .unwrap_or(""),
            p.source_dir
        ),
        "rbd" => format!(
            "rbd:{}/{}",
            p.source_hosts
                .iter()
                .map(|h| match h.port {
                    Some(port) => format!("{}:{port}", h.name),
                    None => h.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(","),
            p.source_name
        ),
        "iscsi" | "iscsi-direct" => format!(
            "iscsi:{}:{}",
            p.source_hosts
                .first()
                .map(|h| h.name.as_str())
                .unwrap_or(""),
            p.source_devices.join(",")
        ),
        _ => format!("local:{hostname}:{}", p.target_path),
    };
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
        storage_id,
        shared: p.shared(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let proto_req = proto::MigrateVolumeRequest {
            request_id: "r1".into(),
            domain: "g".into(),
            disk: "vda".into(),
            destination_pool: "b".into(),
            destination_volume: "v".into(),
            destination_format: proto::VolumeFormat::Qcow2 as i32,
            options: Some(proto::MigrationOptions {
                bandwidth_bytes_per_sec: 1 << 20,
                copy_mode: proto::CopyMode::SynchronousWrites as i32,
                chain_policy: proto::ChainPolicy::Flatten as i32,
                source_policy: proto::SourcePolicy::Delete as i32,
                timeout_seconds: 30,
                verify: proto::VerifyLevel::Strict as i32,
                source_users_elsewhere: vec!["domain 'x' on node n2".into()],
                on_no_convergence: proto::NoConvergencePolicy::SwitchToSyncWrites as i32,
                convergence_window_seconds: 10,
            }),
            ..Default::default()
        };
        let req = request_from_proto(proto_req.clone()).expect("convert");
        assert!(req.options.synchronous_writes && req.options.delete_source);
        assert_eq!(request_to_proto(&req), proto_req);
    }

    #[test]
    fn unknown_enum_values_are_invalid_arguments() {
        let req = proto::MigrateVolumeRequest {
            destination_format: 99,
            ..Default::default()
        };
        assert!(matches!(
            request_from_proto(req),
            Err(Error::InvalidArgument {
                field: "destination_format",
                ..
            })
        ));
    }
}
