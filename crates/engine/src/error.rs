//! Why a migration cannot start or did not finish, with the class of each error.

use crate::hypervisor::HvError;
use crate::model::{ErrorCode, Phase};
use volmig_types::validate::Invalid;

/// Engine errors. Messages say what was wrong and what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A malformed name, path or value in the request.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Domain not found.
    #[error(
        "domain '{0}' not found on this node (check the name or UUID with `virsh list --all`)"
    )]
    DomainNotFound(String),
    /// Disk not found in the domain.
    #[error("domain '{domain}' has no disk '{disk}' (targets: {known})")]
    DiskNotFound {
        /// Domain.
        domain: String,
        /// Disk asked for.
        disk: String,
        /// The targets it has.
        known: String,
    },
    /// Storage pool not found.
    #[error("storage pool '{0}' not found on this node (see `volmig pools`)")]
    PoolNotFound(String),
    /// Storage pool exists but is not active (its volumes cannot be listed).
    #[error("storage pool '{0}' is not active on this node; start it with `virsh pool-start {0}`")]
    PoolInactive(String),
    /// Migration id unknown.
    #[error("no migration with id '{0}' on this node")]
    MigrationNotFound(String),
    /// A migration id that no migration can have (too long, odd
    /// characters): malformed, so INVALID_ARGUMENT; unlike
    /// [`Error::MigrationNotFound`] it does not repeat the caller's string.
    #[error("invalid migration_id: {bytes} bytes that no migration id can be (ids are 1-128 characters of letters, digits, '.', '_', ':', '-')")]
    NoSuchMigrationId {
        /// Length of what was given.
        bytes: usize,
    },
    /// A precondition of the host or request does not hold.
    #[error("{0}")]
    Precondition(String),
    /// The disk is already being migrated.
    #[error("disk {disk} of domain '{domain}' is already being migrated by {migration_id}; watch it with `volmig watch {migration_id}`")]
    AlreadyMigrating {
        /// Domain.
        domain: String,
        /// Disk target.
        disk: String,
        /// The running migration.
        migration_id: String,
    },
    /// The destination volume exists already.
    #[error("volume '{volume}' already exists in pool '{pool}'; name another with destination_volume (--to-volume) or delete it")]
    DestinationExists {
        /// Pool.
        pool: String,
        /// Volume.
        volume: String,
    },
    /// Another migration reserved the destination name.
    #[error("volume '{volume}' in pool '{pool}' is the destination of migration {migration_id}; name another destination_volume (--to-volume) or wait for it to end")]
    DestinationReserved {
        /// Pool.
        pool: String,
        /// Volume.
        volume: String,
        /// The migration that holds the name.
        migration_id: String,
    },
    /// The request id was used for a different request.
    #[error(
        "request_id '{0}' was already used for a different migration request; use a new request_id"
    )]
    RequestIdReused(String),
    /// Not enough space or migration slots.
    #[error("{0}")]
    Exhausted(String),
    /// libvirt or the host cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The operation is not possible in the migration's current phase.
    #[error("migration {id} is {phase}: {reason}")]
    WrongPhase {
        /// Migration id.
        id: String,
        /// Its phase.
        phase: &'static str,
        /// What that means for the request.
        reason: &'static str,
    },
    /// A hypervisor call failed.
    #[error("{what}: {source}")]
    Hypervisor {
        /// What volmig was doing.
        what: String,
        /// The failure.
        #[source]
        source: HvError,
    },
    /// An image of the disk being migrated (its top or a backing layer)
    /// could not be read: missing, unreadable to the node, or corrupt.
    #[error("cannot read the source image {path}: {source}; check that it exists, that the node may read it and that `qemu-img info -U {path}` succeeds")]
    SourceUnreadable {
        /// The image.
        path: String,
        /// The failure.
        #[source]
        source: HvError,
    },
    /// A stopped guest was started while its disk was being moved offline,
    /// before its definition was switched: the move was abandoned and the
    /// guest runs on its source, so a live move is what can follow.
    #[error(
        "domain '{0}' was started during its offline move; it stays on its source; move it live"
    )]
    StartedDuringOfflineMove(String),
    /// Cancelled on request.
    #[error("cancelled by request")]
    Cancelled,
    /// The request's timeout expired before the pivot.
    #[error("timed out after {0} s before the pivot; raise the timeout or the bandwidth")]
    TimedOut(u64),
    /// The node restarted and the migration could not continue.
    #[error("{0}")]
    Interrupted(String),
    /// Another disk of the same group failed before the pivots began, so this
    /// one was rolled back with it.
    #[error(
        "rolled back because disk {disk} of the same migration failed before any pivot: {reason}"
    )]
    GroupAborted {
        /// The disk that failed.
        disk: String,
        /// Its error.
        reason: String,
    },
    /// The copy did not converge and the request's policy is to fail.
    /// FAILED_PRECONDITION rather than ABORTED: retrying the same request
    /// fails the same way until the guest writes less or the copy may go
    /// faster (and a group reports this, not ABORTED, as its cause).
    #[error("the copy of {disk} does not converge: over {window_secs} s the guest dirtied {dirty_rate} bytes/s while {copy_rate} bytes/s were copied; {remedy}")]
    NoConvergence {
        /// Disk target.
        disk: String,
        /// The window, seconds.
        window_secs: u64,
        /// Bytes/s dirtied.
        dirty_rate: u64,
        /// Bytes/s copied.
        copy_rate: u64,
        /// What to do.
        remedy: String,
    },
    /// The node's own state (journal) could not be written.
    #[error("node state: {0}")]
    Journal(String),
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        match invalid {
            Invalid::Field { field, reason } => Error::InvalidArgument { field, reason },
            Invalid::MigrationId { bytes } => Error::NoSuchMigrationId { bytes },
        }
    }
}

impl Error {
    /// Wraps a hypervisor error with what volmig was doing.
    pub fn hv(what: impl Into<String>) -> impl FnOnce(HvError) -> Error {
        let what = what.into();
        move |source| Error::Hypervisor { what, source }
    }

    /// Wraps a failure to read the source image at `path`.
    pub fn unreadable(path: impl Into<String>) -> impl FnOnce(HvError) -> Error {
        let path = path.into();
        move |source| Error::SourceUnreadable { path, source }
    }

    /// The error's class.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument { .. } | Error::NoSuchMigrationId { .. } => {
                ErrorCode::InvalidArgument
            }
            Error::DomainNotFound(_)
            | Error::DiskNotFound { .. }
            | Error::PoolNotFound(_)
            | Error::MigrationNotFound(_) => ErrorCode::NotFound,
            Error::PoolInactive(_) => ErrorCode::FailedPrecondition,
            Error::Precondition(_) | Error::WrongPhase { .. } | Error::NoConvergence { .. } => {
                ErrorCode::FailedPrecondition
            }
            Error::AlreadyMigrating { .. }
            | Error::RequestIdReused(_)
            | Error::DestinationExists { .. }
            | Error::DestinationReserved { .. } => ErrorCode::AlreadyExists,
            Error::Exhausted(_) => ErrorCode::ResourceExhausted,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::TimedOut(_) => ErrorCode::DeadlineExceeded,
            Error::Journal(_) => ErrorCode::Internal,
            // Not INTERNAL, since volmig is not at fault, and not UNAVAILABLE,
            // since a missing, unreadable or corrupt image stays so until
            // someone fixes it: a retry would fail the same way.
            Error::SourceUnreadable { source, .. } => match source {
                HvError::Unreachable { .. } => ErrorCode::Unavailable,
                _ => ErrorCode::FailedPrecondition,
            },
            // ABORTED: a retry (as a live move) is expected to succeed.
            Error::Interrupted(_)
            | Error::GroupAborted { .. }
            | Error::StartedDuringOfflineMove(_) => ErrorCode::Aborted,
            Error::Hypervisor { source, .. } => match source {
                HvError::NoDomain(_)
                | HvError::NoDisk { .. }
                | HvError::NoPool(_)
                | HvError::NoVolume(_) => ErrorCode::NotFound,
                HvError::PoolInactive(_) => ErrorCode::FailedPrecondition,
                HvError::VolumeExists(_) => ErrorCode::AlreadyExists,
                HvError::Unreachable { .. } => ErrorCode::Unavailable,
                HvError::InvalidState(_) => ErrorCode::FailedPrecondition,
                HvError::InvalidArgument(_) => ErrorCode::InvalidArgument,
                HvError::NoSpace(_) => ErrorCode::ResourceExhausted,
                HvError::Unsupported(_) => ErrorCode::FailedPrecondition,
                HvError::BadXml(_) | HvError::Failed { .. } | HvError::Tool { .. } => {
                    ErrorCode::Internal
                }
            },
        }
    }

    /// The phase a terminal event reports for this error.
    pub fn terminal_phase(&self) -> Phase {
        match self {
            Error::Cancelled | Error::TimedOut(_) => Phase::Cancelled,
            _ => Phase::Failed,
        }
    }
}
