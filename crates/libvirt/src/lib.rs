//! The libvirt boundary: the only module that imports `virt`.
//!
//! [`LibvirtHost`] implements [`Hypervisor`] over one cached connection to
//! libvirtd. A call that finds the connection gone (libvirtd restarted) opens a
//! new one and is retried once, so a libvirtd restart mid-migration is survived.
//! All methods block; async callers use `spawn_blocking`.

mod blockjob;
mod checkpoint;
pub mod checkpoint_xml;
pub mod domain_xml;
mod error;
pub mod pool_xml;
mod qemu_img;
mod rbd;
pub mod snapshot_xml;
pub mod xml_tree;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use blockjob::CallError;
use volmig_engine::hypervisor::{
    BackingLayer, BlockJob, CallObserver, Checkpoint, CopyOptions, Definition, Deletion,
    DiskSource, DiskSpec, DomainState, FileId, HostInfo, HvError, Hypervisor, ImageFormat,
    ImageInfo, NewVolume, PoolRunState, PoolSpec, SnapshotSpec, VolumeIdentity, VolumeSpec,
    VolumeUser,
};

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

    /// Opens an rbd disk source with its credentials: the key from the libvirt
    /// secret, or, where libvirt keeps it private, from the user's keyring.
    fn with_rbd_image<T>(
        &self,
        source: &DiskSource,
        f: impl Fn(&rbd::RbdImage<'_>) -> Result<T, HvError>,
    ) -> Result<Option<T>, HvError> {
        let DiskSource::Rbd {
            pool,
            image,
            hosts,
            auth,
        } = source
        else {
            return Ok(None);
        };
        let auth = match auth {
            None => None,
            Some(a) => {
                let from_libvirt = self
                    .call("virSecretGetValue", &a.secret_uuid, |c| {
                        Ok(c.lookup_secret_by_uuid_string(&a.secret_uuid)?.value(0)?)
                    })
                    .ok()
                    .map(|v| rbd::base64(&v));
                let key = from_libvirt
                    .or_else(|| rbd::keyring_key(&self.ceph_keyring_dir, &a.username))
                    .ok_or_else(|| {
                        HvError::Unsupported(format!(
                            "no cephx key for client.{}: libvirt keeps secret {} private and {}/ceph.client.{}.keyring does not hold it (set ceph_keyring_dir)",
                            a.username,
                            a.secret_uuid,
                            self.ceph_keyring_dir.display(),
                            a.username
                        ))
                    })?;
                Some((a.username.as_str(), key))
            }
        };
        f(&rbd::RbdImage {
            pool,
            image,
            hosts,
            auth,
        })
        .map(Some)
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn connection(&self) -> Result<Arc<Connect>, HvError> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = Connect::open(Some(&self.uri)).map_err(|e| HvError::Unreachable {
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *slot = None;
    }

    /// Runs `f` on the connection, reconnecting once if libvirtd went away;
    /// every libvirt call goes through here, so this is where they are observed.
    fn call<T>(
        &self,
        op: &'static str,
        subject: &str,
        f: impl Fn(&Connect) -> Result<T, CallError>,
    ) -> Result<T, HvError> {
        // A child of the caller's span (a migration's phase): the call's
        // duration, and its error as the span's status.
        let span = tracing::info_span!(
            "libvirt",
            otel.name = %format!("libvirt {op}"),
            call = op,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = self.call_once_reconnecting(op, subject, f);
        if let Err(e) = &result {
            tracing::debug!(error = %e, "libvirt call failed");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.to_string().as_str());
        }
        self.observer.call(op, started.elapsed(), result.is_err());
        result
    }

    fn call_once_reconnecting<T>(
        &self,
        op: &'static str,
        subject: &str,
        f: impl Fn(&Connect) -> Result<T, CallError>,
    ) -> Result<T, HvError> {
        let mut retried = false;
        loop {
            let conn = self.connection()?;
            match f(&conn) {
                Ok(v) => return Ok(v),
                Err(CallError::Libvirt(e))
                    if !retried
                        && (error::is_connection_lost(&e) || !conn.is_alive().unwrap_or(false)) =>
                {
                    tracing::warn!(uri = %self.uri, op, "libvirt connection lost, reconnecting");
                    self.forget_connection();
                    retried = true;
                }
                Err(CallError::Libvirt(e)) => {
                    if error::is_connection_lost(&e) {
                        // Still lost after a fresh connection: libvirtd is down or restarting.
                        self.forget_connection();
                        return Err(HvError::Unreachable {
                            uri: self.uri.clone(),
                            message: e.message().to_string(),
                        });
                    }
                    return Err(error::classify(op, subject, &self.uri, e));
                }
                Err(CallError::BadXml(e)) => return Err(HvError::BadXml(e)),
                Err(CallError::Nul(s)) => {
                    return Err(HvError::InvalidArgument(format!(
                        "'{s}' contains a NUL byte"
                    )))
                }
            }
        }
    }
}

fn lookup_domain(conn: &Connect, name_or_uuid: &str) -> Result<Domain, CallError> {
    if looks_like_uuid(name_or_uuid) {
        if let Ok(dom) = conn.lookup_domain_by_uuid_string(name_or_uuid) {
            return Ok(dom);
        }
    }
    Ok(conn.lookup_domain_by_name(name_or_uuid)?)
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn pool_state(raw: u32) -> PoolRunState {
    match raw {
        sys::VIR_STORAGE_POOL_BUILDING => PoolRunState::Building,
        sys::VIR_STORAGE_POOL_RUNNING => PoolRunState::Running,
        sys::VIR_STORAGE_POOL_DEGRADED => PoolRunState::Degraded,
        sys::VIR_STORAGE_POOL_INACCESSIBLE => PoolRunState::Inaccessible,
        _ => PoolRunState::Inactive,
    }
}

fn bad_xml(e: String) -> CallError {
    CallError::BadXml(e)
}

fn pool_spec(pool: &StoragePool) -> Result<PoolSpec, CallError> {
    let info = pool.info()?;
    let provisioned = if pool.is_active()? {
        pool.list_all_volumes(0)?
            .iter()
            .filter_map(|v| v.info().ok())
            .map(|i| i.capacity)
            .sum()
    } else {
        0
    };
    let xml = pool_xml::parse_pool(&pool.xml_desc(0)?).map_err(bad_xml)?;
    Ok(PoolSpec {
        name: pool.name()?,
        uuid: pool.uuid_string()?,
        pool_type: xml.pool_type,
        state: pool_state(info.state),
        capacity: info.capacity,
        allocation: info.allocation,
        available: info.available,
        provisioned,
        target_path: xml.target_path,
        source_hosts: xml.hosts,
        source_dir: xml.source_dir,
        source_devices: xml.devices,
        source_name: xml.source_name,
        auth: xml.auth,
    })
}

fn volume_spec(vol: &StorageVol) -> Result<VolumeSpec, CallError> {
    let info = vol.info()?;
    let pool = vol.lookup_storage_pool()?;
    let path = vol.path()?;
    let file_id = (info.kind == sys::VIR_STORAGE_VOL_FILE)
        .then(|| file_id(&path))
        .flatten();
    Ok(VolumeSpec {
        pool: pool.name()?,
        name: vol.name()?,
        key: vol.key()?,
        file_id,
        path,
        capacity: info.capacity,
        allocation: info.allocation,
        format: pool_xml::parse_volume_format(&vol.xml_desc(0)?).map_err(bad_xml)?,
    })
}

fn file_id(path: &str) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
        born_ns: m
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64),
    })
}

/// Whether two image names from libvirt denote the same image: equal names, or
/// two paths to one file (a symlink or a second mount of the same directory).
fn same_image(a: &str, b: &str) -> bool {
    a == b
        || (a.starts_with('/')
            && file_id(a).is_some_and(|id| file_id(b).is_some_and(|other| id.same_file(&other))))
}

/// Skips an object that vanished while it was being looked at (another
/// client undefined the domain or removed the pool or volume): what no longer
/// exists uses nothing. Every other error is passed on.
fn unless_vanished<T>(r: Result<T, virt::error::Error>) -> Result<Option<T>, CallError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if error::is_vanished(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Domain disks that refer to `path`, in the live and persistent definitions.
fn domain_users(conn: &Connect, path: &str) -> Result<Vec<VolumeUser>, CallError> {
    let mut users = Vec::new();
    for dom in conn.list_all_domains(0)? {
        let Some((name, uuid, definitions)) = unless_vanished((|| {
            let mut definitions = Vec::new();
            if dom.is_active()? {
                definitions.push((true, dom.xml_desc(0)?));
            }
            if dom.is_persistent()? {
                definitions.push((false, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?));
            }
            Ok((dom.name()?, dom.uuid_string()?, definitions))
        })())?
        else {
            continue;
        };
        for (live, xml) in definitions {
            for r in domain_xml::image_refs(&xml).map_err(bad_xml)? {
                if !same_image(&r.name, path) {
                    continue;
                }
                let mut how = if r.backing { "backing file" } else { "source" }.to_string();
                if r.read_only {
                    how.push_str(" (read-only)");
                }
                if r.shareable {
                    how.push_str(" (shareable)");
                }
                users.push(VolumeUser::Domain {
                    domain: name.clone(),
                    uuid: uuid.clone(),
                    target: r.target,
                    live,
                    how,
                });
            }
        }
    }
    Ok(users)
}

/// Volumes of the active pools whose backing file is `path`.
fn overlay_users(conn: &Connect, path: &str) -> Result<Vec<VolumeUser>, CallError> {
    let mut users = Vec::new();
    for pool in conn.list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)? {
        let _ = pool.refresh(0);
        let Some((pool_name, volumes)) =
            unless_vanished((|| Ok((pool.name()?, pool.list_all_volumes(0)?)))())?
        else {
            continue;
        };
        for vol in volumes {
            let Some((xml, name)) = unless_vanished((|| Ok((vol.xml_desc(0)?, vol.name()?)))())?
            else {
                continue;
            };
            let Some(backing) = pool_xml::parse_volume_backing(&xml).map_err(bad_xml)? else {
                continue;
            };
            if same_image(&backing, path) {
                users.push(VolumeUser::Backing {
                    pool: pool_name.clone(),
                    volume: name,
                });
            }
        }
    }
    Ok(users)
}

fn refresh_active_pools(conn: &Connect) -> Result<(), CallError> {
    for pool in conn.list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)? {
        // A pool that fails to refresh (e.g. an unreachable NFS server) must not
        // hide volumes of the others.
        let _ = pool.refresh(0);
    }
    Ok(())
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
            c.list_all_storage_pools(0)?.iter().map(pool_spec).collect()
        })
    }

    fn pool(&self, name: &str) -> Result<PoolSpec, HvError> {
        self.call("virStoragePoolLookupByName", name, |c| {
            let pool = c.lookup_storage_pool_by_name(name)?;
            if pool.is_active()? {
                // Stale capacity numbers would defeat the space check.
                let _ = pool.refresh(0);
            }
            pool_spec(&pool)
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
        // Only into the very file volmig created: checked by identity first.
        let vol = self.volume(&dest.pool, &dest.name)?;
        if let Some(why) = dest.differs_from(&vol.identity()) {
            return Err(HvError::InvalidState(format!(
                "volume {} is not the one volmig created: {why}",
                dest.display_name()
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_uuids() {
        assert!(looks_like_uuid("6f1c0e9a-1b2c-4d3e-8f90-0123456789ab"));
        assert!(!looks_like_uuid("vm-6f1c0e9a-1b2c-4d3e-8f90-01234567"));
        assert!(!looks_like_uuid("guest"));
    }

    #[test]
    fn formats_libvirt_versions() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }
}
