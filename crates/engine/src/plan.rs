//! Validation: turns a request into a [`Plan`] or a precise refusal.
//!
//! Runs against the hypervisor before a migration is accepted, and again as
//! the VALIDATING phase right before anything is changed, because the world may
//! have moved in between (the guest stopped, the pool filled up).

use crate::chain;
use crate::error::Error;
use crate::hypervisor::{
    space_needed, Checkpoint, DiskKind, DiskSource, DiskSpec, Hypervisor, ImageFormat,
    PoolRunState, PoolSpec,
};
use crate::journal::Plan;
use crate::model::{ChainPolicy, MigrationRequest};

/// Space kept free beyond the data to copy: qcow2 metadata and rounding.
const SPACE_MARGIN: u64 = 16 * 1024 * 1024;

/// Checks the request against the host and resolves everything a migration needs.
pub fn plan(hv: &dyn Hypervisor, req: &MigrationRequest) -> Result<Plan, Error> {
    plan_with_need(hv, req).map(|(plan, _)| plan)
}

/// What one disk's copy writes into its destination pool, before the margin:
/// the copy of its image (with the layers FLATTEN merges into it) and the
/// backing layers SHALLOW copies because the pool lacks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    data: u64,
    layers: u64,
}

impl Need {
    /// `source_allocation` counts, or the whole virtual size when it is unknown
    /// or the pool is of block devices.
    fn new(kind: DiskKind, capacity: u64, source_allocation: Option<u64>, layers: u64) -> Self {
        Need {
            data: space_needed(kind, capacity, source_allocation.unwrap_or(capacity)),
            layers,
        }
    }

    fn bytes(self) -> u64 {
        self.data.saturating_add(self.layers)
    }
}

/// [`plan`], with the bytes the disk needs in its destination pool, for
/// checking disks that share a pool together ([`check_space_together`]).
pub fn plan_with_need(hv: &dyn Hypervisor, req: &MigrationRequest) -> Result<(Plan, Need), Error> {
    let domain = hv.domain(&req.domain).map_err(|e| match e {
        crate::hypervisor::HvError::NoDomain(_) => Error::DomainNotFound(req.domain.clone()),
        other => Error::hv(format!("looking up domain '{}'", req.domain))(other),
    })?;
    let offline = !domain.active;
    if offline {
        crate::offline::check(&domain, req)?;
    }
    // A stopped domain has no live definition: its persistent one is what it
    // will boot from, and what an offline move switches.
    let definition = if offline {
        crate::hypervisor::Definition::Persistent
    } else {
        crate::hypervisor::Definition::Live
    };
    let disks = hv
        .disks(&domain.name, definition)
        .map_err(Error::hv(format!("reading the disks of '{}'", domain.name)))?;
    let disk = find_disk(&disks, &req.disk).ok_or_else(|| Error::DiskNotFound {
        domain: domain.name.clone(),
        disk: req.disk.clone(),
        known: disks
            .iter()
            .map(|d| d.target.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    check_disk_writable(&domain.name, disk)?;
    // A stopped domain has no QEMU, so no block job (libvirt answers an error).
    if disk.mirror.is_some()
        || !offline
            && hv
                .block_job(&domain.name, &disk.target)
                .map_err(Error::hv("reading block jobs"))?
                .is_some()
    {
        return Err(Error::Precondition(format!(
            "disk {} of '{}' already has a block job (copy, commit or pull) running; wait for it or abort it with `virsh blockjob {} {} --abort`",
            disk.target, domain.name, domain.name, disk.target
        )));
    }
    let Some(source) = disk.source.clone() else {
        return Err(Error::Precondition(format!(
            "disk {} of '{}' has no source volmig can migrate (only file, block and rbd disks)",
            disk.target, domain.name
        )));
    };
    let source_format = match disk.format.as_deref() {
        Some(f) => ImageFormat::parse(f).ok_or_else(|| {
            Error::Precondition(format!(
                "disk {} is in format '{f}'; volmig migrates raw and qcow2 disks",
                disk.target
            ))
        })?,
        None => ImageFormat::Raw,
    };
    if source_format == ImageFormat::Qcow2 {
        let snapshots = hv
            .qcow2_internal_snapshots(&source)
            .map_err(Error::unreadable(source.display_name()))?;
        if snapshots > 0 {
            return Err(Error::Precondition(format!(
                "disk {} ({}) holds {snapshots} qcow2 internal snapshot(s) that a block copy would lose; list them with `qemu-img snapshot -l -U {}` and delete them first",
                disk.target,
                source.display_name(),
                source.display_name()
            )));
        }
    }
    let snapshots = chain::check_snapshots(hv, &domain, &disk.target, req.options.chain)?;

    let source_volume = hv
        .volume_by_path(&source.display_name())
        .map_err(Error::hv("resolving the source volume"))?;
    let capacity = if offline {
        // No QEMU to ask: the image header says what the guest would see.
        crate::offline::image_capacity(hv, &source)?
    } else {
        hv.disk_capacity(&domain.name, &disk.target)
            .map_err(Error::hv("reading the disk's virtual size"))?
    };

    let pool = hv.pool(&req.destination_pool).map_err(|e| match e {
        crate::hypervisor::HvError::NoPool(_) => Error::PoolNotFound(req.destination_pool.clone()),
        other => Error::hv(format!("reading pool '{}'", req.destination_pool))(other),
    })?;
    if pool.state != PoolRunState::Running {
        return Err(Error::Precondition(format!(
            "storage pool '{}' is not active ({:?}); start it with `virsh pool-start {}`",
            pool.name, pool.state, pool.name
        )));
    }
    if source_volume.as_ref().map(|v| v.pool.as_str()) == Some(pool.name.as_str()) {
        return Err(Error::Precondition(format!(
            "disk {} is already in pool '{}'; choose a different destination pool",
            disk.target, pool.name
        )));
    }
    let dest_kind = pool.disk_kind().ok_or_else(|| {
        Error::Precondition(format!(
            "pool '{}' is of type '{}', which volmig cannot migrate to (supported: dir, fs, netfs, logical, disk, iscsi, rbd)",
            pool.name, pool.pool_type
        ))
    })?;
    if offline {
        crate::offline::check_destination(dest_kind, &pool.name)?;
    }
    let dest_format = destination_format(req, &pool, dest_kind, source_format)?;
    if domain.checkpoints > 0 {
        let checkpoints = hv.checkpoints(&domain.name).map_err(Error::hv(format!(
            "reading the checkpoints of '{}'",
            domain.name
        )))?;
        let dest = (&pool, dest_format, req.destination_format.is_some());
        check_checkpoints(&domain.name, disk, &checkpoints, dest)?;
        let tracked = checkpoints
            .iter()
            .any(|c| c.bitmap_on(&disk.target).is_some());
        if tracked && req.options.chain == ChainPolicy::Shallow && !disk.backing.is_empty() {
            // libvirt merges only the top image's bitmaps into the new top at the
            // pivot; bitmaps kept in the layers below were never tried here.
            return Err(Error::Precondition(format!(
                "disk {} of '{}' is tracked by checkpoint(s) and has a backing chain; chain policy SHALLOW does not carry checkpoints yet: migrate with FLATTEN (the default), which keeps them",
                disk.target, domain.name
            )));
        }
    }
    // Listed after a refresh, so partitions and files made behind libvirt's back
    // count too: every pool type is checked for an existing volume of the name.
    let existing = hv.volume_names(&pool.name).map_err(Error::hv(format!(
        "listing volumes of pool '{}'",
        pool.name
    )))?;
    let dest_volume = match (&req.destination_volume, pool.pool_type.as_str()) {
        (Some(name), _) => name.clone(),
        // libvirt names a disk pool's volumes after the partition they become and
        // refuses any other name.
        (None, "disk") => {
            let device = pool.source_devices.first().ok_or_else(|| {
                Error::Precondition(format!("disk pool '{}' names no source device", pool.name))
            })?;
            next_partition_name(device, &existing)
        }
        (None, _) => default_volume_name(&source, source_volume.as_ref().map(|v| v.name.as_str())),
    };
    if existing.contains(&dest_volume) {
        return Err(Error::DestinationExists {
            pool: pool.name.clone(),
            volume: dest_volume,
        });
    }
    let layers = match req.options.chain {
        ChainPolicy::Shallow => chain::plan_layers(
            hv,
            disk,
            source_format,
            &chain::Target {
                pool: &pool,
                kind: dest_kind,
                format: dest_format,
                volume: &dest_volume,
                existing: &existing,
            },
        )?,
        ChainPolicy::Flatten => Vec::new(),
    };
    let (data, flattened) = match req.options.chain {
        ChainPolicy::Flatten if !disk.backing.is_empty() => (
            Some(flattened_allocation(
                hv,
                &source,
                source_volume.as_ref(),
                disk,
                capacity,
            )?),
            disk.backing.len(),
        ),
        _ => (
            top_allocation(hv, &source, source_volume.as_ref(), &layers),
            0,
        ),
    };
    let need = Need::new(
        dest_kind,
        capacity,
        data,
        chain::layers_to_copy_bytes(&layers),
    );
    check_space(&pool, need, flattened)?;

    let plan = Plan {
        domain: domain.name,
        domain_uuid: domain.uuid,
        target: disk.target.clone(),
        source,
        source_format,
        source_volume: source_volume.as_ref().map(|v| v.identity()),
        capacity,
        dest_pool: pool.name,
        dest_volume,
        dest_format,
        chain: layers,
        snapshots,
        offline,
    };
    Ok((plan, need))
}

/// The bytes the copy of the disk's own image costs: its pool volume's
/// allocation; when only the top of a chain is copied, the top image's alone
/// (a pool may not know a file that is a domain's private overlay).
fn top_allocation(
    hv: &dyn Hypervisor,
    source: &DiskSource,
    volume: Option<&crate::hypervisor::VolumeSpec>,
    layers: &[crate::journal::ChainLayer],
) -> Option<u64> {
    if let Some(v) = volume {
        return Some(v.allocation);
    }
    if layers.is_empty() {
        return None;
    }
    hv.image_info(&source.display_name())
        .ok()
        .map(|i| i.actual_size)
}

/// The bytes a flattening copy of a chained disk writes at most
/// ([`crate::hypervisor::flattened_allocation`]), from the allocations the
/// host reports for the top and each backing layer.
fn flattened_allocation(
    hv: &dyn Hypervisor,
    source: &DiskSource,
    volume: Option<&crate::hypervisor::VolumeSpec>,
    disk: &DiskSpec,
    capacity: u64,
) -> Result<u64, Error> {
    let top = match volume {
        Some(v) => v.allocation,
        None => hv
            .allocated_bytes(source)
            .map_err(Error::unreadable(source.display_name()))?,
    };
    let backing = disk
        .backing
        .iter()
        .map(|layer| {
            hv.allocated_bytes(&layer.source)
                .map_err(Error::unreadable(layer.source.display_name()))
        })
        .collect::<Result<Vec<u64>, Error>>()?;
    Ok(crate::hypervisor::flattened_allocation(
        top, backing, capacity,
    ))
}

fn find_disk<'a>(disks: &'a [DiskSpec], wanted: &str) -> Option<&'a DiskSpec> {
    disks.iter().find(|d| d.target == wanted).or_else(|| {
        disks
            .iter()
            .find(|d| d.source.as_ref().map(DiskSource::display_name).as_deref() == Some(wanted))
    })
}

fn check_disk_writable(domain: &str, disk: &DiskSpec) -> Result<(), Error> {
    let why = if disk.device != "disk" {
        Some(format!("is a {} device", disk.device))
    } else if disk.read_only {
        Some("is read-only".to_string())
    } else if disk.shareable {
        Some("is shareable (a copy would split the writers)".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Precondition(format!(
            "disk {} of '{domain}' {why}; only writable, unshared disks can be live-migrated",
            disk.target
        ))),
        None => Ok(()),
    }
}

/// Refuses what would lose the checkpoints that track `disk`: libvirt carries
/// their bitmaps across the pivot into a qcow2 destination (and silently drops
/// them anywhere else), and copies only bitmaps that are valid to begin with.
fn check_checkpoints(
    domain: &str,
    disk: &DiskSpec,
    checkpoints: &[Checkpoint],
    (pool, dest_format, asked): (&PoolSpec, ImageFormat, bool),
) -> Result<(), Error> {
    let tracking: Vec<&str> = checkpoints
        .iter()
        .filter(|c| c.bitmap_on(&disk.target).is_some())
        .map(|c| c.name.as_str())
        .collect();
    if tracking.is_empty() {
        return Ok(());
    }
    let first = tracking[0];
    if dest_format != ImageFormat::Qcow2 {
        let why = if pool.disk_kind() != Some(DiskKind::File) {
            format!(
                "pool '{}' ({}) holds raw volumes only",
                pool.name, pool.pool_type
            )
        } else if asked {
            format!("the request asks for {dest_format}")
        } else {
            format!("the source is {dest_format} and the request names no format")
        };
        return Err(Error::Precondition(format!(
            "disk {} of '{domain}' is tracked by checkpoint(s) {} (incremental-backup dirty bitmaps); the destination would be {dest_format} because {why}, and only qcow2 can hold persistent bitmaps, so the next incremental backup would fail; migrate to a file pool as qcow2, or delete the checkpoints (`virsh checkpoint-delete {domain} {first} --metadata`) and take a full backup afterwards",
            disk.target,
            tracking.join(", ")
        )));
    }
    // libvirt validates a checkpoint's bitmaps on all its disks at once, so one
    // already broken on another disk would fail the validation after the pivot.
    let broken: Vec<(&str, &str)> = checkpoints
        .iter()
        .filter(|c| c.bitmap_on(&disk.target).is_some())
        .flat_map(|c| {
            c.disks
                .iter()
                .filter(|d| d.bitmap.is_some() && d.dirty_bytes.is_none())
                .map(move |d| (c.name.as_str(), d.target.as_str()))
        })
        .collect();
    if let Some((name, _)) = broken.first() {
        let listed: Vec<String> = broken
            .iter()
            .map(|(c, d)| format!("{c} (disk {d})"))
            .collect();
        return Err(Error::Precondition(format!(
            "checkpoint(s) {} of '{domain}' have no valid bitmap already (libvirt cannot compute their size), so they cannot be carried with disk {}; delete them (`virsh checkpoint-delete {domain} {name} --metadata`) and take a full backup after the migration",
            listed.join(", "),
            disk.target
        )));
    }
    Ok(())
}

fn destination_format(
    req: &MigrationRequest,
    pool: &PoolSpec,
    kind: DiskKind,
    source_format: ImageFormat,
) -> Result<ImageFormat, Error> {
    match (kind, req.destination_format) {
        (DiskKind::File, Some(f)) => Ok(f),
        (DiskKind::File, None) => Ok(source_format),
        (_, None) | (_, Some(ImageFormat::Raw)) => Ok(ImageFormat::Raw),
        (_, Some(ImageFormat::Qcow2)) => Err(Error::Precondition(format!(
            "pool '{}' ({}) holds raw volumes only; ask for raw or leave the format unset",
            pool.name, pool.pool_type
        ))),
    }
}

fn default_volume_name(source: &DiskSource, source_volume: Option<&str>) -> String {
    if let Some(name) = source_volume {
        return name.to_string();
    }
    match source {
        DiskSource::File { path } | DiskSource::Block { path, .. } => path
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("volume")
            .to_string(),
        DiskSource::Rbd { image, .. } => image.clone(),
    }
}

/// The name of the partition a disk pool creates next on `device`: `sdb` →
/// `sdb3`, `loop0` → `loop0p3` (a `p` separates numbers from a name ending in a digit).
fn next_partition_name(device: &str, existing: &[String]) -> String {
    let base = device.rsplit('/').next().unwrap_or(device);
    let sep = if base.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    let prefix = format!("{base}{sep}");
    let last = existing
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("{prefix}{}", last + 1)
}

/// Whether the disks of one request fit their destination pools together:
/// each disk was checked alone by [`plan_with_need`], but disks bound for one
/// pool share its free space, so their needs add up.
pub fn check_space_together(hv: &dyn Hypervisor, planned: &[(Plan, Need)]) -> Result<(), Error> {
    let mut by_pool: Vec<(&str, Vec<&(Plan, Need)>)> = Vec::new();
    for member in planned {
        let pool = member.0.dest_pool.as_str();
        match by_pool.iter_mut().find(|(name, _)| *name == pool) {
            Some((_, members)) => members.push(member),
            None => by_pool.push((pool, vec![member])),
        }
    }
    for (name, members) in by_pool.into_iter().filter(|(_, m)| m.len() > 1) {
        let pool = hv
            .pool(name)
            .map_err(Error::hv("reading the destination pool"))?;
        if pool.capacity == 0 {
            continue;
        }
        let data = members
            .iter()
            .fold(0u64, |sum, (_, need)| sum.saturating_add(need.bytes()));
        let needed = data.saturating_add(SPACE_MARGIN);
        if pool.available < needed {
            let disks: Vec<&str> = members.iter().map(|(p, _)| p.target.as_str()).collect();
            return Err(Error::Exhausted(format!(
                "pool '{}' has {} bytes available; disks {} need about {} together ({} of data, with the backing layers flattened into each copy, plus margin); free space, or give some of them another pool",
                pool.name,
                pool.available,
                disks.join(", "),
                needed,
                data
            )));
        }
    }
    Ok(())
}

/// Whether the pool has room for the disk's `need` (`flattened`: the number
/// of backing layers FLATTEN merges into its copy, for the message).
fn check_space(pool: &PoolSpec, need: Need, flattened: usize) -> Result<(), Error> {
    if pool.capacity == 0 {
        // rbd pools without a ceph-mgr report no statistics; a full cluster then
        // fails the copy cleanly instead.
        tracing::warn!(pool = %pool.name, "pool reports no capacity; skipping the space check");
        return Ok(());
    }
    let needed = need.bytes().saturating_add(SPACE_MARGIN);
    if pool.available < needed {
        let layers = if need.layers > 0 {
            format!(", {} of backing layers the pool lacks", need.layers)
        } else {
            String::new()
        };
        let flattened = if flattened > 0 {
            format!(" from the top image and its {flattened} backing layer(s), flattened")
        } else {
            String::new()
        };
        return Err(Error::Exhausted(format!(
            "pool '{}' has {} bytes available; this disk needs about {} ({} of data{flattened}{layers} plus margin); free space or choose another pool",
            pool.name, pool.available, needed, need.data
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
