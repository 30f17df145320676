//! Requests: MigrateVolume to engine requests (single-disk or group) and
//! back for records, and the list filter.

use std::time::Duration;

use super::{format_from_proto, format_to_proto, invalid, phase_from_proto};
use crate::hypervisor::ImageFormat;
use crate::migration::model::{
    ChainPolicy, DiskChoice, DiskSelection, GroupRequest, MigrationRequest, NoConvergencePolicy,
    Options, VerifyLevel,
};
use crate::migration::{Error, ListFilter};
use crate::proto;

/// What a MigrateVolume request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// One disk (`disk`).
    Disk(MigrationRequest),
    /// Several disks as one migration (`disks` or `all_disks`).
    Group(GroupRequest),
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
        offline_if_stopped: options.offline_if_stopped,
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
        offline_if_stopped: o.offline_if_stopped,
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
                offline_if_stopped: true,
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
