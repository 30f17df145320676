//! The migration's vocabulary: requests, phases, events and records.
//!
//! Everything here is serialisable because the journal stores it, and free of
//! gRPC types because the engine must not depend on the transport.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::hypervisor::{DiskSource, ImageFormat};
pub use volmig_types::phase::{now_ms, Phase};

/// What happens to a backing chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ChainPolicy {
    /// Copy the whole chain into one image.
    #[default]
    Flatten,
    /// Copy the top image only, keeping the backing file.
    Shallow,
}

/// How much is verified before COMPLETED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VerifyLevel {
    /// Live and persistent XML.
    #[default]
    Xml,
    /// XML plus sizes of the destination volume and the running block device.
    Strict,
}

/// What a migration does when its copy does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NoConvergencePolicy {
    /// Warn once and keep copying.
    #[default]
    Warn,
    /// Warn, then fail and roll back.
    Fail,
    /// Warn, then restart the copy in synchronous-writes mode.
    SwitchToSyncWrites,
}

/// The convergence window when a request names none.
pub const DEFAULT_CONVERGENCE_WINDOW: Duration = Duration::from_secs(60);

/// Tuning of one migration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Options {
    /// Bytes per second, 0 = unlimited.
    pub bandwidth: u64,
    /// Mirror guest writes synchronously.
    pub synchronous_writes: bool,
    /// Backing chain handling.
    pub chain: ChainPolicy,
    /// Delete the source volume after verification.
    pub delete_source: bool,
    /// Cancel if not pivoting after this long.
    pub timeout: Option<Duration>,
    /// Verification level.
    pub verify: VerifyLevel,
    /// Users of the source on other hosts (found by the controller); any keeps
    /// the source.
    #[serde(default)]
    pub source_users_elsewhere: Vec<String>,
    /// What happens when the copy does not converge.
    #[serde(default)]
    pub on_no_convergence: NoConvergencePolicy,
    /// How long the bytes left to copy may fail to shrink before the copy
    /// counts as not converging; `None`: [`DEFAULT_CONVERGENCE_WINDOW`].
    #[serde(default)]
    pub convergence_window: Option<Duration>,
    /// A domain that is defined but not running has its disk copied offline
    /// (instead of the request being refused).
    #[serde(default)]
    pub offline_if_stopped: bool,
}

impl Options {
    /// The convergence window in force.
    pub fn convergence_window(&self) -> Duration {
        self.convergence_window
            .unwrap_or(DEFAULT_CONVERGENCE_WINDOW)
    }
}

/// A copy found not to converge: the guest dirtied at least as much as was
/// copied over the convergence window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergenceWarning {
    /// Bytes/s newly dirtied (the growth of the copy's end), over the window.
    pub dirty_rate: u64,
    /// Bytes/s copied (the growth of the copy's cursor), over the window.
    pub copy_rate: u64,
    /// Bytes left to copy when it was found.
    pub remaining: u64,
    /// What the operator can do.
    pub remedy: String,
}

/// A request to move one disk, already checked for well-formed names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRequest {
    /// Idempotency key; empty when the caller gave none.
    pub request_id: String,
    /// Domain name or UUID.
    pub domain: String,
    /// Disk target or source path.
    pub disk: String,
    /// Destination pool name.
    pub destination_pool: String,
    /// Destination volume name; `None` keeps the source's.
    pub destination_volume: Option<String>,
    /// Destination format; `None` picks the natural one for the pool.
    pub destination_format: Option<ImageFormat>,
    /// Options.
    pub options: Options,
}

/// Copy progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes copied.
    pub bytes_done: u64,
    /// Bytes to copy.
    pub bytes_total: u64,
    /// Bytes per second over the last few seconds.
    pub rate: u64,
    /// Seconds to go, 0 when unknown.
    pub eta_seconds: u64,
}

/// The outcome of a successful migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationResult {
    /// The disk's new source.
    pub destination: DiskSource,
    /// Destination pool.
    pub destination_pool: String,
    /// Destination volume.
    pub destination_volume: String,
    /// Destination format.
    pub destination_format: ImageFormat,
    /// Source pool, empty when the source was in none.
    pub source_pool: String,
    /// Source volume, empty when the source was in no pool.
    pub source_volume: String,
    /// The previous source, as operators name it.
    pub previous_source: String,
    /// The source volume was deleted.
    pub source_deleted: bool,
    /// volmig had to rewrite the persistent definition.
    pub persistent_repaired: bool,
    /// Why a source that was to be deleted was kept (something else uses it).
    #[serde(default)]
    pub source_kept_reason: Option<String>,
    /// Bytes the source spends on its storage (0: unknown).
    #[serde(default)]
    pub source_allocated: u64,
    /// Bytes the destination spends on its storage (0: unknown).
    #[serde(default)]
    pub destination_allocated: u64,
}

/// Error classes, numbered as google.rpc.Code so the edge can map them 1:1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 1
    Cancelled,
    /// 2
    Unknown,
    /// 3
    InvalidArgument,
    /// 4
    DeadlineExceeded,
    /// 5
    NotFound,
    /// 6
    AlreadyExists,
    /// 8
    ResourceExhausted,
    /// 9
    FailedPrecondition,
    /// 10
    Aborted,
    /// 12
    Unimplemented,
    /// 13
    Internal,
    /// 14
    Unavailable,
}

impl ErrorCode {
    /// The google.rpc.Code number.
    pub fn number(self) -> i32 {
        match self {
            ErrorCode::Cancelled => 1,
            ErrorCode::Unknown => 2,
            ErrorCode::InvalidArgument => 3,
            ErrorCode::DeadlineExceeded => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::AlreadyExists => 6,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::Aborted => 10,
            ErrorCode::Unimplemented => 12,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
        }
    }
}

/// Why a migration ended without success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Error class.
    pub code: ErrorCode,
    /// Operator-readable message.
    pub message: String,
    /// Phase it happened in.
    pub phase: Phase,
    /// Where the disk is now.
    pub disk_state: String,
}

/// One step of a migration, as every watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Migration id.
    pub migration_id: String,
    /// Phase.
    pub phase: Phase,
    /// Progress (meaningful from COPYING on).
    pub progress: Progress,
    /// Unix ms.
    pub timestamp_ms: u64,
    /// Unix ms.
    pub started_ms: u64,
    /// Human-readable line.
    pub message: String,
    /// On COMPLETED.
    pub result: Option<MigrationResult>,
    /// On FAILED/CANCELLED.
    pub failure: Option<Failure>,
    /// Node id.
    pub node_id: String,
    /// Domain name.
    pub domain: String,
    /// Disk target (a group's targets joined by ",").
    pub disk: String,
    /// A group's disks, each as its own migration last reported it.
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    /// The disks a group leaves alone, and why.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// A group's pivot window, ms: from the first pivot issued to the last one
    /// ended (0 until every pivot has ended).
    #[serde(default)]
    pub pivot_window_ms: u64,
    /// Set while copying once the copy was found not to converge (and on the
    /// failure that policy `Fail` makes of it); a group's: its first disk's.
    #[serde(default)]
    pub convergence: Option<ConvergenceWarning>,
    /// The trace this migration belongs to (W3C trace id, hex), from the
    /// first event on; empty when no trace is exported.
    #[serde(default)]
    pub trace_id: String,
}

/// One disk of a group, as of a group event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// Disk target.
    pub disk: String,
    /// The disk's own migration id.
    pub migration_id: String,
    /// Its latest phase.
    pub phase: Phase,
    /// Its progress.
    pub progress: Progress,
    /// Its latest message.
    pub message: String,
    /// On COMPLETED.
    pub result: Option<MigrationResult>,
    /// On FAILED/CANCELLED.
    pub failure: Option<Failure>,
    /// When its pivot was issued and ended (Unix ms).
    pub pivot: Option<(u64, u64)>,
    /// Its copy's convergence warning, if any.
    #[serde(default)]
    pub convergence: Option<ConvergenceWarning>,
}

/// A disk a group leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Disk target.
    pub disk: String,
    /// Why, e.g. "cdrom".
    pub reason: String,
}

/// Where one disk of a group goes; `None` fields take the group's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChoice {
    /// Disk target or source path.
    pub disk: String,
    /// Destination pool.
    pub destination_pool: Option<String>,
    /// Destination volume name.
    pub destination_volume: Option<String>,
    /// Destination format.
    pub destination_format: Option<ImageFormat>,
    /// Users of its source on other hosts (any keeps the source).
    #[serde(default)]
    pub source_users_elsewhere: Vec<String>,
}

/// Which disks a group request moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSelection {
    /// These disks, in this order (the order of their pivots).
    Listed(Vec<DiskChoice>),
    /// Every eligible disk, in the domain's order; these entries give some of
    /// them their own destination.
    All(Vec<DiskChoice>),
}

/// A request to move several disks of one domain as one migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRequest {
    /// Idempotency key; empty when the caller gave none.
    pub request_id: String,
    /// Domain name or UUID.
    pub domain: String,
    /// The disks.
    pub disks: DiskSelection,
    /// Destination pool of disks that name none.
    pub destination_pool: String,
    /// Destination format of disks that name none.
    pub destination_format: Option<ImageFormat>,
    /// Options, for every disk.
    pub options: Options,
    /// Most copies at once (0: all).
    pub max_parallel_copies: u32,
}
