//! How a hypervisor host describes domains, disks, pools and volumes: the plain
//! data the engine's `Hypervisor` port returns and the controller places by.

use std::fmt;

pub use crate::ownership::{Deletion, FileId, VolumeIdentity};

/// The default libvirt URI for a node.
pub const DEFAULT_URI: &str = "qemu:///system";

/// Where Ceph's tools keep keyrings; volmig reads a cephx key there when
/// libvirt keeps the pool's secret private.
pub const DEFAULT_CEPH_KEYRING_DIR: &str = "/etc/ceph";

/// How a disk's source is addressed in the domain XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DiskKind {
    /// `<disk type='file'>`: a path on a file system.
    File,
    /// `<disk type='block'>`: a block device path.
    Block,
    /// `<disk type='network'>`: a network protocol (rbd).
    Network,
}

/// On-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ImageFormat {
    /// Raw bytes.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
}

impl ImageFormat {
    /// The name libvirt and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses a libvirt/QEMU format name; `None` for formats volmig does not handle.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Ceph monitor address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CephHost {
    /// Host name or address.
    pub name: String,
    /// Port; `None` leaves libvirt's default.
    pub port: Option<u16>,
}

/// cephx credentials as libvirt references them: a user and a libvirt secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CephAuth {
    /// cephx user name without the `client.` prefix.
    pub username: String,
    /// UUID of the libvirt secret holding the key.
    pub secret_uuid: String,
}

/// Where a disk's data lives, in the terms of the domain XML.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskSource {
    /// A file path.
    File {
        /// Absolute path.
        path: String,
    },
    /// A block device path, optionally presenting only the first `slice_size` bytes.
    Block {
        /// Absolute device path.
        path: String,
        /// Size of a storage slice at offset 0, when the device is larger than the image.
        slice_size: Option<u64>,
    },
    /// An RBD image.
    Rbd {
        /// Ceph pool name.
        pool: String,
        /// Image name.
        image: String,
        /// Monitors.
        hosts: Vec<CephHost>,
        /// cephx credentials; `None` when the cluster runs without auth.
        auth: Option<CephAuth>,
    },
}

impl DiskSource {
    /// The disk type this source needs.
    pub fn kind(&self) -> DiskKind {
        match self {
            DiskSource::File { .. } => DiskKind::File,
            DiskSource::Block { .. } => DiskKind::Block,
            DiskSource::Rbd { .. } => DiskKind::Network,
        }
    }

    /// Path for file/block sources, `pool/image` for rbd: how operators name a source.
    pub fn display_name(&self) -> String {
        match self {
            DiskSource::File { path } | DiskSource::Block { path, .. } => path.clone(),
            DiskSource::Rbd { pool, image, .. } => format!("{pool}/{image}"),
        }
    }
}

/// One `<disk>` of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Target device, e.g. `vda`.
    pub target: String,
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    /// Driver format as written in the XML (`raw`, `qcow2`, ...); `None` when absent.
    pub format: Option<String>,
    /// The source; `None` for an empty drive (e.g. an ejected cdrom) or an unsupported type.
    pub source: Option<DiskSource>,
    /// Number of images below the top one that libvirt knows about.
    pub backing_depth: u32,
    /// The images below the top one as the definition shows them, nearest
    /// first (the live definition lists the whole chain; a persistent one
    /// often none, libvirt probes it at start).
    pub backing: Vec<BackingLayer>,
    /// `<readonly/>` present.
    pub read_only: bool,
    /// `<shareable/>` present.
    pub shareable: bool,
    /// A block job mirror is attached (`<mirror>`), with its `ready` attribute.
    pub mirror: Option<MirrorState>,
}

/// One read-only image of a disk's backing chain, as a `<backingStore>` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackingLayer {
    /// Where the image is.
    pub source: DiskSource,
    /// `<format type=…>`; `None` when absent.
    pub format: Option<String>,
}

/// The `<mirror>` element libvirt shows on a disk during a block copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorState {
    /// The mirror's destination.
    pub source: Option<DiskSource>,
    /// `ready='yes'` (or `pivot`/`abort` in progress): the job has converged.
    pub ready: bool,
}

/// A running or defined domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainState {
    /// Name.
    pub name: String,
    /// UUID string.
    pub uuid: String,
    /// Running (or paused) right now.
    pub active: bool,
    /// Has a persistent definition.
    pub persistent: bool,
    /// Number of libvirt snapshots.
    pub snapshots: u32,
    /// Number of libvirt checkpoints (incremental-backup metadata).
    pub checkpoints: u32,
}

/// A libvirt checkpoint: the point an incremental backup starts from, kept by
/// libvirt as metadata plus one persistent dirty bitmap per covered disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The checkpoint's name.
    pub name: String,
    /// Its `<disk>` entries.
    pub disks: Vec<CheckpointDisk>,
}

/// How a checkpoint covers one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDisk {
    /// Target device, e.g. `vda`.
    pub target: String,
    /// The dirty bitmap that records writes since the checkpoint; `None` when
    /// the checkpoint does not cover this disk (`checkpoint='no'`).
    pub bitmap: Option<String>,
    /// Bytes written since the checkpoint, as libvirt computes them from the
    /// bitmap chain; `None` when libvirt found no valid bitmap for it.
    pub dirty_bytes: Option<u64>,
}

impl Checkpoint {
    /// This checkpoint's entry for `target`, when it keeps a bitmap there.
    pub fn bitmap_on(&self, target: &str) -> Option<&CheckpointDisk> {
        self.disks
            .iter()
            .find(|d| d.target == target && d.bitmap.is_some())
    }
}

/// State of a storage pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRunState {
    /// Defined but not started.
    Inactive,
    /// Being built.
    Building,
    /// Usable.
    Running,
    /// Running with problems.
    Degraded,
    /// Not reachable.
    Inaccessible,
}

/// A libvirt storage pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// Name.
    pub name: String,
    /// UUID string.
    pub uuid: String,
    /// libvirt pool type (`dir`, `fs`, `netfs`, `logical`, `disk`, `iscsi`, `rbd`, ...).
    pub pool_type: String,
    /// Run state.
    pub state: PoolRunState,
    /// Bytes.
    pub capacity: u64,
    /// Bytes.
    pub allocation: u64,
    /// Bytes.
    pub available: u64,
    /// Sum of the virtual sizes of the pool's volumes, bytes (0 for inactive pools).
    pub provisioned: u64,
    /// Target path (`<target><path>`), empty for rbd.
    pub target_path: String,
    /// Source host names (netfs, iscsi, rbd monitors).
    pub source_hosts: Vec<CephHost>,
    /// Source directory (netfs export), device paths (disk/fs) or name (rbd pool, VG).
    pub source_dir: String,
    /// Source device paths.
    pub source_devices: Vec<String>,
    /// Source name (rbd pool, volume group).
    pub source_name: String,
    /// cephx auth of an rbd pool.
    pub auth: Option<CephAuth>,
    /// What names this pool's storage across hosts: two pools with one storage id
    /// are the same storage (the controller merges them), whatever their names.
    pub storage_id: String,
    /// Whether other hosts can reach the same storage.
    pub shared: bool,
}

impl PoolSpec {
    /// How a disk on this pool's volumes is addressed; `None` for pool types volmig
    /// cannot migrate to.
    pub fn disk_kind(&self) -> Option<DiskKind> {
        pool_disk_kind(&self.pool_type)
    }
}

/// How a disk on volumes of a libvirt pool type is addressed; `None` for the
/// types volmig cannot migrate to. The node's validation and the controller's
/// placement both decide by this one table (the types `GetInfo` advertises).
pub fn pool_disk_kind(pool_type: &str) -> Option<DiskKind> {
    match pool_type {
        "dir" | "fs" | "netfs" => Some(DiskKind::File),
        "logical" | "disk" | "iscsi" => Some(DiskKind::Block),
        "rbd" => Some(DiskKind::Network),
        _ => None,
    }
}

/// Bytes a copy of a disk allocates in a pool of `kind`: block volumes are
/// thick (the whole virtual size), files and RBD images stay as sparse as the
/// source (its allocation).
pub fn space_needed(kind: DiskKind, virtual_size: u64, allocation: u64) -> u64 {
    match kind {
        DiskKind::Block => virtual_size,
        DiskKind::File | DiskKind::Network => allocation,
    }
}

/// Bytes a flattening copy of a chained disk writes at most: the copy merges
/// every layer into one image, so no more than the layers' allocations
/// together, and no more than the virtual size. The node's room check and the
/// controller's placement both use it, so they never disagree on a pool.
pub fn flattened_allocation(
    top: u64,
    backing: impl IntoIterator<Item = u64>,
    virtual_size: u64,
) -> u64 {
    backing
        .into_iter()
        .fold(top, u64::saturating_add)
        .min(virtual_size)
}

/// A storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Pool name.
    pub pool: String,
    /// Volume name.
    pub name: String,
    /// Path (file/block) or `pool/image` (rbd).
    pub path: String,
    /// libvirt's key for the volume (a path for files and devices, `pool/image` for rbd).
    pub key: String,
    /// Device and inode of a file volume.
    pub file_id: Option<FileId>,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes used on the storage.
    pub allocation: u64,
    /// Format libvirt reports (`raw`, `qcow2`, ...).
    pub format: Option<String>,
}

impl VolumeSpec {
    /// What identifies this volume (see [`VolumeIdentity`]).
    pub fn identity(&self) -> VolumeIdentity {
        VolumeIdentity {
            pool: self.pool.clone(),
            name: self.name.clone(),
            key: self.key.clone(),
            path: self.path.clone(),
            file_id: self.file_id,
        }
    }
}

/// Something other than the migrated disk that uses a volume, so that deleting
/// the volume would break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeUser {
    /// A disk of a domain (running or only defined) names it, as its source or
    /// anywhere in its backing chain.
    Domain {
        /// Domain name.
        domain: String,
        /// Domain UUID.
        uuid: String,
        /// Disk target.
        target: String,
        /// In the live (running) or the persistent definition.
        live: bool,
        /// How: `source`, `backing file`, with `read-only`/`shareable` noted.
        how: String,
    },
    /// A volume whose backing file it is.
    Backing {
        /// Pool of the overlay.
        pool: String,
        /// Overlay volume name.
        volume: String,
    },
}

impl fmt::Display for VolumeUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeUser::Domain {
                domain,
                target,
                live,
                how,
                ..
            } => write!(
                f,
                "domain '{domain}' ({} definition) uses it as {how} of {target}",
                if *live { "running" } else { "persistent" }
            ),
            VolumeUser::Backing { pool, volume } => {
                write!(f, "volume {pool}/{volume} has it as its backing file")
            }
        }
    }
}

/// A domain and the disks of its live definition when it runs, of its
/// persistent one when it is only defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisksSpec {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Running, rather than only defined.
    pub running: bool,
    /// The disks of that definition.
    pub disks: Vec<DiskSpec>,
}

/// A volume to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVolume {
    /// Volume name (validated by the caller).
    pub name: String,
    /// Exact virtual size, bytes.
    pub capacity: u64,
    /// Format; file pools honour it, block and rbd pools are raw.
    pub format: ImageFormat,
    /// A qcow2 volume's backing image (absolute path, format); file pools only.
    pub backing: Option<(String, ImageFormat)>,
}

/// What `qemu-img info` says of one image (not its chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format of the image itself.
    pub format: String,
    /// Virtual size, bytes.
    pub virtual_size: u64,
    /// Bytes the image file spends on its storage.
    pub actual_size: u64,
    /// Its backing image, resolved to an absolute path, if any.
    pub backing: Option<String>,
    /// Format recorded for the backing image, if any.
    pub backing_format: Option<String>,
}

/// How a libvirt snapshot captured one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotDiskMode {
    /// A new overlay file was started (`snapshot='external'`).
    External,
    /// Inside the qcow2 image (`snapshot='internal'`).
    Internal,
    /// Not captured (`snapshot='no'`).
    No,
}

/// One libvirt snapshot, as far as a disk migration cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// Snapshot name.
    pub name: String,
    /// libvirt's `<state>`: `disk-snapshot` for disk-only, a run state when
    /// memory was saved too.
    pub state: String,
    /// Memory saved, internally or to a file.
    pub has_memory: bool,
    /// Each disk the snapshot lists, by target, with how it was captured.
    pub disks: Vec<(String, SnapshotDiskMode)>,
    /// Every image path the snapshot's metadata names (its overlays, and the
    /// disks and backing chains of the domain definitions it stores).
    pub images: Vec<String>,
}

/// A block job as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJob {
    /// Bytes copied (QEMU's cursor).
    pub cur: u64,
    /// Bytes to copy; grows while the guest writes.
    pub end: u64,
    /// Bandwidth limit in bytes/s, 0 for none.
    pub bandwidth: u64,
    /// The job is a copy job (as opposed to pull/commit).
    pub is_copy: bool,
}

/// Options of a block copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOptions {
    /// Bytes per second, 0 = unlimited.
    pub bandwidth: u64,
    /// Mirror guest writes synchronously (guarantees convergence).
    pub synchronous_writes: bool,
    /// Copy only the top image, keeping the backing chain.
    pub shallow: bool,
    /// Bytes the mirror moves per request; 0 = QEMU's default (16 MiB). A
    /// destination that stores whole objects (RBD) stays thin only when this
    /// is no larger than its object.
    pub buf_size: u64,
    /// Dirty-bitmap granularity in bytes (a power of two); 0 = QEMU's default.
    pub granularity: u32,
}

/// Which definition of a domain to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    /// What runs now.
    Live,
    /// What the domain boots from next time.
    Persistent,
}

/// Versions and identity of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Host name as libvirt reports it.
    pub hostname: String,
    /// libvirt library version, `major.minor.micro`.
    pub libvirt_version: String,
    /// Hypervisor (QEMU) version.
    pub hypervisor_version: String,
    /// Connection URI.
    pub uri: String,
}
