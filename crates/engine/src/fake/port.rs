//! The fake as the engine sees it: the [`Hypervisor`] port over [`FakeState`].

use super::{read_image, volume, FakeHypervisor, CAPACITY};
use crate::hypervisor::{
    BackingLayer, BlockJob, Checkpoint, CopyOptions, Definition, Deletion, DiskSource, DiskSpec,
    DomainDisksSpec, DomainState, HostInfo, HvError, Hypervisor, ImageFormat, ImageInfo, NewVolume,
    PoolRunState, PoolSpec, SnapshotSpec, VolumeIdentity, VolumeSpec, VolumeUser,
};

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
        self.park("domain");
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

    fn pool_volumes(&self, pool: &str, limit: usize) -> Result<Vec<VolumeSpec>, HvError> {
        self.step(|st| {
            let spec = st
                .pools
                .iter()
                .find(|p| p.name == pool)
                .ok_or_else(|| HvError::NoPool(pool.into()))?;
            if spec.state != PoolRunState::Running {
                return Err(HvError::PoolInactive(pool.into()));
            }
            let mut volumes: Vec<VolumeSpec> = st
                .volumes
                .values()
                .filter(|v| v.pool == pool)
                .cloned()
                .collect();
            volumes.sort_by(|a, b| a.name.cmp(&b.name));
            volumes.truncate(limit.saturating_add(1));
            Ok(volumes)
        })
    }

    fn all_domain_disks(&self) -> Result<Vec<DomainDisksSpec>, HvError> {
        self.step(|st| {
            let which = if st.running {
                Definition::Live
            } else {
                Definition::Persistent
            };
            let g = DomainDisksSpec {
                name: "g".into(),
                uuid: "u-g".into(),
                running: st.running,
                disks: Self::disk_specs(st, which),
            };
            Ok(std::iter::once(g)
                .chain(st.other_domains.iter().cloned())
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
            if std::mem::take(&mut st.start_at_switch) {
                st.start_guest();
            }
            st.persistent.insert(disk.into(), source.clone());
            Ok(())
        })?;
        std::thread::sleep(self.lock().switch_pause);
        Ok(())
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

    // Copies in four steps, pausing between them so a test can cancel, and
    // starts the guest after the first one when asked to
    // (`start_during_convert`), as an operator might.
    fn convert_image(
        &self,
        copy: &crate::hypervisor::ImageCopy<'_>,
        progress: &dyn Fn(u64),
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), HvError> {
        let dest = copy.dest;
        self.step(|st| {
            let found = st
                .volumes
                .get(&(dest.pool.clone(), dest.name.clone()))
                .ok_or_else(|| HvError::NoVolume(dest.name.clone()))?;
            match dest.differs_from(&found.identity()) {
                Some(why) => Err(HvError::InvalidState(why)),
                None => Ok(()),
            }
        })?;
        for quarter in 1..=4u64 {
            std::thread::sleep(self.lock().convert_pause);
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(HvError::InvalidState("the offline copy was stopped".into()));
            }
            progress(quarter * 2500);
            let mut st = self.lock();
            st.converted += 1;
            if quarter == 1 && st.start_during_convert {
                st.start_guest();
            }
        }
        Ok(())
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
