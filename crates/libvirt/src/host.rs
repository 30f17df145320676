//! `impl Hypervisor for LibvirtHost`: each method one libvirt call (through
//! `LibvirtHost::call`) or one `qemu-img` run, over the helpers of
//! `domains.rs`, `pools.rs` and `volumes.rs`.

use virt::storage_vol::StorageVol;
use virt::sys;
use volmig_engine::hypervisor::{
    BackingLayer, BlockJob, Checkpoint, CopyOptions, Definition, Deletion, DiskSource, DiskSpec,
    DomainDisksSpec, DomainState, HostInfo, HvError, Hypervisor, ImageFormat, ImageInfo, NewVolume,
    PoolSpec, SnapshotSpec, VolumeIdentity, VolumeSpec, VolumeUser,
};

use crate::connection::bad_xml;
use crate::domains::{all_domain_disks, domain_users, lookup_domain};
use crate::pools::{pool_spec, refresh_active_pools};
use crate::volumes::{overlay_users, pool_volumes, volume_spec};
use crate::{
    blockjob, checkpoint, checkpoint_xml, domain_xml, error, mountinfo, pool_xml, qemu_img,
    snapshot_xml, LibvirtHost,
};

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Hypervisor for LibvirtHost {
    fn host_info(&self) -> Result<HostInfo, HvError> {
        self.call("virConnectGetVersion", &self.uri, |c| {
            Ok(HostInfo {
                hostname: c.hostname()?,
                libvirt_version: version_string(c.lib_version()?),
                hypervisor_version: version_string(c.hyp_version()?),
                uri: self.uri.clone(),
            })
        })
    }

    fn domain(&self, name_or_uuid: &str) -> Result<DomainState, HvError> {
        self.call("virDomainLookupByName", name_or_uuid, |c| {
            let dom = lookup_domain(c, name_or_uuid)?;
            Ok(DomainState {
                name: dom.name()?,
                uuid: dom.uuid_string()?,
                active: dom.is_active()?,
                persistent: dom.is_persistent()?,
                snapshots: checkpoint::snapshot_count(&dom)?,
                checkpoints: checkpoint::checkpoint_count(&dom)?,
            })
        })
    }

    fn domain_xml(&self, domain: &str, which: Definition) -> Result<String, HvError> {
        self.call("virDomainGetXMLDesc", domain, |c| {
            let dom = lookup_domain(c, domain)?;
            let flags = match which {
                Definition::Live => 0,
                Definition::Persistent => sys::VIR_DOMAIN_XML_INACTIVE,
            };
            Ok(dom.xml_desc(flags)?)
        })
    }

    fn disks(&self, domain: &str, which: Definition) -> Result<Vec<DiskSpec>, HvError> {
        let xml = self.domain_xml(domain, which)?;
        domain_xml::parse_disks(&xml).map_err(HvError::BadXml)
    }

    fn pools(&self) -> Result<Vec<PoolSpec>, HvError> {
        self.call("virConnectListAllStoragePools", &self.uri, |c| {
            let (hostname, mounts) = (c.hostname()?, mountinfo::read_own());
            let facts = self.host_facts(&hostname, &mounts);
            c.list_all_storage_pools(0)?
                .iter()
                .map(|p| pool_spec(p, facts))
                .collect()
        })
    }

    fn pool(&self, name: &str) -> Result<PoolSpec, HvError> {
        self.call("virStoragePoolLookupByName", name, |c| {
            let pool = c.lookup_storage_pool_by_name(name)?;
            if pool.is_active()? {
                // Stale capacity numbers would defeat the space check.
                let _ = pool.refresh(0);
            }
            let (hostname, mounts) = (c.hostname()?, mountinfo::read_own());
            pool_spec(&pool, self.host_facts(&hostname, &mounts))
        })
    }

    fn volume_by_path(&self, path: &str) -> Result<Option<VolumeSpec>, HvError> {
        self.call("virStorageVolLookupByPath", path, |c| {
            let found = match c.lookup_storage_vol_by_path(path) {
                Ok(vol) => Some(vol),
                Err(_) => {
                    // A file created behind libvirt's back is unknown until its pool
                    // is refreshed.
                    refresh_active_pools(c)?;
                    c.lookup_storage_vol_by_path(path).ok()
                }
            };
            found.as_ref().map(volume_spec).transpose()
        })
    }

    fn volume(&self, pool: &str, name: &str) -> Result<VolumeSpec, HvError> {
        self.call(
            "virStorageVolLookupByName",
            &format!("{pool}/{name}"),
            |c| {
                let p = c.lookup_storage_pool_by_name(pool)?;
                volume_spec(&p.lookup_storage_vol_by_name(name)?)
            },
        )
    }

    fn volume_names(&self, pool: &str) -> Result<Vec<String>, HvError> {
        self.call("virStoragePoolListAllVolumes", pool, |c| {
            let p = c.lookup_storage_pool_by_name(pool)?;
            let _ = p.refresh(0);
            Ok(p.list_volumes()?)
        })
    }

    fn pool_volumes(&self, pool: &str, limit: usize) -> Result<Vec<VolumeSpec>, HvError> {
        self.call("virStoragePoolListAllVolumes", pool, |c| {
            pool_volumes(c, pool, limit)
        })?
        .ok_or_else(|| HvError::PoolInactive(pool.to_string()))
    }

    fn all_domain_disks(&self) -> Result<Vec<DomainDisksSpec>, HvError> {
        self.call("virConnectListAllDomains", &self.uri, all_domain_disks)
    }

    fn create_volume(&self, pool: &str, volume: &NewVolume) -> Result<VolumeSpec, HvError> {
        self.call(
            "virStorageVolCreateXML",
            &format!("{pool}/{}", volume.name),
            |c| {
                let p = c.lookup_storage_pool_by_name(pool)?;
                let pool_type = pool_xml::parse_pool(&p.xml_desc(0)?)
                    .map_err(bad_xml)?
                    .pool_type;
                let xml = pool_xml::volume_xml(volume, &pool_type);
                let vol = StorageVol::create_xml(&p, &xml, 0)?;
                volume_spec(&vol)
            },
        )
    }

    fn delete_volume_if_same(&self, expected: &VolumeIdentity) -> Result<Deletion, HvError> {
        self.call("virStorageVolDelete", &expected.display_name(), |c| {
            let p = c.lookup_storage_pool_by_name(&expected.pool)?;
            // Looked up, compared and deleted through one handle, so the check
            // and the delete concern the same volume.
            let vol = match p.lookup_storage_vol_by_name(&expected.name) {
                Ok(vol) => vol,
                Err(e) if error::is_no_volume(&e) => return Ok(Deletion::Gone),
                Err(e) => return Err(e.into()),
            };
            let found = volume_spec(&vol)?.identity();
            if let Some(why) = expected.differs_from(&found) {
                return Ok(Deletion::Replaced(why));
            }
            vol.delete(0)?;
            Ok(Deletion::Deleted)
        })
    }

    fn volume_users(&self, path: &str) -> Result<Vec<VolumeUser>, HvError> {
        self.call("virConnectListAllDomains", path, |c| {
            let mut users = domain_users(c, path)?;
            users.extend(overlay_users(c, path)?);
            Ok(users)
        })
    }

    fn block_copy(
        &self,
        domain: &str,
        disk: &str,
        dest: &DiskSource,
        format: ImageFormat,
        backing: &[BackingLayer],
        options: CopyOptions,
    ) -> Result<(), HvError> {
        let dest_xml = domain_xml::copy_destination_xml(dest, format, backing);
        self.call("virDomainBlockCopy", domain, |c| {
            let dom = lookup_domain(c, domain)?;
            blockjob::block_copy(&dom, disk, &dest_xml, options)
        })
    }

    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<BlockJob>, HvError> {
        self.call("virDomainGetBlockJobInfo", domain, |c| {
            blockjob::block_job_info(&lookup_domain(c, domain)?, disk)
        })
    }

    fn block_job_abort(&self, domain: &str, disk: &str, pivot: bool) -> Result<(), HvError> {
        self.call("virDomainBlockJobAbort", domain, |c| {
            blockjob::block_job_abort(&lookup_domain(c, domain)?, disk, pivot)
        })
    }

    fn block_job_set_speed(&self, domain: &str, disk: &str, bandwidth: u64) -> Result<(), HvError> {
        self.call("virDomainBlockJobSetSpeed", domain, |c| {
            blockjob::block_job_set_speed(&lookup_domain(c, domain)?, disk, bandwidth)
        })
    }

    fn update_persistent_disk(
        &self,
        domain: &str,
        disk: &str,
        source: &DiskSource,
        format: ImageFormat,
        backing: &[BackingLayer],
    ) -> Result<(), HvError> {
        let xml = self.domain_xml(domain, Definition::Persistent)?;
        let current = domain_xml::find_disk(&xml, disk)
            .map_err(HvError::BadXml)?
            .ok_or_else(|| HvError::NoDisk {
                domain: domain.to_string(),
                disk: disk.to_string(),
            })?;
        let new_xml = domain_xml::retarget_disk(current, source, format, backing).to_xml();
        self.call("virDomainUpdateDeviceFlags", domain, |c| {
            let dom = lookup_domain(c, domain)?;
            dom.update_device_flags(&new_xml, sys::VIR_DOMAIN_AFFECT_CONFIG)?;
            Ok(())
        })
    }

    fn checkpoints(&self, domain: &str) -> Result<Vec<Checkpoint>, HvError> {
        let docs = self.call("virDomainCheckpointGetXMLDesc", domain, |c| {
            checkpoint::sized_descriptions(&lookup_domain(c, domain)?)
        })?;
        docs.iter()
            .map(|xml| checkpoint_xml::parse_checkpoint(xml).map_err(HvError::BadXml))
            .collect()
    }

    fn redefine_checkpoint(
        &self,
        domain: &str,
        name: &str,
        disk: &str,
        source: &DiskSource,
        format: ImageFormat,
    ) -> Result<(), HvError> {
        let _rewriting = self
            .checkpoint_rewrite
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let xml = self.call("virDomainCheckpointGetXMLDesc", name, |c| {
            checkpoint::full_description(&lookup_domain(c, domain)?, name)
        })?;
        let moved = checkpoint_xml::retarget_checkpoint(&xml, disk, source, format)
            .map_err(HvError::BadXml)?;
        self.call("virDomainCheckpointCreateXML", name, |c| {
            checkpoint::redefine_validated(&lookup_domain(c, domain)?, &moved)
        })
    }

    fn qcow2_internal_snapshots(&self, source: &DiskSource) -> Result<u32, HvError> {
        match source {
            DiskSource::File { path } | DiskSource::Block { path, .. } => {
                qemu_img::internal_snapshots(path)
            }
            // RBD images hold raw data; snapshots there are Ceph's and survive a copy
            // only as far as Ceph keeps them, which the pool owner manages.
            DiskSource::Rbd { .. } => Ok(0),
        }
    }

    fn rbd_object_size(&self, source: &DiskSource) -> Result<Option<u64>, HvError> {
        self.with_rbd_image(source, |img| img.object_size())
    }

    fn allocated_bytes(&self, source: &DiskSource) -> Result<u64, HvError> {
        if let Some(bytes) = self.with_rbd_image(source, |img| img.allocated())? {
            return Ok(bytes);
        }
        // Straight from the file system: a pool refresh would stat every
        // volume of the pool for one number.
        let path = source.display_name();
        let meta =
            std::fs::metadata(&path).map_err(|e| HvError::NoVolume(format!("{path}: {e}")))?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if meta.file_type().is_block_device() {
            // A device is thick: all of it is spent.
            use std::io::Seek;
            return std::fs::File::open(&path)
                .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
                .map_err(|e| HvError::NoVolume(format!("{path}: {e}")));
        }
        Ok(meta.blocks() * 512)
    }

    fn disk_capacity(&self, domain: &str, disk: &str) -> Result<u64, HvError> {
        self.call("virDomainGetBlockInfo", domain, |c| {
            Ok(lookup_domain(c, domain)?.block_info(disk, 0)?.capacity)
        })
    }

    fn image_info(&self, path: &str) -> Result<ImageInfo, HvError> {
        qemu_img::image_info(path)
    }

    fn images_equal(
        &self,
        a: &str,
        a_format: ImageFormat,
        b: &str,
        b_format: ImageFormat,
    ) -> Result<bool, HvError> {
        qemu_img::images_equal(a, a_format, b, b_format)
    }

    fn copy_layer(
        &self,
        source: &str,
        dest: &VolumeIdentity,
        backing: Option<(&str, ImageFormat)>,
    ) -> Result<(), HvError> {
        // Only into the very file volmig created.
        let vol = self.check_created(dest)?;
        let format = vol
            .format
            .as_deref()
            .and_then(ImageFormat::parse)
            .unwrap_or(ImageFormat::Raw);
        qemu_img::copy_layer(source, &dest.path, format, backing)?;
        // libvirt caches a volume's allocation until its pool is refreshed.
        self.call("virStoragePoolRefresh", &dest.pool, |c| {
            c.lookup_storage_pool_by_name(&dest.pool)?.refresh(0)?;
            Ok(())
        })
    }

    fn convert_image(
        &self,
        copy: &volmig_engine::hypervisor::ImageCopy<'_>,
        progress: &dyn Fn(u64),
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), HvError> {
        // Only into the very volume volmig created.
        let dest = copy.dest;
        self.check_created(dest)?;
        crate::convert::convert(copy, progress, stop)?;
        // libvirt caches a volume's allocation until its pool is refreshed.
        self.call("virStoragePoolRefresh", &dest.pool, |c| {
            c.lookup_storage_pool_by_name(&dest.pool)?.refresh(0)?;
            Ok(())
        })
    }

    fn snapshots(&self, domain: &str) -> Result<Vec<SnapshotSpec>, HvError> {
        self.call("virDomainListAllSnapshots", domain, |c| {
            let dom = lookup_domain(c, domain)?;
            let mut specs = Vec::new();
            for snap in dom.list_all_snapshots(0)? {
                let xml = snap.xml_desc(0)?;
                specs.push(snapshot_xml::parse_snapshot(&xml).map_err(bad_xml)?);
            }
            Ok(specs)
        })
    }

    fn redefine_snapshots(
        &self,
        domain: &str,
        renames: &[(String, String)],
    ) -> Result<u32, HvError> {
        self.call("virDomainSnapshotCreateXML", domain, |c| {
            let dom = lookup_domain(c, domain)?;
            // Parents before children: a redefinition names its parent, which
            // must already be defined with its own new paths.
            let snapshots = dom.list_all_snapshots(sys::VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)?;
            let mut redefined = 0;
            for snap in snapshots {
                let current = snap.is_current(0)?;
                let xml = snap.xml_desc(sys::VIR_DOMAIN_SNAPSHOT_XML_SECURE)?;
                let new = snapshot_xml::rewrite_images(&xml, renames).map_err(bad_xml)?;
                if new == xml {
                    continue;
                }
                let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
                if current {
                    flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
                }
                dom.create_snapshot_xml(&new, flags)?;
                redefined += 1;
            }
            Ok(redefined)
        })
    }
}

impl LibvirtHost {
    /// Fails unless the volume `dest` names is still the one volmig created
    /// (same key, path and, for files, device and inode): what a copy may
    /// overwrite.
    fn check_created(&self, dest: &VolumeIdentity) -> Result<VolumeSpec, HvError> {
        let vol = self.volume(&dest.pool, &dest.name)?;
        match dest.differs_from(&vol.identity()) {
            Some(why) => Err(HvError::InvalidState(format!(
                "volume {} is not the one volmig created: {why}",
                dest.display_name()
            ))),
            None => Ok(vol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_libvirt_versions() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }
}
