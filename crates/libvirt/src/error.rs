//! Classifies libvirt errors by their error number (never by message text).

use virt::error::{Error, ErrorDomain, ErrorNumber};
use volmig_engine::hypervisor::HvError;

/// Whether the error means the connection itself is gone (libvirtd restarted or
/// died), so the call should be retried on a fresh connection.
pub fn is_connection_lost(err: &Error) -> bool {
    // A dead daemon shows up as a system error ("Cannot write data: Broken pipe")
    // raised by libvirt's RPC layer, so the error's domain counts as much as its code.
    matches!(
        err.code().unwrap_or(ErrorNumber::InternalError),
        ErrorNumber::NoConnect | ErrorNumber::InvalidConn | ErrorNumber::Rpc
    ) || err.domain().unwrap_or(ErrorDomain::None) == ErrorDomain::Rpc
}

/// Whether the error says the storage volume does not exist.
pub fn is_no_volume(err: &Error) -> bool {
    matches!(
        err.code(),
        virt::enumutil::Enum::Known(ErrorNumber::NoStorageVolume)
    )
}

/// Whether the error says the domain, pool or volume no longer exists.
pub fn is_vanished(err: &Error) -> bool {
    matches!(
        err.code(),
        virt::enumutil::Enum::Known(
            ErrorNumber::NoDomain | ErrorNumber::NoStoragePool | ErrorNumber::NoStorageVolume
        )
    )
}

/// Maps a libvirt error from `op` to an [`HvError`]; `subject` names the object the
/// call was about, for NOT_FOUND-style errors.
pub fn classify(op: &'static str, subject: &str, uri: &str, err: Error) -> HvError {
    let message = err.message().to_string();
    match err.code() {
        virt::enumutil::Enum::Known(code) => match code {
            ErrorNumber::NoDomain => HvError::NoDomain(subject.to_string()),
            ErrorNumber::NoStoragePool => HvError::NoPool(subject.to_string()),
            ErrorNumber::NoStorageVolume => HvError::NoVolume(subject.to_string()),
            ErrorNumber::StorageVolExist => HvError::VolumeExists(subject.to_string()),
            ErrorNumber::NoConnect
            | ErrorNumber::InvalidConn
            | ErrorNumber::Rpc
            | ErrorNumber::AuthFailed => HvError::Unreachable {
                uri: uri.to_string(),
                message,
            },
            ErrorNumber::OperationInvalid | ErrorNumber::BlockCopyActive => {
                HvError::InvalidState(message)
            }
            ErrorNumber::InvalidArg => HvError::InvalidArgument(message),
            ErrorNumber::NoSupport | ErrorNumber::OperationUnsupported => {
                HvError::Unsupported(message)
            }
            other => HvError::Failed {
                op,
                code: virt::enumutil::Enum::<ErrorNumber, virt::sys::virErrorNumber>::from(other)
                    .to_raw() as i32,
                message,
            },
        },
        virt::enumutil::Enum::Unknown(raw) => HvError::Failed {
            op,
            code: raw as i32,
            message,
        },
    }
}
