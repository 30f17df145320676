//! A drain's vocabulary: the request, the plan, each item's state and the
//! report, as plain serializable values (the job in the store is these).

use std::fmt;

use serde::{Deserialize, Serialize};
use volmig_types::host::ImageFormat;

/// A drain's id: `d-` and 32 hex digits, chosen by the controller.
pub type DrainId = String;

/// What to drain and how (issue #22, "Evacuation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainSpec {
    /// The pool to empty: its name on some node, or its storage id.
    pub pool: String,
    /// Where to move the guests: a pool name or storage id (`None`: the
    /// placement chooses among every pool each guest's node reaches).
    #[serde(default)]
    pub destination: Option<String>,
    /// Tags every destination pool must carry.
    #[serde(default)]
    pub required_tags: Vec<String>,
    /// Most items of this drain migrating at once.
    pub max_parallel: u32,
    /// Most items migrating at once on one node.
    pub per_node: u32,
    /// Most items writing to one destination pool at once; 0: only
    /// `max_parallel` and the pool's own `max_in_flight` limit it. (Every
    /// item reads from the one drained pool, so `max_parallel` is the
    /// source pool's limit.)
    #[serde(default)]
    pub per_destination: u32,
    /// Bytes per second shared by all running copies; 0: no budget.
    pub bandwidth: u64,
    /// Plan stopped guests too (they are reported as not movable yet:
    /// offline moves are not supported).
    pub include_stopped: bool,
    /// What becomes of each source volume after its guest moved.
    pub source_policy: SourcePolicy,
    /// Which items go first.
    pub order: OrderPolicy,
    /// How many times an item is tried before it is failed.
    pub max_tries: u32,
    /// Only plan: nothing is recorded or started.
    pub dry_run: bool,
}

impl DrainSpec {
    /// A drain of `pool` with the defaults: 2 items at once, 1 per node,
    /// no budget, running guests only, sources kept, largest first, 3 tries.
    pub fn of(pool: impl Into<String>) -> DrainSpec {
        DrainSpec {
            pool: pool.into(),
            destination: None,
            required_tags: Vec::new(),
            max_parallel: 2,
            per_node: 1,
            per_destination: 0,
            bandwidth: 0,
            include_stopped: false,
            source_policy: SourcePolicy::Keep,
            order: OrderPolicy::LargestFirst,
            max_tries: 3,
            dry_run: false,
        }
    }
}

/// What becomes of a source volume once its guest runs from the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourcePolicy {
    /// Left in place (the report says where).
    Keep,
    /// Deleted after the pivot unless something else still uses it.
    Delete,
}

/// The order in which items are placed and started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderPolicy {
    /// Most allocated bytes first: the big copies start early, so the
    /// drain's end is not held up by one long copy started last; and they
    /// are placed while the destinations have the most room.
    LargestFirst,
    /// Fewest allocated bytes first: many guests leave the pool quickly.
    SmallestFirst,
}

/// One disk of an item and where the plan sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedDisk {
    /// Disk target (`vda`).
    pub target: String,
    /// The drained pool's name on the item's node.
    pub source_pool: String,
    /// Volume name in the drained pool.
    pub volume: String,
    /// Its source path (or `pool/image`).
    pub source: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Allocated bytes.
    pub allocation: u64,
    /// Image format.
    pub format: Option<ImageFormat>,
    /// The destination pool's storage id.
    pub dest_storage_id: String,
    /// The destination pool's name on the item's node.
    pub dest_pool: String,
    /// The placement score that chose it: bytes the pool keeps free after
    /// this disk (the best of the pools every rule accepted).
    pub free_after: u64,
}

/// One guest to move: all its disks on the drained pool, in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedItem {
    /// The node that runs the guest.
    pub node_id: String,
    /// The guest.
    pub domain: String,
    /// Its disks on the pool, each with its destination.
    pub disks: Vec<PlannedDisk>,
    /// The guest is stopped: its disk is copied offline and its persistent
    /// definition switched (the node's `offline_if_stopped`).
    #[serde(default)]
    pub offline: bool,
}

impl PlannedItem {
    /// Allocated bytes of all its disks (what the copy moves).
    pub fn bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.allocation).sum()
    }
}

/// Why something on the pool is not moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unmovable {
    /// No pool takes the disk: the first pool's refusal (`rule: reason`).
    NoPoolFits {
        /// The disk.
        disk: String,
        /// The first refusal.
        refusal: String,
    },
    /// The guest is stopped and the drain did not ask for stopped guests.
    Stopped,
    /// The guest is stopped with several disks on the pool; offline moves
    /// take one disk at a time for now.
    OfflineNotSupported,
    /// A stopped guest defined on several nodes: which definition to
    /// change is not clear.
    DefinedOnSeveralNodes {
        /// The nodes, comma-separated.
        nodes: String,
    },
    /// The volume is only a backing layer of other volumes.
    BackingOnly,
    /// No guest uses the volume.
    NoUser,
    /// A disk that volmig does not move (cdrom, read-only, shareable).
    DiskNotMovable {
        /// The disk.
        disk: String,
    },
    /// The guest's disk is being migrated already.
    Busy {
        /// The disk.
        disk: String,
        /// The migration moving it.
        migration_id: String,
    },
    /// The guest's disks on the pool were gone when its node was asked
    /// again (it changed while the drain was planned).
    Changed,
    /// The node could not be asked.
    NodeUnreachable {
        /// What failed.
        error: String,
    },
}

impl fmt::Display for Unmovable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmovable::NoPoolFits { disk, refusal } => {
                write!(f, "no pool can take disk {disk}: {refusal}")
            }
            Unmovable::Stopped => write!(
                f,
                "the guest is not running; ask for stopped guests to plan it"
            ),
            Unmovable::OfflineNotSupported => write!(
                f,
                "the guest is not running and has several disks on the pool; offline moves of several disks at once are not supported yet: start it to move it live, or move it later"
            ),
            Unmovable::DefinedOnSeveralNodes { nodes } => write!(
                f,
                "the stopped guest is defined on nodes {nodes}; undefine it where it should not be"
            ),
            Unmovable::BackingOnly => write!(
                f,
                "only a backing layer of other volumes; it moves when they are moved with a flattened chain, or stays"
            ),
            Unmovable::NoUser => write!(
                f,
                "not moved: something outside libvirt may own it (no guest uses it)"
            ),
            Unmovable::DiskNotMovable { disk } => write!(
                f,
                "disk {disk} is a cdrom, read-only or shareable; volmig does not move it"
            ),
            Unmovable::Busy { disk, migration_id } => {
                write!(f, "disk {disk} is being migrated by {migration_id}")
            }
            Unmovable::Changed => write!(
                f,
                "its disks on the pool changed while the drain was planned; plan again"
            ),
            Unmovable::NodeUnreachable { error } => {
                write!(f, "its node could not be asked: {error}")
            }
        }
    }
}

/// Something the drain leaves on the pool, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftBehind {
    /// The node it was seen on.
    pub node_id: String,
    /// The guest, empty for a volume no guest uses.
    pub domain: String,
    /// Its volumes on the pool.
    pub volumes: Vec<String>,
    /// Why it stays.
    pub reason: Unmovable,
}

/// A destination as it will be once the plan has run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Storage id.
    pub storage_id: String,
    /// Name (on the first item's node sending to it).
    pub name: String,
    /// Items sending disks to it.
    pub items: u32,
    /// Bytes the copies will allocate there.
    pub bytes: u64,
    /// Used fraction now, 0..=1.
    pub used_before: f64,
    /// Used fraction afterwards, 0..=1.
    pub used_after: f64,
}

/// A drain's plan: what moves where, in order, and what stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainPlan {
    /// The drained pool's storage id.
    pub storage_id: String,
    /// The items to move, in the order they start.
    pub items: Vec<PlannedItem>,
    /// What stays on the pool.
    pub left: Vec<LeftBehind>,
    /// Every destination, as it will be afterwards.
    pub projections: Vec<Projection>,
}

/// One volume of the report: the contract with control planes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Disk target.
    pub disk: String,
    /// The pool it was in.
    pub old_pool: String,
    /// Its source before.
    pub old_path: String,
    /// Its volume name before.
    pub old_volume: String,
    /// The pool it is in now.
    pub new_pool: String,
    /// Its source now.
    pub new_path: String,
    /// Its volume name now.
    pub new_volume: String,
    /// Whether the old volume was deleted.
    pub source_deleted: bool,
}

/// Where one item is. Each state carries only what is true in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ItemState {
    /// Not started (again) yet.
    Pending {
        /// Failed attempts so far.
        tries: u32,
        /// Why the last attempt failed.
        last_error: Option<String>,
    },
    /// Recorded before the node is asked: a resumed drain re-attaches by
    /// `request_id` and never starts the attempt twice.
    Running {
        /// The request id sent to the node.
        request_id: String,
        /// The node's migration, once it answered.
        migration_id: Option<String>,
        /// This attempt, from 1.
        attempt: u32,
        /// When the attempt was recorded, Unix ms.
        started_ms: u64,
    },
    /// Moved.
    Done {
        /// Each volume's old and new place.
        rows: Vec<ReportRow>,
        /// Bytes moved.
        bytes: u64,
        /// How long the last attempt took, ms.
        duration_ms: u64,
        /// Its migration.
        migration_id: String,
    },
    /// Given up after `tries` attempts.
    Failed {
        /// Attempts made.
        tries: u32,
        /// Why the last one failed.
        last_error: String,
    },
    /// Not moved (the drain was cancelled before it started).
    Skipped {
        /// Why.
        reason: String,
    },
}

impl ItemState {
    /// Whether the item will not change any more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ItemState::Done { .. } | ItemState::Failed { .. } | ItemState::Skipped { .. }
        )
    }
}

/// A drain as recorded in the store (`drains/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainJob {
    /// Its id.
    pub id: DrainId,
    /// Who asked for it.
    pub actor: Option<String>,
    /// The request.
    pub spec: DrainSpec,
    /// The plan it follows.
    pub plan: DrainPlan,
    /// Each planned item's state, in the plan's order.
    pub items: Vec<ItemState>,
    /// A cancel was asked: nothing new starts, running items are cancelled.
    pub cancel_requested: bool,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// When every item reached a final state, Unix ms.
    pub finished_ms: Option<u64>,
}

impl DrainJob {
    /// Whether every item reached a final state.
    pub fn is_finished(&self) -> bool {
        self.finished_ms.is_some()
    }
}
