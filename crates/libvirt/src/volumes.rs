//! Storage volumes: their identity as a `VolumeSpec`, whether two names
//! denote one image, and the volumes backed by an image.

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::sys;
use volmig_engine::hypervisor::{FileId, VolumeSpec, VolumeUser};

use crate::connection::{bad_xml, unless_vanished, CallError};
use crate::pool_xml;

pub(crate) fn volume_spec(vol: &StorageVol) -> Result<VolumeSpec, CallError> {
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

/// The volumes of pool `name`, at most `limit + 1` of them read in detail;
/// `None` when the pool is not active. A volume deleted while it is read is
/// left out.
pub(crate) fn pool_volumes(
    conn: &Connect,
    name: &str,
    limit: usize,
) -> Result<Option<Vec<VolumeSpec>>, CallError> {
    let pool = conn.lookup_storage_pool_by_name(name)?;
    if !pool.is_active()? {
        return Ok(None);
    }
    // Files added behind libvirt's back are listed only after a refresh; a
    // failed refresh (an unreachable NFS server) still lists what is known.
    let _ = pool.refresh(0);
    let mut specs = Vec::new();
    for vol in pool
        .list_all_volumes(0)?
        .iter()
        .take(limit.saturating_add(1))
    {
        let spec = match volume_spec(vol) {
            Err(CallError::Libvirt(e)) => unless_vanished(Err(e))?,
            other => Some(other?),
        };
        specs.extend(spec);
    }
    Ok(Some(specs))
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
pub(crate) fn same_image(a: &str, b: &str) -> bool {
    a == b
        || (a.starts_with('/')
            && file_id(a).is_some_and(|id| file_id(b).is_some_and(|other| id.same_file(&other))))
}

/// Volumes of the active pools whose backing file is `path`.
pub(crate) fn overlay_users(conn: &Connect, path: &str) -> Result<Vec<VolumeUser>, CallError> {
    let mut users = Vec::new();
    for pool in conn.list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)? {
        let _ = pool.refresh(0);
        let listed = (|| Ok((pool.name()?, pool.list_all_volumes(0)?)))();
        // A pool stopped after it was listed as active refuses to list its
        // volumes: it is then like a pool that was never listed, as one
        // removed meanwhile is.
        let listed = match listed {
            Err(e) if pool.is_active().is_ok_and(|active| !active) => {
                tracing::debug!(error = %e, "pool stopped while looking for overlay users");
                continue;
            }
            other => other,
        };
        let Some((pool_name, volumes)) = unless_vanished(listed)? else {
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
