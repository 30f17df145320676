//! The one place where engine and controller errors become gRPC statuses.

use tonic::{Code, Status};

use crate::api::auth::AuthError;
use crate::controller::registry::RegistryError;
use crate::migration::model::ErrorCode;
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

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(code(err.code()), err.to_string())
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        let code = match err {
            AuthError::NoCredentials | AuthError::BadHeader | AuthError::UnknownToken => {
                Code::Unauthenticated
            }
            AuthError::Denied { .. } | AuthError::NoRule { .. } => Code::PermissionDenied,
        };
        Status::new(code, err.to_string())
    }
}

impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Status {
        let code = match err {
            RegistryError::Full(_) => Code::ResourceExhausted,
            RegistryError::Endpoint(_) => Code::InvalidArgument,
            RegistryError::NotThisNode { .. } => Code::PermissionDenied,
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
            assert_eq!(Status::from(err).code(), want);
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
}
