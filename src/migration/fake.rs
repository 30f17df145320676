//! An in-memory hypervisor for unit tests of the engine's state machine.
//!
//! It models one running domain with file disks, dir pools and a block job that
//! advances a fixed amount per poll. It is never the only test of a feature:
//! the end-to-end tests in `tests/` run the same engine against real libvirt.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::hypervisor::{
    BlockJob, CopyOptions, Definition, DiskSource, DiskSpec, DomainState, HostInfo, HvError,
    Hypervisor, ImageFormat, MirrorState, NewVolume, PoolRunState, PoolSpec, VolumeSpec,
};

/// State of the fake host, public so tests can arrange and inspect it.
#[derive(Debug, Default)]
pub struct FakeState {
    pub running: bool,
    pub live: HashMap<String, DiskSource>,
    pub persistent: HashMap<String, DiskSource>,
    pub volumes: HashMap<(String, String), VolumeSpec>,
    pub pools: Vec<PoolSpec>,
    pub job: Option<(String, DiskSource, BlockJob)>,
    /// Bytes the job advances per poll.
    pub step: u64,
    /// When true, a pivot does not update the persistent definition (the libvirt
    /// behaviour the engine must repair).
    pub skip_persistent_update: bool,
    pub pivots: u32,
}

/// The fake hypervisor.
pub struct FakeHypervisor {
    pub state: Mutex<FakeState>,
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
        st.volumes.insert(
            ("a".into(), "root.qcow2".into()),
            VolumeSpec {
                pool: "a".into(),
                name: "root.qcow2".into(),
                path: "/p/a/root.qcow2".into(),
                capacity: CAPACITY,
                allocation: CAPACITY / 2,
                format: Some("qcow2".into()),
            },
        );
        FakeHypervisor {
            state: Mutex::new(st),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn disk_spec(target: &str, source: &DiskSource, mirror: Option<MirrorState>) -> DiskSpec {
    DiskSpec {
        target: target.to_string(),
        device: "disk".into(),
        format: Some("qcow2".into()),
        source: Some(source.clone()),
        backing_depth: 0,
        read_only: false,
        shareable: false,
        mirror,
    }
}

impl Hypervisor for FakeHypervisor {
    fn host_info(&self) -> Result<HostInfo, HvError> {
        Ok(HostInfo {
            hostname: "fake".into(),
            libvirt_version: "9.0.0".into(),
            hypervisor_version: "7.2.0".into(),
            uri: "fake:///".into(),
        })
    }

    fn domain(&self, name: &str) -> Result<DomainState, HvError> {
        if name != "g" {
            return Err(HvError::NoDomain(name.into()));
        }
        Ok(DomainState {
            name: "g".into(),
            uuid: "u-g".into(),
            active: self.lock().running,
            persistent: true,
            snapshots: 0,
        })
    }

    fn domain_xml(&self, _domain: &str, _which: Definition) -> Result<String, HvError> {
        Err(HvError::Unsupported("fake has no XML".into()))
    }

    fn disks(&self, domain: &str, which: Definition) -> Result<Vec<DiskSpec>, HvError> {
        self.domain(domain)?;
        let st = self.lock();
        Ok(match which {
            Definition::Live => st
                .live
                .iter()
                .map(|(t, s)| {
                    let mirror = st.job.as_ref().filter(|j| &j.0 == t).map(|j| MirrorState {
                        source: Some(j.1.clone()),
                        ready: j.2.cur == j.2.end,
                    });
                    disk_spec(t, s, mirror)
                })
                .collect(),
            Definition::Persistent => st
                .persistent
                .iter()
                .map(|(t, s)| disk_spec(t, s, None))
                .collect(),
        })
    }

    fn pools(&self) -> Result<Vec<PoolSpec>, HvError> {
        Ok(self.lock().pools.clone())
    }

    fn pool(&self, name: &str) -> Result<PoolSpec, HvError> {
        self.lock()
            .pools
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| HvError::NoPool(name.into()))
    }

    fn volume_by_path(&self, path: &str) -> Result<Option<VolumeSpec>, HvError> {
        Ok(self
            .lock()
            .volumes
            .values()
            .find(|v| v.path == path)
            .cloned())
    }

    fn volume(&self, pool: &str, name: &str) -> Result<VolumeSpec, HvError> {
        self.lock()
            .volumes
            .get(&(pool.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| HvError::NoVolume(name.into()))
    }

    fn volume_names(&self, pool: &str) -> Result<Vec<String>, HvError> {
        Ok(self
            .lock()
            .volumes
            .keys()
            .filter(|(p, _)| p == pool)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn create_volume(&self, pool: &str, volume: &NewVolume) -> Result<VolumeSpec, HvError> {
        let spec = VolumeSpec {
            pool: pool.into(),
            name: volume.name.clone(),
            path: format!("/p/{pool}/{}", volume.name),
            capacity: volume.capacity,
            allocation: 0,
            format: Some(volume.format.as_str().into()),
        };
        self.lock()
            .volumes
            .insert((pool.into(), volume.name.clone()), spec.clone());
        Ok(spec)
    }

    fn delete_volume(&self, pool: &str, name: &str) -> Result<(), HvError> {
        self.lock()
            .volumes
            .remove(&(pool.to_string(), name.to_string()))
            .map(|_| ())
            .ok_or_else(|| HvError::NoVolume(name.into()))
    }

    fn block_copy(
        &self,
        _domain: &str,
        disk: &str,
        dest: &DiskSource,
        _format: ImageFormat,
        options: CopyOptions,
    ) -> Result<(), HvError> {
        let mut st = self.lock();
        if st.job.is_some() {
            return Err(HvError::InvalidState("block copy already active".into()));
        }
        st.job = Some((
            disk.to_string(),
            dest.clone(),
            BlockJob {
                cur: 0,
                end: CAPACITY,
                bandwidth: options.bandwidth,
                is_copy: true,
            },
        ));
        Ok(())
    }

    fn block_job(&self, _domain: &str, disk: &str) -> Result<Option<BlockJob>, HvError> {
        let mut st = self.lock();
        if !st.running {
            return Err(HvError::InvalidState("domain is not running".into()));
        }
        let step = st.step;
        Ok(st.job.as_mut().filter(|j| j.0 == disk).map(|j| {
            j.2.cur = (j.2.cur + step).min(j.2.end);
            j.2
        }))
    }

    fn block_job_abort(&self, _domain: &str, disk: &str, pivot: bool) -> Result<(), HvError> {
        let mut st = self.lock();
        let Some(job) = st.job.take() else {
            return Err(HvError::InvalidState("no block job".into()));
        };
        if pivot {
            st.pivots += 1;
            st.live.insert(disk.into(), job.1.clone());
            if !st.skip_persistent_update {
                st.persistent.insert(disk.into(), job.1);
            }
        }
        Ok(())
    }

    fn block_job_set_speed(&self, _d: &str, _disk: &str, bw: u64) -> Result<(), HvError> {
        match self.lock().job.as_mut() {
            Some(j) => {
                j.2.bandwidth = bw;
                Ok(())
            }
            None => Err(HvError::InvalidState("no block job".into())),
        }
    }

    fn update_persistent_disk(
        &self,
        _domain: &str,
        disk: &str,
        source: &DiskSource,
        _format: ImageFormat,
    ) -> Result<(), HvError> {
        self.lock().persistent.insert(disk.into(), source.clone());
        Ok(())
    }

    fn qcow2_internal_snapshots(&self, _source: &DiskSource) -> Result<u32, HvError> {
        Ok(0)
    }

    fn disk_capacity(&self, _domain: &str, _disk: &str) -> Result<u64, HvError> {
        Ok(CAPACITY)
    }
}
