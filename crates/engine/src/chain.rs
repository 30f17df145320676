//! SHALLOW migrations: which read-only layers of a disk's backing chain the
//! destination pool already holds, which must be copied, and which libvirt
//! snapshots can follow the chain.
//!
//! A layer is reused only when it is provably the same image: a volume of the
//! layer's name in the destination pool, of the same format and virtual size,
//! whose backing link names the destination's copy of the layer below (or
//! none, for the bottom), and whose contents `qemu-img compare` finds equal to
//! the source layer's, read through both chains ([`prove_reuse`], run right
//! before anything is created). A name alone proves nothing (another
//! template may carry it), and a checksum recorded when volmig copied a
//! layer would prove only what the file held then: the comparison proves
//! what the guest will read.

use crate::error::Error;
use crate::hypervisor::{
    DiskKind, DiskSource, DiskSpec, DomainState, Hypervisor, ImageFormat, PoolSpec,
    SnapshotDiskMode,
};
use crate::journal::ChainLayer;
use crate::model::ChainPolicy;
use crate::validate;

/// Where the disk's top image goes, as validation resolved it.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The destination pool.
    pub pool: &'a PoolSpec,
    /// How its volumes are addressed.
    pub kind: DiskKind,
    /// The top image's format there.
    pub format: ImageFormat,
    /// The top image's volume name there.
    pub volume: &'a str,
    /// The pool's volume names.
    pub existing: &'a [String],
}

/// The layers below `disk`'s top image, bottom first, with the destination
/// pool's copy of each: reused when the pool already holds it, else to copy.
/// Empty when the disk has no backing chain.
pub fn plan_layers(
    hv: &dyn Hypervisor,
    disk: &DiskSpec,
    source_format: ImageFormat,
    dest: &Target<'_>,
) -> Result<Vec<ChainLayer>, Error> {
    let Target {
        pool,
        kind: dest_kind,
        format: dest_format,
        volume: dest_volume,
        existing,
    } = *dest;
    if disk.backing.is_empty() {
        return Ok(Vec::new());
    }
    let refuse = |why: String| {
        Error::Precondition(format!(
            "chain policy SHALLOW cannot keep the backing chain of {}: {why}",
            disk.target
        ))
    };
    if dest_kind != DiskKind::File || dest_format != ImageFormat::Qcow2 {
        return Err(refuse(format!(
            "the destination must be a qcow2 file (a dir, fs or netfs pool), and pool '{}' ({}) would hold a {dest_format} volume; use FLATTEN or such a pool",
            pool.name, pool.pool_type
        )));
    }
    if source_format != ImageFormat::Qcow2 {
        return Err(refuse(format!(
            "its top image is {source_format}, not qcow2"
        )));
    }
    let mut layers = Vec::new();
    let depth = disk.backing.len();
    // Bottom (template) first: each layer's copy links to the one before it.
    for (i, layer) in disk.backing.iter().enumerate().rev() {
        let DiskSource::File { path } = &layer.source else {
            return Err(refuse(format!(
                "layer {} is not a file",
                layer.source.display_name()
            )));
        };
        let format = layer
            .format
            .as_deref()
            .and_then(ImageFormat::parse)
            .ok_or_else(|| {
                refuse(format!(
                    "layer {path} is in format {:?}; volmig keeps raw and qcow2 layers",
                    layer.format
                ))
            })?;
        if format == ImageFormat::Raw && i + 1 != depth {
            return Err(refuse(format!(
                "layer {path} is raw but has a layer below it"
            )));
        }
        let info = hv
            .image_info(path)
            .map_err(Error::unreadable(path.as_str()))?;
        let dest_name = match hv
            .volume_by_path(path)
            .map_err(Error::hv("resolving a backing layer's volume"))?
        {
            Some(v) => v.name,
            None => path.rsplit('/').next().unwrap_or_default().to_string(),
        };
        validate::volume_name("layer volume", &dest_name).map_err(|e| {
            refuse(format!(
                "layer {path} cannot keep its name in the destination pool ({e})"
            ))
        })?;
        if dest_name == dest_volume
            || layers
                .iter()
                .any(|l: &ChainLayer| l.dest_volume == dest_name)
        {
            return Err(refuse(format!(
                "two images of the chain would be named '{dest_name}' in pool '{}'",
                pool.name
            )));
        }
        let below: Option<&ChainLayer> = layers.last();
        let reused = if existing.contains(&dest_name) {
            Some(reusable(hv, pool, &dest_name, path, format, info.virtual_size, below).map_err(
                |why| {
                    Error::Precondition(format!(
                        "pool '{}' already holds a volume '{dest_name}' that is not layer {path} of {} ({why}); remove or rename it, or migrate with FLATTEN",
                        pool.name, disk.target
                    ))
                },
            )?)
        } else {
            None
        };
        layers.push(ChainLayer {
            source: path.clone(),
            format,
            capacity: info.virtual_size,
            allocation: info.actual_size,
            dest_volume: dest_name,
            reused,
        });
    }
    Ok(layers)
}

/// The volume `name` of `pool` as a reuse candidate for the layer at `path`,
/// or why it cannot be one (its contents are compared later, see [`prove_reuse`]).
fn reusable(
    hv: &dyn Hypervisor,
    pool: &PoolSpec,
    name: &str,
    path: &str,
    format: ImageFormat,
    capacity: u64,
    below: Option<&ChainLayer>,
) -> Result<crate::hypervisor::VolumeIdentity, String> {
    let vol = hv.volume(&pool.name, name).map_err(|e| e.to_string())?;
    let info = hv.image_info(&vol.path).map_err(|e| e.to_string())?;
    if info.format != format.as_str() {
        return Err(format!("it is {}, the layer {format}", info.format));
    }
    if info.virtual_size != capacity {
        return Err(format!(
            "its virtual size is {} bytes, the layer's {capacity}",
            info.virtual_size
        ));
    }
    let wanted = match below {
        None => None,
        Some(ChainLayer {
            reused: Some(v), ..
        }) => Some(v.path.as_str()),
        Some(l) => {
            return Err(format!(
                "the layer below it ({}) is not in the pool yet",
                l.source
            ))
        }
    };
    if info.backing.as_deref() != wanted {
        return Err(format!(
            "its backing file is {:?}, expected {:?}",
            info.backing, wanted
        ));
    }
    if vol.path == path {
        return Err("it is the source layer itself".to_string());
    }
    Ok(vol.identity())
}

/// Proves each layer planned for reuse equal to its source layer (`qemu-img
/// compare`, both read through their chains); refuses the migration otherwise.
pub fn prove_reuse(hv: &dyn Hypervisor, layers: &[ChainLayer]) -> Result<(), Error> {
    for layer in layers {
        let Some(reused) = &layer.reused else {
            continue;
        };
        let equal = hv
            .images_equal(&layer.source, layer.format, &reused.path, layer.format)
            .map_err(Error::hv(format!(
                "comparing layer {} with {}",
                layer.source, reused.path
            )))?;
        if !equal {
            return Err(Error::Precondition(format!(
                "volume {} has the name, format, size and backing link of layer {} but not the same contents; remove or rename it, or migrate with FLATTEN",
                reused.display_name(),
                layer.source
            )));
        }
    }
    Ok(())
}

/// Bytes the destination pool spends on the layers it does not hold yet.
pub fn layers_to_copy_bytes(layers: &[ChainLayer]) -> u64 {
    layers
        .iter()
        .filter(|l| l.reused.is_none())
        .map(|l| l.allocation)
        .sum()
}

/// Whether the domain's libvirt snapshots can follow this migration, and how
/// many there are to redefine afterwards. Only disk-only external snapshots
/// survive, and only when the chain is kept (SHALLOW): a flattened copy has no
/// layers for them to name, a memory state cannot be carried by a disk copy,
/// and internal snapshots live inside an image the mirror does not copy.
pub fn check_snapshots(
    hv: &dyn Hypervisor,
    domain: &DomainState,
    target: &str,
    policy: ChainPolicy,
) -> Result<u32, Error> {
    if domain.snapshots == 0 {
        return Ok(0);
    }
    let name = &domain.name;
    if policy != ChainPolicy::Shallow {
        return Err(Error::Precondition(format!(
            "domain '{name}' has {} snapshot(s) that a flattening copy would orphan: migrate with chain policy SHALLOW (disk-only external snapshots follow the chain), or delete them first (`virsh snapshot-list {name}`)",
            domain.snapshots
        )));
    }
    let snapshots = hv
        .snapshots(name)
        .map_err(Error::hv(format!("listing the snapshots of '{name}'")))?;
    for s in &snapshots {
        if s.has_memory {
            return Err(Error::Precondition(format!(
                "snapshot '{}' of '{name}' holds the guest's memory ({}), which a live disk copy cannot carry; delete it (`virsh snapshot-delete {name} {}`), or stop the guest and move its volumes offline",
                s.name, s.state, s.name
            )));
        }
        if let Some((disk, _)) = s
            .disks
            .iter()
            .find(|(_, mode)| *mode == SnapshotDiskMode::Internal)
        {
            return Err(Error::Precondition(format!(
                "snapshot '{}' of '{name}' is internal to disk {disk} (inside the qcow2 image), which a block copy does not carry; delete it (`virsh snapshot-delete {name} {}`), or take external disk-only snapshots instead",
                s.name, s.name
            )));
        }
    }
    tracing::debug!(
        target,
        count = snapshots.len(),
        "snapshots follow the chain"
    );
    Ok(snapshots.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(source: &str, allocation: u64, reused: bool) -> ChainLayer {
        ChainLayer {
            source: source.into(),
            format: ImageFormat::Qcow2,
            capacity: 1 << 30,
            allocation,
            dest_volume: source.rsplit('/').next().unwrap_or_default().into(),
            reused: reused.then(|| crate::hypervisor::VolumeIdentity {
                pool: "p".into(),
                name: "t".into(),
                key: "/p/t".into(),
                path: "/p/t".into(),
                file_id: None,
            }),
        }
    }

    #[test]
    fn only_layers_the_pool_lacks_cost_space() {
        let layers = [
            layer("/a/tmpl", 1 << 30, true),
            layer("/a/d1", 5 << 20, false),
            layer("/a/d2", 3 << 20, false),
        ];
        assert_eq!(layers_to_copy_bytes(&layers), 8 << 20);
        assert_eq!(layers_to_copy_bytes(&[]), 0);
    }
}
