//! An in-memory hypervisor for unit tests of the engine's state machine.
//!
//! It models one running domain with file disks, dir pools and a block job that
//! advances a fixed amount per poll, and can inject a fault at any numbered
//! step (see [`Injector`]). It is never the only test of a feature: the
//! end-to-end tests in `tests/` run the same engine against real libvirt.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::hypervisor::{
    BackingLayer, BlockJob, Checkpoint, CopyOptions, Definition, DiskSource, DiskSpec,
    DomainDisksSpec, DomainState, FileId, HvError, MirrorState, PoolRunState, PoolSpec, VolumeSpec,
    VolumeUser,
};

mod faults;
mod port;

use faults::Hold;
pub use faults::{Fault, HoldGuard, Injector};

/// State of the fake host, public so tests can arrange and inspect it.
#[derive(Debug, Default)]
pub struct FakeState {
    pub running: bool,
    pub live: HashMap<String, DiskSource>,
    pub persistent: HashMap<String, DiskSource>,
    pub volumes: HashMap<(String, String), VolumeSpec>,
    pub pools: Vec<PoolSpec>,
    /// Block jobs by disk target.
    pub jobs: HashMap<String, (DiskSource, BlockJob)>,
    /// Disks whose copy never converges.
    pub stuck: Vec<String>,
    /// Disks whose pivot fails.
    pub failing_pivots: Vec<String>,
    /// Disks whose pivot finds libvirtd gone.
    pub unreachable_pivots: Vec<String>,
    /// Volume names a pool has no room for.
    pub no_space_for: Vec<String>,
    /// Bytes the job advances per poll.
    pub step: u64,
    /// Bytes the guest dirties per poll of a copy that does not write
    /// synchronously (a copy with `dirty_step >= step` never converges).
    pub dirty_step: u64,
    /// Every block copy started: disk target and options.
    pub copies: Vec<(String, CopyOptions)>,
    /// Every speed set on a running block job: disk target and bytes/s.
    pub speeds: Vec<(String, u64)>,
    /// When true, a pivot does not update the persistent definition (the libvirt
    /// behaviour the engine must repair).
    pub skip_persistent_update: bool,
    pub pivots: u32,
    /// Serial numbers of the volumes the engine created (the fake's inodes).
    pub created: Vec<u64>,
    /// Every volume deleted: (pool, name, inode).
    pub deleted: Vec<(String, String, u64)>,
    /// Destinations the guest was pivoted to.
    pub pivoted_to: Vec<DiskSource>,
    /// Users of a path other than the domain `g`, as `volume_users` reports them.
    pub other_users: Vec<(String, VolumeUser)>,
    /// The domain's checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// When true, a pivot loses the disk's checkpoint bitmaps (what libvirt
    /// does, silently, on a destination that cannot hold them).
    pub pivot_loses_bitmaps: bool,
    /// Checkpoints redefined (and validated), in order.
    pub redefined: Vec<String>,
    /// Backing chains of the live disks, nearest first, by disk target.
    pub backing: HashMap<String, Vec<BackingLayer>>,
    /// Image paths that cannot be read (as qemu-img finds a file it may not open).
    pub unreadable: Vec<String>,
    /// Domains besides `g`, as `all_domain_disks` lists them (only that
    /// listing sees them).
    pub other_domains: Vec<DomainDisksSpec>,
    /// Starts the guest after the first quarter of an offline copy.
    pub start_during_convert: bool,
    /// Starts the guest (from the definition as it was) at the next switch
    /// of a persistent definition, as a start racing the switch would.
    pub start_at_switch: bool,
    /// How long a switch of a persistent definition takes to return, after
    /// it took effect (a node killed meanwhile finds it done).
    pub switch_pause: std::time::Duration,
    /// How long each quarter of an offline copy takes.
    pub convert_pause: std::time::Duration,
    /// Quarters of offline copies done.
    pub converted: u32,
    next_ino: u64,
}

/// The fake hypervisor.
pub struct FakeHypervisor {
    pub state: Mutex<FakeState>,
    injector: Option<Arc<Injector>>,
    hold: Mutex<Option<Arc<Hold>>>,
}

/// A volume of the fake, with a fresh inode.
fn volume(st: &mut FakeState, pool: &str, name: &str, capacity: u64, format: &str) -> VolumeSpec {
    st.next_ino += 1;
    let path = format!("/p/{pool}/{name}");
    VolumeSpec {
        pool: pool.into(),
        name: name.into(),
        key: path.clone(),
        path,
        file_id: Some(FileId {
            dev: 1,
            ino: st.next_ino,
            born_ns: Some(st.next_ino),
        }),
        capacity,
        allocation: 0,
        format: Some(format.into()),
    }
}

pub const CAPACITY: u64 = 64 << 20;

impl FakeHypervisor {
    /// One running domain `g` with `vda` in pool `a`; pools `a` and `b`.
    pub fn new() -> Self {
        let pool = |name: &str| PoolSpec {
            name: name.to_string(),
            uuid: format!("uuid-{name}"),
            pool_type: "dir".to_string(),
            state: PoolRunState::Running,
            capacity: 10 << 30,
            allocation: 0,
            available: 10 << 30,
            provisioned: 0,
            target_path: format!("/p/{name}"),
            source_hosts: vec![],
            source_dir: String::new(),
            source_devices: vec![],
            source_name: String::new(),
            auth: None,
            storage_id: format!("local:fake:/p/{name}"),
            shared: false,
        };
        let src = DiskSource::File {
            path: "/p/a/root.qcow2".to_string(),
        };
        let mut st = FakeState {
            running: true,
            step: CAPACITY / 4,
            pools: vec![pool("a"), pool("b")],
            ..Default::default()
        };
        st.live.insert("vda".into(), src.clone());
        st.persistent.insert("vda".into(), src);
        let mut root = volume(&mut st, "a", "root.qcow2", CAPACITY, "qcow2");
        root.allocation = CAPACITY / 2;
        st.volumes.insert(("a".into(), "root.qcow2".into()), root);
        let other = volume(&mut st, "b", "other.qcow2", CAPACITY, "qcow2");
        st.volumes.insert(("b".into(), "other.qcow2".into()), other);
        FakeHypervisor {
            state: Mutex::new(st),
            injector: None,
            hold: Mutex::new(None),
        }
    }

    /// The same host, where `g` also has `extra` disks (sources `/p/a/<target>.qcow2`).
    pub fn with_disks(extra: &[&str]) -> Self {
        let hv = FakeHypervisor::new();
        {
            let mut st = hv.lock();
            for target in extra {
                let name = format!("{target}.qcow2");
                let vol = volume(&mut st, "a", &name, CAPACITY, "qcow2");
                let src = DiskSource::File {
                    path: vol.path.clone(),
                };
                st.volumes.insert(("a".into(), name), vol);
                st.live.insert((*target).into(), src.clone());
                st.persistent.insert((*target).into(), src);
            }
        }
        hv
    }

    /// Adds a qcow2 volume of the fake's disk size to `pool`, spending `allocation` bytes.
    pub fn add_volume(&self, pool: &str, name: &str, allocation: u64) -> VolumeSpec {
        let mut st = self.lock();
        let mut vol = volume(&mut st, pool, name, CAPACITY, "qcow2");
        vol.allocation = allocation;
        st.volumes.insert((pool.into(), name.into()), vol.clone());
        vol
    }

    /// The same host, with faults injected by `injector`.
    pub fn with_injector(injector: Arc<Injector>) -> Self {
        FakeHypervisor {
            injector: Some(injector),
            ..FakeHypervisor::new()
        }
    }

    /// Runs one call as a numbered step, injecting its fault.
    fn step<T>(&self, f: impl FnOnce(&mut FakeState) -> Result<T, HvError>) -> Result<T, HvError> {
        let fault = self.injector.as_ref().and_then(|i| i.next());
        let unreachable = || HvError::Unreachable {
            uri: "fake:///".into(),
            message: "injected: libvirtd is gone".into(),
        };
        match fault {
            Some(Fault::Fail) => {
                return Err(HvError::Failed {
                    op: "fake",
                    code: 1,
                    message: "injected failure".into(),
                })
            }
            Some(Fault::Unreachable) => return Err(unreachable()),
            Some(Fault::DieBefore) => {
                if let Some(i) = &self.injector {
                    i.die();
                }
                return Err(unreachable());
            }
            _ => {}
        }
        let out = f(&mut self.lock());
        if fault == Some(Fault::DieAfter) {
            if let Some(i) = &self.injector {
                i.die();
            }
            return Err(unreachable());
        }
        out
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks the next `call` (`"rbd_object_size"` or `"block_copy"`) before
    /// it takes effect, until the guard is dropped.
    pub fn hold(&self, call: &'static str) -> HoldGuard {
        let hold = Arc::new(Hold {
            call,
            reached: tokio::sync::Notify::new(),
            released: Mutex::new(false),
            wake: Condvar::new(),
        });
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(hold.clone());
        HoldGuard(hold)
    }

    /// Parks this thread if `call` is held (once).
    fn park(&self, call: &str) {
        let held = {
            let mut slot = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(h) if h.call == call => slot.take(),
                _ => None,
            }
        };
        let Some(hold) = held else { return };
        hold.reached.notify_one();
        let mut released = hold.released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released {
            released = hold.wake.wait(released).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl FakeState {
    /// Shuts the guest off: it has no live definition while stopped.
    pub fn stop_guest(&mut self) {
        self.running = false;
        self.live.clear();
        self.jobs.clear();
    }

    /// Boots the guest from its persistent definition.
    pub fn start_guest(&mut self) {
        self.running = true;
        self.live = self.persistent.clone();
    }
}

/// Fails as `qemu-img` does on an image the node may not open.
fn read_image(st: &FakeState, path: &str) -> Result<(), HvError> {
    if st.unreadable.iter().any(|p| p == path) {
        return Err(HvError::Failed {
            op: "qemu-img info",
            code: 1,
            message: format!("Could not open '{path}': Permission denied"),
        });
    }
    Ok(())
}

fn disk_spec(
    target: &str,
    source: &DiskSource,
    backing: Vec<BackingLayer>,
    mirror: Option<MirrorState>,
) -> DiskSpec {
    DiskSpec {
        target: target.to_string(),
        device: "disk".into(),
        format: Some("qcow2".into()),
        source: Some(source.clone()),
        backing_depth: backing.len() as u32,
        backing,
        read_only: false,
        shareable: false,
        mirror,
    }
}

impl FakeHypervisor {
    fn domain_state(st: &FakeState, name: &str) -> Result<DomainState, HvError> {
        if name != "g" {
            return Err(HvError::NoDomain(name.into()));
        }
        Ok(DomainState {
            name: "g".into(),
            uuid: "u-g".into(),
            active: st.running,
            persistent: true,
            snapshots: 0,
            checkpoints: st.checkpoints.len() as u32,
        })
    }

    fn disk_specs(st: &FakeState, which: Definition) -> Vec<DiskSpec> {
        match which {
            // libvirt answers a stopped domain's live XML with its persistent one.
            Definition::Live if !st.running => Self::disk_specs(st, Definition::Persistent),
            Definition::Live => st
                .live
                .iter()
                .map(|(t, s)| {
                    let mirror = st.jobs.get(t).map(|j| MirrorState {
                        source: Some(j.0.clone()),
                        ready: j.1.cur == j.1.end,
                    });
                    let backing = st.backing.get(t).cloned().unwrap_or_default();
                    disk_spec(t, s, backing, mirror)
                })
                .collect(),
            Definition::Persistent => st
                .persistent
                .iter()
                .map(|(t, s)| disk_spec(t, s, Vec::new(), None))
                .collect(),
        }
    }
}
