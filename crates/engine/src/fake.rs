//! An in-memory hypervisor for unit tests of the engine's state machine.
//!
//! It models one running domain with file disks, dir pools and a block job that
//! advances a fixed amount per poll, and can inject a fault at any numbered
//! step (see [`Injector`]). It is never the only test of a feature: the
//! end-to-end tests in `tests/` run the same engine against real libvirt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::hypervisor::{
    BackingLayer, BlockJob, Checkpoint, CopyOptions, Definition, Deletion, DiskSource, DiskSpec,
    DomainState, FileId, HostInfo, HvError, Hypervisor, ImageFormat, ImageInfo, MirrorState,
    NewVolume, PoolRunState, PoolSpec, SnapshotSpec, VolumeIdentity, VolumeSpec, VolumeUser,
};

/// A fault injected at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call (or journal write) fails.
    Fail,
    /// The node dies just before the step takes effect.
    DieBefore,
    /// The node dies just after the step took effect.
    DieAfter,
    /// libvirtd is gone for this and the next few calls.
    Unreachable,
}

/// Counts the engine's steps (hypervisor calls and journal writes) and
/// injects one fault at a chosen step. A "death" parks the calling thread until
/// [`Injector::release`], so the runtime that called it can be shut down as if
/// the process had been killed there.
#[derive(Default)]
pub struct Injector {
    steps: AtomicUsize,
    plan: Mutex<Option<(usize, Fault)>>,
    unreachable_left: AtomicUsize,
    died: AtomicBool,
    released: Mutex<bool>,
    wake: Condvar,
}

/// How many calls libvirtd stays unreachable after an `Unreachable` fault.
const UNREACHABLE_CALLS: usize = 3;

impl Injector {
    /// An injector that will inject `fault` at step `at` (counting from 0).
    pub fn at(at: usize, fault: Fault) -> Arc<Self> {
        let injector = Injector::default();
        *injector.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, fault));
        Arc::new(injector)
    }

    /// Steps counted so far.
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    /// Whether a death was injected.
    pub fn died(&self) -> bool {
        self.died.load(Ordering::SeqCst)
    }

    /// Stops injecting (the restarted node runs fault-free).
    pub fn disarm(&self) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.unreachable_left.store(0, Ordering::SeqCst);
    }

    /// Lets parked threads return (with an error nobody reads any more).
    pub fn release(&self) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Counts a step and returns the fault to inject there, if any.
    pub fn next(&self) -> Option<Fault> {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        if self
            .unreachable_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            return Some(Fault::Unreachable);
        }
        let plan = *self.plan.lock().unwrap_or_else(|p| p.into_inner());
        match plan {
            Some((at, fault)) if at == n => {
                if fault == Fault::Unreachable {
                    self.unreachable_left
                        .store(UNREACHABLE_CALLS - 1, Ordering::SeqCst);
                }
                Some(fault)
            }
            _ => None,
        }
    }

    /// Parks the calling thread as if the process died here.
    pub fn die(&self) {
        self.died.store(true, Ordering::SeqCst);
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released {
            released = self.wake.wait(released).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A journal hook that counts each write as a step and injects there.
    pub fn journal_hook(self: &Arc<Self>) -> crate::journal::SaveHook {
        let me = self.clone();
        let pending = Arc::new(Mutex::new(None::<Fault>));
        crate::journal::SaveHook::new(move |after| {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if after {
                if pending.take() == Some(Fault::DieAfter) {
                    me.die();
                    return Err("the node died".to_string());
                }
                return Ok(());
            }
            match me.next() {
                Some(Fault::Fail) | Some(Fault::Unreachable) => {
                    Err("injected journal write failure".to_string())
                }
                Some(Fault::DieBefore) => {
                    me.die();
                    Err("the node died".to_string())
                }
                other => {
                    *pending = other;
                    Ok(())
                }
            }
        })
    }
}

/// A call the fake parks until the test lets it go, so that a test acts at an
/// exact point of the engine's sequence (see [`FakeHypervisor::hold`]).
struct Hold {
    call: &'static str,
    reached: tokio::sync::Notify,
    released: Mutex<bool>,
    wake: Condvar,
}

/// Holds the first call of one kind; lets it go when dropped, also when the
/// test fails before it lets it go (a parked call would keep the runtime from
/// shutting down).
pub struct HoldGuard(Arc<Hold>);

impl HoldGuard {
    /// Returns once the held call is parked.
    pub async fn reached(&self) {
        self.0.reached.notified().await
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        *self.0.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.wake.notify_all();
    }
}

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

impl Hypervisor for FakeHypervisor {
    fn host_info(&self) -> Result<HostInfo, HvError> {
        self.step(|_| {
            Ok(HostInfo {
                hostname: "fake".into(),
                libvirt_version: "9.0.0".into(),
                hypervisor_version: "7.2.0".into(),
                uri: "fake:///".into(),
            })
        })
    }

    fn domain(&self, name: &str) -> Result<DomainState, HvError> {
        self.step(|st| Self::domain_state(st, name))
    }

    fn domain_xml(&self, _domain: &str, _which: Definition) -> Result<String, HvError> {
        Err(HvError::Unsupported("fake has no XML".into()))
    }

    fn disks(&self, domain: &str, which: Definition) -> Result<Vec<DiskSpec>, HvError> {
        self.step(|st| {
            Self::domain_state(st, domain)?;
            Ok(Self::disk_specs(st, which))
        })
    }

    fn pools(&self) -> Result<Vec<PoolSpec>, HvError> {
        self.step(|st| Ok(st.pools.clone()))
    }

    fn pool(&self, name: &str) -> Result<PoolSpec, HvError> {
        self.step(|st| {
            st.pools
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| HvError::NoPool(name.into()))
        })
    }

    fn volume_by_path(&self, path: &str) -> Result<Option<VolumeSpec>, HvError> {
        self.step(|st| Ok(st.volumes.values().find(|v| v.path == path).cloned()))
    }

    fn volume(&self, pool: &str, name: &str) -> Result<VolumeSpec, HvError> {
        self.step(|st| {
            st.volumes
                .get(&(pool.to_string(), name.to_string()))
                .cloned()
                .ok_or_else(|| HvError::NoVolume(name.into()))
        })
    }

    fn volume_names(&self, pool: &str) -> Result<Vec<String>, HvError> {
        self.step(|st| {
            Ok(st
                .volumes
                .keys()
                .filter(|(p, _)| p == pool)
                .map(|(_, n)| n.clone())
                .collect())
        })
    }

    fn create_volume(&self, pool: &str, new: &NewVolume) -> Result<VolumeSpec, HvError> {
        self.step(|st| {
            let key = (pool.to_string(), new.name.clone());
            if st.volumes.contains_key(&key) {
                return Err(HvError::VolumeExists(new.name.clone()));
            }
            if st.no_space_for.contains(&new.name) {
                return Err(HvError::NoSpace(format!("no room for {}", new.name)));
            }
            let spec = volume(st, pool, &new.name, new.capacity, new.format.as_str());
            if let Some(id) = spec.file_id {
                st.created.push(id.ino);
            }
            st.volumes.insert(key, spec.clone());
            Ok(spec)
        })
    }

    fn delete_volume_if_same(&self, expected: &VolumeIdentity) -> Result<Deletion, HvError> {
        self.step(|st| {
            let key = (expected.pool.clone(), expected.name.clone());
            let Some(found) = st.volumes.get(&key) else {
                return Ok(Deletion::Gone);
            };
            if let Some(why) = expected.differs_from(&found.identity()) {
                return Ok(Deletion::Replaced(why));
            }
            let ino = found.file_id.map(|f| f.ino).unwrap_or(0);
            st.volumes.remove(&key);
            st.deleted.push((key.0, key.1, ino));
            Ok(Deletion::Deleted)
        })
    }

    fn volume_users(&self, path: &str) -> Result<Vec<VolumeUser>, HvError> {
        self.step(|st| {
            let mut users: Vec<VolumeUser> = st
                .other_users
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, u)| u.clone())
                .collect();
            for (live, disks) in [(true, &st.live), (false, &st.persistent)] {
                for (target, source) in disks {
                    if source.display_name() == path {
                        users.push(VolumeUser::Domain {
                            domain: "g".into(),
                            uuid: "u-g".into(),
                            target: target.clone(),
                            live,
                            how: "source".into(),
                        });
                    }
                }
            }
            Ok(users)
        })
    }

    fn block_copy(
        &self,
        _domain: &str,
        disk: &str,
        dest: &DiskSource,
        _format: ImageFormat,
        _backing: &[BackingLayer],
        options: CopyOptions,
    ) -> Result<(), HvError> {
        self.park("block_copy");
        self.step(|st| {
            if st.jobs.contains_key(disk) {
                return Err(HvError::InvalidState("block copy already active".into()));
            }
            if !st.running {
                return Err(HvError::InvalidState("domain is not running".into()));
            }
            st.copies.push((disk.to_string(), options));
            st.jobs.insert(
                disk.to_string(),
                (
                    dest.clone(),
                    BlockJob {
                        cur: 0,
                        end: CAPACITY,
                        bandwidth: options.bandwidth,
                        is_copy: true,
                    },
                ),
            );
            Ok(())
        })
    }

    fn block_job(&self, _domain: &str, disk: &str) -> Result<Option<BlockJob>, HvError> {
        self.step(|st| {
            if !st.running {
                return Err(HvError::InvalidState("domain is not running".into()));
            }
            let step = if st.stuck.iter().any(|d| d == disk) {
                0
            } else {
                st.step
            };
            let synchronous = st
                .copies
                .iter()
                .rev()
                .find(|(d, _)| d == disk)
                .is_some_and(|(_, o)| o.synchronous_writes);
            let dirty = if synchronous { 0 } else { st.dirty_step };
            Ok(st.jobs.get_mut(disk).map(|j| {
                j.1.cur = (j.1.cur + step).min(j.1.end);
                j.1.end += dirty;
                j.1
            }))
        })
    }

    fn block_job_abort(&self, _domain: &str, disk: &str, pivot: bool) -> Result<(), HvError> {
        self.step(|st| {
            let Some(job) = st.jobs.remove(disk) else {
                return Err(HvError::InvalidState("no block job".into()));
            };
            if pivot {
                if job.1.cur != job.1.end {
                    st.jobs.insert(disk.to_string(), job);
                    return Err(HvError::InvalidState("block job not ready".into()));
                }
                if st.unreachable_pivots.iter().any(|d| d == disk) {
                    st.jobs.insert(disk.to_string(), job);
                    return Err(HvError::Unreachable {
                        uri: "fake:///".into(),
                        message: "injected: libvirtd went away during the pivot".into(),
                    });
                }
                if st.failing_pivots.iter().any(|d| d == disk) {
                    st.jobs.insert(disk.to_string(), job);
                    return Err(HvError::Failed {
                        op: "virDomainBlockJobAbort",
                        code: 1,
                        message: "injected: the pivot failed in QEMU".into(),
                    });
                }
                st.pivots += 1;
                if st.pivot_loses_bitmaps {
                    for cp in &mut st.checkpoints {
                        cp.disks
                            .iter_mut()
                            .filter(|d| d.target == disk)
                            .for_each(|d| d.dirty_bytes = None);
                    }
                }
                st.pivoted_to.push(job.0.clone());
                st.live.insert(disk.into(), job.0.clone());
                if !st.skip_persistent_update {
                    st.persistent.insert(disk.into(), job.0);
                }
            }
            Ok(())
        })
    }

    fn block_job_set_speed(&self, _d: &str, disk: &str, bw: u64) -> Result<(), HvError> {
        self.step(|st| match st.jobs.get_mut(disk) {
            Some(j) => {
                j.1.bandwidth = bw;
                st.speeds.push((disk.to_string(), bw));
                Ok(())
            }
            None => Err(HvError::InvalidState("no block job".into())),
        })
    }

    fn update_persistent_disk(
        &self,
        _domain: &str,
        disk: &str,
        source: &DiskSource,
        _format: ImageFormat,
        _backing: &[BackingLayer],
    ) -> Result<(), HvError> {
        self.step(|st| {
            st.persistent.insert(disk.into(), source.clone());
            Ok(())
        })
    }

    fn checkpoints(&self, _domain: &str) -> Result<Vec<Checkpoint>, HvError> {
        self.step(|st| Ok(st.checkpoints.clone()))
    }

    fn redefine_checkpoint(
        &self,
        _domain: &str,
        name: &str,
        _disk: &str,
        _source: &DiskSource,
        _format: ImageFormat,
    ) -> Result<(), HvError> {
        self.step(|st| {
            let cp = st
                .checkpoints
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| HvError::InvalidArgument(format!("no checkpoint {name}")))?;
            if let Some(broken) = cp
                .disks
                .iter()
                .find(|d| d.bitmap.is_some() && d.dirty_bytes.is_none())
            {
                return Err(HvError::Failed {
                    op: "virDomainCheckpointCreateXML",
                    code: 102,
                    message: format!(
                        "checkpoint inconsistent: missing or broken bitmap '{name}' for disk '{}'",
                        broken.target
                    ),
                });
            }
            st.redefined.push(name.to_string());
            Ok(())
        })
    }

    fn qcow2_internal_snapshots(&self, source: &DiskSource) -> Result<u32, HvError> {
        self.step(|st| read_image(st, &source.display_name()).map(|()| 0))
    }

    fn rbd_object_size(&self, source: &DiskSource) -> Result<Option<u64>, HvError> {
        self.park("rbd_object_size");
        self.step(|_| Ok(matches!(source, DiskSource::Rbd { .. }).then_some(4 << 20)))
    }

    fn allocated_bytes(&self, source: &DiskSource) -> Result<u64, HvError> {
        self.step(|st| {
            let path = source.display_name();
            read_image(st, &path)?;
            st.volumes
                .values()
                .find(|v| v.path == path)
                .map(|v| v.allocation)
                .ok_or(HvError::NoVolume(path))
        })
    }

    fn disk_capacity(&self, _domain: &str, _disk: &str) -> Result<u64, HvError> {
        self.step(|_| Ok(CAPACITY))
    }

    // The header of a volume the fake holds, with no backing link: enough to
    // plan a chain; copying and comparing layers is tested against libvirt
    // (tests/chains.rs).
    fn image_info(&self, path: &str) -> Result<ImageInfo, HvError> {
        self.step(|st| {
            read_image(st, path)?;
            let vol = st
                .volumes
                .values()
                .find(|v| v.path == path)
                .ok_or_else(|| HvError::Unsupported(format!("the fake has no image at {path}")))?;
            Ok(ImageInfo {
                format: vol.format.clone().unwrap_or_default(),
                virtual_size: vol.capacity,
                actual_size: vol.allocation,
                backing: None,
                backing_format: None,
            })
        })
    }

    fn images_equal(
        &self,
        _a: &str,
        _a_format: ImageFormat,
        _b: &str,
        _b_format: ImageFormat,
    ) -> Result<bool, HvError> {
        Err(HvError::Unsupported("the fake compares no images".into()))
    }

    fn copy_layer(
        &self,
        _source: &str,
        _dest: &VolumeIdentity,
        _backing: Option<(&str, ImageFormat)>,
    ) -> Result<(), HvError> {
        Err(HvError::Unsupported("the fake copies no layers".into()))
    }

    fn snapshots(&self, _domain: &str) -> Result<Vec<SnapshotSpec>, HvError> {
        self.step(|_| Ok(Vec::new()))
    }

    fn redefine_snapshots(
        &self,
        _domain: &str,
        _renames: &[(String, String)],
    ) -> Result<u32, HvError> {
        self.step(|_| Ok(0))
    }
}
