//! Offline moves: the disks of a domain that is defined but not running,
//! copied with `qemu-img convert` instead of a block copy (no QEMU runs to
//! mirror them), then the persistent definition switched. What validation
//! checks for them alone lives here; the job's steps are in
//! `engine::job::offline`.

use crate::error::Error;
use crate::hypervisor::{DiskKind, DiskSource, DomainState, Hypervisor};
use crate::model::{ChainPolicy, MigrationRequest};

/// Refuses an offline move of `domain` that the request did not opt into, or
/// that would lose what only a live copy carries.
pub(crate) fn check(domain: &DomainState, req: &MigrationRequest) -> Result<(), Error> {
    if !req.options.offline_if_stopped {
        return Err(Error::Precondition(format!(
            "domain '{}' is not running; live migration needs a running guest (set offline_if_stopped, `volmig migrate --offline-if-stopped`, to copy a stopped guest's disk offline)",
            domain.name
        )));
    }
    if !domain.persistent {
        return Err(Error::Precondition(format!(
            "domain '{}' is not running and has no persistent definition to switch",
            domain.name
        )));
    }
    if domain.checkpoints > 0 {
        // Their bitmaps live in the image; a convert does not carry them.
        return Err(Error::Precondition(format!(
            "domain '{}' has {} checkpoint(s), which an offline copy would lose; start the guest and move it live",
            domain.name, domain.checkpoints
        )));
    }
    if req.options.chain == ChainPolicy::Shallow {
        return Err(Error::Precondition(
            "an offline move flattens the disk's backing chain into its copy; chain policy SHALLOW is not supported offline".to_string(),
        ));
    }
    Ok(())
}

/// The destination must be a path `qemu-img` can write.
pub(crate) fn check_destination(kind: DiskKind, pool: &str) -> Result<(), Error> {
    if kind == DiskKind::Network {
        return Err(Error::Precondition(format!(
            "pool '{pool}' holds network (rbd) volumes; offline moves go to file and block pools only"
        )));
    }
    Ok(())
}

/// The virtual size of a stopped guest's disk, from its image header.
pub(crate) fn image_capacity(hv: &dyn Hypervisor, source: &DiskSource) -> Result<u64, Error> {
    if let DiskSource::Rbd { .. } = source {
        return Err(Error::Precondition(format!(
            "disk {} is an rbd image; offline moves copy file and block disks only",
            source.display_name()
        )));
    }
    let path = source.display_name();
    let info = hv
        .image_info(&path)
        .map_err(Error::unreadable(path.clone()))?;
    match source {
        // A storage slice presents only its first bytes to the guest.
        DiskSource::Block {
            slice_size: Some(size),
            ..
        } => Ok(*size),
        _ => Ok(info.virtual_size),
    }
}
