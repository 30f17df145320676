//! The libvirt boundary: the only crate in volmig that imports `virt`.
//!
//! [`LibvirtHost`] implements [`Hypervisor`] over one cached connection to
//! libvirtd. A call that finds the connection gone (libvirtd restarted) opens
//! a new one and is retried once, so a libvirtd restart mid-migration is
//! survived.
//! All methods block; async callers use `spawn_blocking`.
//!
//! [`Hypervisor`]: volmig_engine::hypervisor::Hypervisor

mod blockjob;
mod checkpoint;
pub mod checkpoint_xml;
mod connection;
mod convert;
pub mod domain_xml;
mod domains;
mod error;
mod host;
pub mod mountinfo;
pub mod pool_xml;
mod pools;
mod qemu_img;
mod rbd;
mod rbd_credentials;
pub mod snapshot_xml;
pub mod storage_id;
mod timed_command;
mod volumes;
pub mod xml_tree;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use volmig_engine::hypervisor::CallObserver;

pub use volmig_types::host::{DEFAULT_CEPH_KEYRING_DIR, DEFAULT_URI};

/// A libvirt host reached through one URI.
pub struct LibvirtHost {
    uri: String,
    conn: Mutex<Option<Arc<Connect>>>,
    ceph_keyring_dir: PathBuf,
    observer: Arc<dyn CallObserver>,
    /// Held across a checkpoint's read-modify-redefine, so two disks of one
    /// checkpoint moved together cannot undo each other's rewrite.
    checkpoint_rewrite: Mutex<()>,
    /// The node's `[shared_pools]`: pool name → operator-chosen storage id.
    shared_pools: BTreeMap<String, String>,
}

impl LibvirtHost {
    /// A host for `uri`; connects lazily on first use.
    pub fn new(uri: impl Into<String>) -> Self {
        // libvirt's default error callback prints every error to stderr, including
        // the expected "no block job" ones; errors are reported through results instead.
        virt::error::clear_error_callback();
        LibvirtHost {
            uri: uri.into(),
            conn: Mutex::new(None),
            ceph_keyring_dir: PathBuf::from(DEFAULT_CEPH_KEYRING_DIR),
            observer: Arc::new(()),
            checkpoint_rewrite: Mutex::new(()),
            shared_pools: BTreeMap::new(),
        }
    }

    /// Reports every libvirt call (name, latency, failure) to `observer`.
    pub fn with_call_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Reads cephx keys of private libvirt secrets from `dir`.
    pub fn with_ceph_keyring_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ceph_keyring_dir = dir.into();
        self
    }

    /// Gives the pools named in `shared_pools` the storage id
    /// `shared:<its value>`, shared: for storage other hosts reach that cannot
    /// be recognised from the mount table (see [`storage_id`]).
    pub fn with_shared_pools(mut self, shared_pools: BTreeMap<String, String>) -> Self {
        self.shared_pools = shared_pools;
        self
    }

    /// What decides storage ids on this host, for one listing of its pools.
    fn host_facts<'a>(
        &'a self,
        hostname: &'a str,
        mounts: &'a [mountinfo::Mount],
    ) -> storage_id::HostFacts<'a> {
        storage_id::HostFacts {
            hostname,
            mounts,
            shared_pools: &self.shared_pools,
        }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}
