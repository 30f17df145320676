//! The controller's vocabulary: what it knows of pools, disks, requests,
//! events and the migrations it relays, as plain values.
//!
//! A node's event and the caller's request carry many fields the controller
//! never decides on (progress, results, copy options). The controller relays
//! those unchanged: [`NodeEvent::wire`] and [`Order::wire`] hold the message as
//! it arrived, opaque here, and only the fields the controller acts on are
//! read out into named fields by the edge (`volmig::api`). That keeps the
//! relay lossless without the domain knowing the wire format.

use serde::{Deserialize, Serialize};

use volmig_types::host::{DiskKind, ImageFormat, PoolRunState};
use volmig_types::phase::Phase;

/// A storage pool as a node reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolInfo {
    /// Name on that node.
    pub name: String,
    /// libvirt UUID.
    pub uuid: String,
    /// libvirt pool type (`dir`, `rbd`, ...).
    pub pool_type: String,
    /// Run state; `None` when the node did not say.
    pub state: Option<PoolRunState>,
    /// Bytes.
    pub capacity: u64,
    /// Bytes in use.
    pub allocation: u64,
    /// Bytes free for new volumes.
    pub available: u64,
    /// Kind of disk its volumes make.
    pub disk_kind: Option<DiskKind>,
    /// Target path.
    pub target_path: String,
    /// Identity of the storage across nodes.
    pub storage_id: String,
    /// Whether other hosts can reach the same storage.
    pub shared: bool,
    /// Sum of the virtual sizes of its volumes.
    pub provisioned: u64,
}

impl PoolInfo {
    /// Whether the pool is running.
    pub fn running(&self) -> bool {
        self.state == Some(PoolRunState::Running)
    }
}

/// A volume of a pool and what uses it on one node: what a drain
/// enumerates, so it finds every guest with a disk on the pool (running or
/// only defined) and the volumes no guest uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolVolumeInfo {
    /// Volume name in the pool.
    pub name: String,
    /// The source a disk on it names: a path, or `pool/image` for rbd.
    pub source: String,
    /// Its format; `None` when libvirt did not say.
    pub format: Option<ImageFormat>,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes allocated.
    pub allocation: u64,
    /// The domains of that node whose disks use it.
    pub users: Vec<VolumeUseInfo>,
}

/// One disk of a domain that uses a volume.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeUseInfo {
    /// Domain name.
    pub domain: String,
    /// Whether the domain runs (else it is only defined).
    pub running: bool,
    /// The disk's target (`vda`).
    pub disk: String,
    /// The volume is in the disk's backing chain, not its top image.
    pub backing: bool,
}

/// A disk of a domain as its node reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiskInfo {
    /// Target (`vda`).
    pub target: String,
    /// Kind of source.
    pub kind: Option<DiskKind>,
    /// Device (`disk`, `cdrom`).
    pub device: String,
    /// Image format.
    pub format: Option<ImageFormat>,
    /// Source path or name.
    pub source: String,
    /// The pool holding the source, if any.
    pub pool: String,
    /// The volume name in that pool.
    pub volume: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Allocated bytes.
    pub allocation: u64,
    /// Backing chain depth.
    pub backing_chain_depth: u32,
    /// Read-only disk.
    pub read_only: bool,
    /// Shareable disk.
    pub shareable: bool,
    /// The migration moving it now, if any.
    pub migration_id: String,
    /// Checkpoints whose dirty bitmaps live in the disk.
    pub checkpoints: Vec<String>,
    /// The read-only layers below the top image, nearest first.
    pub backing_layers: Vec<BackingLayerInfo>,
}

/// One read-only layer of a disk's backing chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackingLayerInfo {
    /// Path or name of the image.
    pub source: String,
    /// Its volume name, when a pool holds it.
    pub volume: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Allocated bytes.
    pub allocation: u64,
    /// Pools on the domain's node that already hold this layer.
    pub present_in_pools: Vec<String>,
}

impl DiskInfo {
    /// Whether the node would move this disk with "all disks" (it skips the others).
    pub fn movable(&self) -> bool {
        self.device == "disk" && !self.source.is_empty() && !self.read_only && !self.shareable
    }
}

/// A domain's disks as its node reports them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Running (rather than only defined).
    pub running: bool,
    /// Its disks.
    pub disks: Vec<DiskInfo>,
}

/// One disk of a multi-disk order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskOrder {
    /// Target or source of the disk.
    pub disk: String,
    /// Pool asked for (empty: the controller chooses).
    pub destination_pool: String,
    /// Destination volume name (empty: the node's default).
    pub destination_volume: String,
    /// Format asked for.
    pub destination_format: Option<ImageFormat>,
    /// Users of the source on other nodes, found by the controller.
    pub source_users_elsewhere: Vec<String>,
}

/// A caller's migration request: the fields the controller decides on, and
/// the request as it came ([`Order::wire`]) for everything else.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Order {
    /// Domain name.
    pub domain: String,
    /// Disk (single-disk requests).
    pub disk: String,
    /// Pool asked for, or the pool the controller chose.
    pub destination_pool: String,
    /// Format asked for.
    pub destination_format: Option<ImageFormat>,
    /// Tags the destination must carry.
    pub required_tags: Vec<String>,
    /// Whether the source is deleted after the pivot.
    pub delete_source: bool,
    /// Users of the source on other nodes (single-disk requests).
    pub source_users_elsewhere: Vec<String>,
    /// Disks of a multi-disk request.
    pub disks: Vec<DiskOrder>,
    /// Every movable disk.
    pub all_disks: bool,
    /// All disks onto one pool.
    pub same_pool: bool,
    /// Chain policy SHALLOW: the backing layers move too (placement counts them).
    #[serde(default)]
    pub shallow: bool,
    /// The request id sent to the node, for orders the controller builds
    /// itself (a drain's items): the node attaches a repeated request to
    /// the migration it already started. `None`: the caller's, in `wire`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Copy bandwidth in bytes/s set on the order the controller builds
    /// (a drain's share of its budget). `None`: the caller's, in `wire`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// The drain this migration is an item of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_id: Option<String>,
    /// A guest that is defined but not running is moved offline (the
    /// node's `offline_if_stopped`); a running one is moved live.
    #[serde(default)]
    pub offline_if_stopped: bool,
    /// The request as the caller sent it, opaque to the controller.
    #[serde(with = "hex_bytes")]
    pub wire: Vec<u8>,
}

impl Order {
    /// Whether it names several disks (or all of them).
    pub fn is_group(&self) -> bool {
        !self.disks.is_empty() || self.all_disks
    }
}

/// One event of a migration, as its node sent it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The migration.
    pub migration_id: String,
    /// The node that stamped it.
    pub node_id: String,
    /// Phase; `None` when the node sent one this controller does not know.
    pub phase: Option<Phase>,
    /// When the node stamped it, Unix ms.
    pub timestamp_ms: u64,
    /// When the migration started, Unix ms.
    pub started_at_ms: u64,
    /// The domain.
    pub domain: String,
    /// Bytes copied so far (all disks).
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to copy as of this event (all disks).
    #[serde(default)]
    pub bytes_total: u64,
    /// On a failed or cancelled event: what went wrong, for an operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// On a completed event: where each disk went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<DiskResult>,
    /// The event as the node sent it, opaque to the controller.
    #[serde(with = "hex_bytes")]
    pub wire: Vec<u8>,
}

/// Where one disk of a completed migration went, as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskResult {
    /// Disk target.
    pub disk: String,
    /// The disk's source as the domain now sees it.
    pub destination_source: String,
    /// The pool it is in now.
    pub destination_pool: String,
    /// Its volume name there.
    pub destination_volume: String,
    /// The pool it was in.
    pub source_pool: String,
    /// Its volume name there.
    pub source_volume: String,
    /// The source it had.
    pub previous_source: String,
    /// Whether the old volume was deleted.
    pub source_deleted: bool,
}

impl NodeEvent {
    /// Whether the migration has ended with this event.
    pub fn is_terminal(&self) -> bool {
        self.phase.is_some_and(Phase::is_terminal)
    }
}

/// One migration as the controller remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationEntry {
    /// The migration id the node chose.
    pub migration_id: String,
    /// The node that runs it.
    pub node_id: String,
    /// The request as sent to the node (with the controller's choices).
    pub order: Order,
    /// The latest event recorded.
    pub latest: NodeEvent,
    /// Pool the disk was on.
    pub source_pool: String,
    /// Source the disk had.
    pub previous_source: String,
    /// Storage id of the destination pool, for in-flight counts.
    pub dest_storage_id: String,
    /// A multi-disk migration: the storage ids of its other disks' pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_storage_ids: Vec<String>,
}

impl MigrationEntry {
    /// Whether the migration has ended.
    pub fn is_terminal(&self) -> bool {
        self.latest.is_terminal()
    }

    /// The storage ids the migration writes to.
    pub fn storage_ids(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.dest_storage_id).chain(&self.more_storage_ids)
    }

    /// Whether `event` may be recorded for this migration: same migration,
    /// stamped by the node that runs it.
    pub fn owns(&self, event: &NodeEvent) -> bool {
        event.migration_id == self.migration_id && event.node_id == self.node_id
    }
}

/// A node's own record of a migration it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// Its latest event.
    pub latest: Option<NodeEvent>,
    /// The record as the node sent it, opaque to the controller.
    pub wire: Vec<u8>,
}

/// Which migrations `list` returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationFilter {
    /// Run by this node.
    pub node_id: Option<String>,
    /// Of this domain.
    pub domain: Option<String>,
    /// Latest phase in this set (empty: any).
    pub phases: Vec<Phase>,
    /// Started at or after (Unix ms).
    pub started_after_ms: Option<u64>,
    /// Started before (Unix ms).
    pub started_before_ms: Option<u64>,
    /// Not finished.
    pub active_only: bool,
}

impl MigrationFilter {
    /// Whether `entry` passes.
    pub fn matches(&self, entry: &MigrationEntry) -> bool {
        let latest = &entry.latest;
        self.node_id.as_ref().is_none_or(|n| &entry.node_id == n)
            && self.domain.as_ref().is_none_or(|d| &latest.domain == d)
            && (self.phases.is_empty() || latest.phase.is_some_and(|p| self.phases.contains(&p)))
            && self
                .started_after_ms
                .is_none_or(|t| latest.started_at_ms >= t)
            && self
                .started_before_ms
                .is_none_or(|t| latest.started_at_ms < t)
            && (!self.active_only || !entry.is_terminal())
    }
}

/// Opaque bytes as hex in the stores' JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::unhex(&text).ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex; `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
