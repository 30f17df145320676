//! What the migration engine needs from a hypervisor host: the [`Hypervisor`]
//! port. The engine is written against it so it stays free of libvirt types;
//! `volmig_libvirt::LibvirtHost` is the real implementation. Methods block
//! (libvirt calls do): async callers run them on `tokio::task::spawn_blocking`.
//! The data it speaks is the shared vocabulary in `volmig_types::host`.

pub use volmig_types::host::*;

/// Errors from the hypervisor, classified by what the caller can do about them.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HvError {
    /// No such domain.
    #[error("domain '{0}' not found")]
    NoDomain(String),
    /// No such disk in the domain.
    #[error("domain '{domain}' has no disk '{disk}'")]
    NoDisk {
        /// Domain name.
        domain: String,
        /// Disk target or path asked for.
        disk: String,
    },
    /// No such storage pool.
    #[error("storage pool '{0}' not found")]
    NoPool(String),
    /// The storage pool exists but is not active, so it lists no volumes.
    #[error("storage pool '{0}' is not active")]
    PoolInactive(String),
    /// No such volume.
    #[error("storage volume '{0}' not found")]
    NoVolume(String),
    /// A volume of that name exists already.
    #[error("storage volume '{0}' already exists")]
    VolumeExists(String),
    /// libvirtd cannot be reached or the connection broke.
    #[error("libvirt at {uri} is unreachable: {message}")]
    Unreachable {
        /// Connection URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The object is not in a state that allows the operation (e.g. domain not running,
    /// no block job, a block job already running).
    #[error("{0}")]
    InvalidState(String),
    /// An argument libvirt cannot take (e.g. a NUL byte in a name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Out of space.
    #[error("no space: {0}")]
    NoSpace(String),
    /// The operation is not supported by this host or driver.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// libvirt returned XML volmig could not understand.
    #[error("cannot parse libvirt XML: {0}")]
    BadXml(String),
    /// Any other libvirt failure.
    #[error("libvirt {op} failed: {message} (libvirt error code {code})")]
    Failed {
        /// The libvirt call.
        op: &'static str,
        /// libvirt error number.
        code: i32,
        /// libvirt's message.
        message: String,
    },
    /// A tool the host runs beside libvirt (`qemu-img`, `cp`) failed.
    #[error("{command} failed ({status}): {message}")]
    Tool {
        /// The command, e.g. "qemu-img compare".
        command: &'static str,
        /// How it ended, e.g. "exit status 1".
        status: String,
        /// What it said on stderr.
        message: String,
    },
}

/// One offline copy of an image into a volume volmig created
/// ([`Hypervisor::convert_image`]).
#[derive(Debug, Clone, Copy)]
pub struct ImageCopy<'a> {
    /// The image's path.
    pub source: &'a str,
    /// Its format.
    pub source_format: ImageFormat,
    /// The volume to fill.
    pub dest: &'a VolumeIdentity,
    /// The format to write.
    pub dest_format: ImageFormat,
    /// At most this many bytes/s; 0: unlimited.
    pub bandwidth: u64,
}

/// Told of every call a [`Hypervisor`] implementation makes to its host
/// (metrics). Called inline on the blocking call path: must be cheap.
pub trait CallObserver: Send + Sync + 'static {
    /// One call, by its stable name (e.g. `virDomainGetBlockJobInfo`), how long
    /// it took (reconnects included) and whether it failed.
    fn call(&self, call: &'static str, elapsed: std::time::Duration, failed: bool);
}

/// Observes nothing.
impl CallObserver for () {
    fn call(&self, _: &'static str, _: std::time::Duration, _: bool) {}
}

/// The host operations the migration engine uses.
pub trait Hypervisor: Send + Sync + 'static {
    /// Versions and host name.
    fn host_info(&self) -> Result<HostInfo, HvError>;
    /// Looks a domain up by name or UUID.
    fn domain(&self, name_or_uuid: &str) -> Result<DomainState, HvError>;
    /// The domain XML.
    fn domain_xml(&self, domain: &str, which: Definition) -> Result<String, HvError>;
    /// The disks of a definition.
    fn disks(&self, domain: &str, which: Definition) -> Result<Vec<DiskSpec>, HvError>;
    /// All storage pools.
    fn pools(&self) -> Result<Vec<PoolSpec>, HvError>;
    /// One storage pool, refreshed.
    fn pool(&self, name: &str) -> Result<PoolSpec, HvError>;
    /// The volume at a path (file/block) or `pool/image` (rbd), if a pool knows it.
    fn volume_by_path(&self, path: &str) -> Result<Option<VolumeSpec>, HvError>;
    /// A volume by pool and name.
    fn volume(&self, pool: &str, name: &str) -> Result<VolumeSpec, HvError>;
    /// Names of a pool's volumes (after a refresh).
    fn volume_names(&self, pool: &str) -> Result<Vec<String>, HvError>;
    /// The volumes of an active pool (after a refresh), from one listing;
    /// `PoolInactive` when the pool is not active. Reads the details of at
    /// most `limit + 1` volumes, so a caller sees that a pool holds more than
    /// `limit` without the host paying for every one.
    fn pool_volumes(&self, pool: &str, limit: usize) -> Result<Vec<VolumeSpec>, HvError>;
    /// Every domain of this host, running or only defined, listed once, with
    /// the disks of its live definition when it runs and of its persistent
    /// one otherwise. A domain that goes away meanwhile is left out.
    fn all_domain_disks(&self) -> Result<Vec<DomainDisksSpec>, HvError>;
    /// Creates a volume through the storage pool API.
    fn create_volume(&self, pool: &str, volume: &NewVolume) -> Result<VolumeSpec, HvError>;
    /// Deletes the volume `expected` names, only while it is still that volume
    /// (same key, path and, for files, device and inode).
    fn delete_volume_if_same(&self, expected: &VolumeIdentity) -> Result<Deletion, HvError>;
    /// Everything on this host that uses the volume at `path` (file/block path or
    /// `pool/image`): disks of any domain, running or only defined, as source or
    /// backing file, and volumes in any active pool backed by it.
    fn volume_users(&self, path: &str) -> Result<Vec<VolumeUser>, HvError>;
    /// Starts a block copy of `disk` to `dest` (which must already exist);
    /// `backing` is the chain below `dest` (nearest first) for a shallow copy,
    /// empty for a flattening one.
    fn block_copy(
        &self,
        domain: &str,
        disk: &str,
        dest: &DiskSource,
        format: ImageFormat,
        backing: &[BackingLayer],
        options: CopyOptions,
    ) -> Result<(), HvError>;
    /// The block job on `disk`, if any.
    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<BlockJob>, HvError>;
    /// Ends the block job: switch to the copy (`pivot`) or drop it.
    fn block_job_abort(&self, domain: &str, disk: &str, pivot: bool) -> Result<(), HvError>;
    /// Changes the block job's bandwidth (bytes/s, 0 = unlimited).
    fn block_job_set_speed(&self, domain: &str, disk: &str, bandwidth: u64) -> Result<(), HvError>;
    /// Rewrites the persistent definition of `disk` to use `source` over the
    /// backing chain `backing` (nearest first; empty: no backing file).
    fn update_persistent_disk(
        &self,
        domain: &str,
        disk: &str,
        source: &DiskSource,
        format: ImageFormat,
        backing: &[BackingLayer],
    ) -> Result<(), HvError>;
    /// The domain's checkpoints, with the dirty bytes of each covered disk
    /// (the domain must be running for those).
    fn checkpoints(&self, domain: &str) -> Result<Vec<Checkpoint>, HvError>;
    /// Redefines checkpoint `name` with its embedded domain's `disk` now on
    /// `source`, asking libvirt to validate its bitmaps: fails when a bitmap of
    /// the checkpoint is missing or broken on the disk the guest runs on.
    fn redefine_checkpoint(
        &self,
        domain: &str,
        name: &str,
        disk: &str,
        source: &DiskSource,
        format: ImageFormat,
    ) -> Result<(), HvError>;
    /// Number of internal snapshots inside a qcow2 image (which libvirt does not
    /// know about and a block copy silently drops).
    fn qcow2_internal_snapshots(&self, source: &DiskSource) -> Result<u32, HvError>;
    /// The object size of an RBD image; `None` for other sources.
    fn rbd_object_size(&self, source: &DiskSource) -> Result<Option<u64>, HvError>;
    /// Bytes of an image that hold data: what the storage really spends on it
    /// (for RBD asked of Ceph, since libvirt reports an rbd volume as full).
    fn allocated_bytes(&self, source: &DiskSource) -> Result<u64, HvError>;
    /// The virtual size of a running disk as QEMU sees it.
    fn disk_capacity(&self, domain: &str, disk: &str) -> Result<u64, HvError>;
    /// Header facts of the image at a path (read-shared: the guest may hold it).
    fn image_info(&self, path: &str) -> Result<ImageInfo, HvError>;
    /// Whether two images (each with its backing chain) hold the same guest-visible
    /// contents, byte for byte (`qemu-img compare`).
    fn images_equal(
        &self,
        a: &str,
        a_format: ImageFormat,
        b: &str,
        b_format: ImageFormat,
    ) -> Result<bool, HvError>;
    /// Makes the file volume `dest` (created empty by volmig) an exact copy of the
    /// read-only image at `source`, cluster for cluster, then points its backing
    /// link at `backing` (path, format), or at none.
    fn copy_layer(
        &self,
        source: &str,
        dest: &VolumeIdentity,
        backing: Option<(&str, ImageFormat)>,
    ) -> Result<(), HvError>;
    /// Offline move of a stopped guest's disk: makes the volume `copy.dest`
    /// (created empty by volmig, checked by identity) hold the guest-visible
    /// contents of the image at `copy.source` read through its backing chain,
    /// sparse. Calls `progress` with the part done in hundredths of a percent
    /// (0..=10000) as it goes; returns `InvalidState` soon after `stop` is set,
    /// leaving the destination partly written (the caller deletes it).
    fn convert_image(
        &self,
        copy: &ImageCopy<'_>,
        progress: &dyn Fn(u64),
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), HvError>;
    /// The domain's libvirt snapshots.
    fn snapshots(&self, domain: &str) -> Result<Vec<SnapshotSpec>, HvError>;
    /// Redefines every snapshot of the domain (parents first, the current one
    /// kept current) with each image path of `renames` (old, new) replaced, so
    /// the metadata follows a chain that moved. Returns how many were redefined.
    fn redefine_snapshots(
        &self,
        domain: &str,
        renames: &[(String, String)],
    ) -> Result<u32, HvError>;
}
