//! Conversions between proto messages and engine types.
//!
//! One module a family of messages: [`request_messages`] (MigrateVolume and
//! list requests, and the requests records carry), [`event_messages`] (events
//! and records) and [`host_messages`] (pools, disks, node info); this file
//! holds the enums they all use: phases, image formats and disk kinds.

mod event_messages;
mod host_messages;
mod request_messages;

pub use event_messages::{event_to_proto, group_to_proto, record_to_proto};
pub use host_messages::{disks_to_proto, node_info_to_proto, pool_to_proto, pool_volumes_to_proto};
pub use request_messages::{
    filter_from_proto, group_request_to_proto, request_from_proto, request_to_proto,
    requested_from_proto, Requested,
};

use crate::hypervisor::{DiskKind, ImageFormat};
use crate::migration::model::Phase;
use crate::migration::Error;
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

pub(crate) fn kind_to_proto(k: DiskKind) -> proto::DiskType {
    match k {
        DiskKind::File => proto::DiskType::File,
        DiskKind::Block => proto::DiskType::Block,
        DiskKind::Network => proto::DiskType::Network,
    }
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

fn invalid(field: &'static str, reason: &str) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.to_string(),
    }
}
