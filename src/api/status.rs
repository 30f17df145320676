//! The one place where engine and controller errors become gRPC statuses.

use tonic::{Code, Status};

use crate::api::auth::AuthError;
use crate::api::peer_check::PeerRefused;
use crate::controller::error::{ControllerError, NodeErrorKind};
use crate::controller::registry::RegistryError;
use crate::controller::store::StoreError;
use crate::migration::model::ErrorCode;
use crate::migration::validate::Invalid;
use crate::migration::Error;

/// The gRPC code for an engine error class.
pub fn code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Cancelled => Code::Cancelled,
        ErrorCode::Unknown => Code::Unknown,
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::Unavailable => Code::Unavailable,
    }
}

// The engine's and controller's errors are other crates' types, so they
// become statuses through these functions (`.map_err(status::engine)`); the
// edge's own errors through `From`.

/// The status for an engine error.
pub fn engine(err: Error) -> Status {
    Status::new(code(err.code()), err.to_string())
}

/// The status for a request field that failed its check (INVALID_ARGUMENT).
pub fn invalid(err: Invalid) -> Status {
    engine(Error::from(err))
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        let code = match err {
            AuthError::NoCredentials | AuthError::BadHeader | AuthError::UnknownToken => {
                Code::Unauthenticated
            }
            AuthError::Denied { .. } | AuthError::NoRule { .. } => Code::PermissionDenied,
            // A rate limit, not a verdict on the credentials (which were not
            // checked): the code clients and dashboards read as "back off".
            AuthError::Throttled { .. } => Code::ResourceExhausted,
        };
        Status::new(code, err.to_string())
    }
}

impl From<PeerRefused> for Status {
    fn from(err: PeerRefused) -> Status {
        Status::new(Code::Unauthenticated, err.to_string())
    }
}

/// The status for a refused node registration.
pub fn registry(err: RegistryError) -> Status {
    {
        let code = match err {
            RegistryError::Full(_) => Code::ResourceExhausted,
            RegistryError::Endpoint(_) | RegistryError::BadAllow { .. } => Code::InvalidArgument,
            RegistryError::NotThisNode { .. }
            | RegistryError::HostNotNamed { .. }
            | RegistryError::HostNotAllowed { .. } => Code::PermissionDenied,
        };
        Status::new(code, err.to_string())
    }
}

/// The gRPC code a node answered with.
fn node_code(kind: NodeErrorKind) -> Code {
    match kind {
        NodeErrorKind::Unavailable => Code::Unavailable,
        NodeErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        NodeErrorKind::InvalidArgument => Code::InvalidArgument,
        NodeErrorKind::NotFound => Code::NotFound,
        NodeErrorKind::AlreadyExists => Code::AlreadyExists,
        NodeErrorKind::FailedPrecondition => Code::FailedPrecondition,
        NodeErrorKind::ResourceExhausted => Code::ResourceExhausted,
        NodeErrorKind::PermissionDenied => Code::PermissionDenied,
        NodeErrorKind::Unauthenticated => Code::Unauthenticated,
        NodeErrorKind::OutOfRange => Code::OutOfRange,
        NodeErrorKind::Cancelled => Code::Cancelled,
        NodeErrorKind::Aborted => Code::Aborted,
        NodeErrorKind::Unimplemented => Code::Unimplemented,
        NodeErrorKind::Internal => Code::Internal,
        NodeErrorKind::DataLoss => Code::DataLoss,
        NodeErrorKind::Unknown => Code::Unknown,
    }
}

/// The status for a controller error.
pub fn controller(err: ControllerError) -> Status {
    {
        let code = match &err {
            ControllerError::InvalidArgument { .. } | ControllerError::AmbiguousPool { .. } => {
                Code::InvalidArgument
            }
            ControllerError::UnknownMigration(_)
            | ControllerError::NotFound(_)
            | ControllerError::UnknownPool(_)
            | ControllerError::UnknownDrain(_) => Code::NotFound,
            ControllerError::NothingToDrain { .. } | ControllerError::DrainFinished(_) => {
                Code::FailedPrecondition
            }
            ControllerError::NotRunning { .. } | ControllerError::Precondition(_) => {
                Code::FailedPrecondition
            }
            ControllerError::Exhausted(_) => Code::ResourceExhausted,
            ControllerError::NoReachableNode { .. }
            | ControllerError::NodeNotRegistered { .. }
            | ControllerError::NodeUnreachable { .. }
            | ControllerError::StreamLost(_) => Code::Unavailable,
            ControllerError::Node(e) => node_code(e.kind),
            ControllerError::NodeMisbehaved(_) => Code::Internal,
            ControllerError::Registry(e) => return registry(e.clone()),
            ControllerError::Store(StoreError::Unavailable(_) | StoreError::Contention(_)) => {
                Code::Unavailable
            }
            ControllerError::Store(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::HvError;

    #[test]
    fn codes_follow_the_contract() {
        let cases = [
            (Error::DomainNotFound("g".into()), Code::NotFound),
            (
                Error::InvalidArgument {
                    field: "disk",
                    reason: "x".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::Precondition("not running".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::AlreadyMigrating {
                    domain: "g".into(),
                    disk: "vda".into(),
                    migration_id: "m".into(),
                },
                Code::AlreadyExists,
            ),
            (Error::Exhausted("full".into()), Code::ResourceExhausted),
            (
                Error::Hypervisor {
                    what: "x".into(),
                    source: HvError::Unreachable {
                        uri: "qemu:///system".into(),
                        message: "down".into(),
                    },
                },
                Code::Unavailable,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(engine(err).code(), want);
        }
        // Every engine code has its own gRPC code with the same number.
        for c in [
            ErrorCode::Cancelled,
            ErrorCode::NotFound,
            ErrorCode::Aborted,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(code(c) as i32, c.number());
        }
    }

    #[test]
    fn pool_maintenance_errors_follow_the_contract() {
        let ambiguous = ControllerError::AmbiguousPool {
            name: "images".into(),
            storage_ids: "local:h1:/a, local:h2:/a".into(),
        };
        let status = controller(ambiguous);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("local:h1:/a, local:h2:/a"));
        let refused =
            ControllerError::Precondition("maintenance: pool 'fast' is in maintenance".into());
        assert_eq!(controller(refused).code(), Code::FailedPrecondition);
    }
}
