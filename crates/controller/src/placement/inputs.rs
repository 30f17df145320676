//! What placement judges: the pools the inventory offers, the policy each
//! carries, and the disk to place.

use volmig_types::host::{flattened_allocation, ImageFormat};

pub use crate::maintenance::PoolMaintenance;

/// One pool as the controller's inventory sees it. A pool that several hosts
/// share appears once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCandidate {
    /// Identity of the storage across hosts; unique in the inventory.
    pub storage_id: String,
    /// Pool name, as known on the domain's node when that node reaches it.
    pub name: String,
    /// libvirt pool type: `dir`, `fs`, `netfs`, `logical`, `disk`, `iscsi`, `rbd`, ...
    pub pool_type: String,
    /// Whether the pool is running.
    pub active: bool,
    /// Bytes; 0 means the pool does not report it.
    pub capacity: u64,
    /// Bytes in use.
    pub allocation: u64,
    /// Bytes free for new volumes.
    pub available: u64,
    /// Sum of the virtual sizes of the pool's volumes, in bytes.
    pub provisioned: u64,
    /// Ids of the nodes that reach the pool.
    pub reachable_from: Vec<String>,
    /// Operator-assigned tags (`ssd`, `zone-a`, ...).
    pub tags: Vec<String>,
    /// Migrations currently writing to the pool.
    pub in_flight: u32,
    /// The operator's maintenance flag when it is on: the pool is never chosen.
    pub maintenance: Option<PoolMaintenance>,
}

/// The limits an operator set for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Highest fraction of the capacity that may be used after a placement.
    pub used_threshold: f64,
    /// Highest ratio of provisioned virtual bytes to capacity; `None` does not
    /// limit thin provisioning.
    pub overprovision_factor: Option<f64>,
    /// Most migrations that may write to the pool at once; `None` is unlimited.
    pub max_in_flight: Option<u32>,
}

impl PoolPolicy {
    /// The used threshold when none is configured: 85 %.
    pub const DEFAULT_USED_THRESHOLD: f64 = 0.85;
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            used_threshold: Self::DEFAULT_USED_THRESHOLD,
            overprovision_factor: None,
            max_in_flight: None,
        }
    }
}

/// The disk to place, as the node running its domain reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskToPlace {
    /// The node running the domain.
    pub node_id: String,
    /// `storage_id` of the pool the disk is on now.
    pub source_storage_id: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes the source image (the top of a chain) occupies.
    pub allocation: u64,
    /// The format the request asks for; `None` takes the pool's natural format.
    pub requested_format: Option<ImageFormat>,
    /// Tags the destination pool must all carry.
    pub required_tags: Vec<String>,
    /// Chain policy SHALLOW: the disk's backing layers, which the destination
    /// needs too unless it already holds them. Empty when the chain is
    /// flattened or there is none.
    pub shallow_layers: Vec<LayerToPlace>,
    /// Chain policy FLATTEN: the allocations of the backing layers the copy
    /// merges into one image. Empty under SHALLOW or when there is no chain.
    pub flattened_layers: Vec<u64>,
    /// Checkpoints whose dirty bitmaps live in the disk (qcow2 only can hold them).
    pub checkpoints: Vec<String>,
}

impl DiskToPlace {
    /// Bytes of data the copy holds: the top image's allocation, or when the
    /// chain is flattened, every layer's merged and capped at the virtual size
    /// (the node checks the same, so placement never picks a pool it refuses).
    pub fn copy_allocation(&self) -> u64 {
        // Without a chain the node counts the allocation uncapped (qcow2
        // metadata can make it exceed the virtual size), and so does this.
        if self.flattened_layers.is_empty() {
            return self.allocation;
        }
        flattened_allocation(
            self.allocation,
            self.flattened_layers.iter().copied(),
            self.virtual_size,
        )
    }
}

/// One backing layer of a disk migrated SHALLOW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerToPlace {
    /// Bytes its copy would spend.
    pub allocation: u64,
    /// Pools (by name on the domain's node) that already hold it.
    pub present_in: Vec<String>,
}
