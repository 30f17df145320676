//! What ListPoolVolumes shows: every volume of one pool and the disks of this
//! host's domains that use each, for a drain that must find every guest on
//! the pool (running or only defined) and the volumes no guest uses.
//!
//! One scan per call: the pool is listed once and the domains once, each
//! with one definition (live when it runs, persistent otherwise), and the two
//! are joined through a map from source to volume. The cost is O(V + D + R)
//! host calls and work for V volumes, D domains and R disk images (sources
//! and backing layers) named in their definitions, never V × D. A pool with
//! more than [`MAX_POOL_VOLUMES`] volumes is refused rather than listed in
//! part: a drain must not take a partial listing for the whole pool, and the
//! bound keeps the answer well under gRPC's default 4 MiB message limit.
//!
//! A disk uses a volume when its definition names the volume's path (or
//! `pool/image` for rbd) exactly, as its source or as a layer of the backing
//! chain it lists. A running domain's live definition lists its whole chain;
//! a persistent definition lists only what was written into it, so for a
//! domain that is only defined a layer below its top image shows as a user
//! only when its definition names it.

use std::collections::HashMap;

use super::{unavailable_or, Engine};
use crate::error::Error;
use crate::hypervisor::{DomainDisksSpec, HvError, ImageFormat, VolumeSpec};
use crate::validate;

/// The most volumes one listing holds.
pub const MAX_POOL_VOLUMES: usize = 10_000;

/// A volume of the pool and its users on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVolume {
    /// Volume name.
    pub name: String,
    /// The source a disk on it names: its path, or `pool/image` for rbd.
    pub source: String,
    /// Format, when libvirt says and volmig knows it.
    pub format: Option<ImageFormat>,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes allocated.
    pub allocation: u64,
    /// The disks that use it, by domain then disk target.
    pub users: Vec<VolumeUse>,
}

/// One disk of a domain that uses a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUse {
    /// Domain name.
    pub domain: String,
    /// Running (the live definition was read) or only defined (the persistent one).
    pub running: bool,
    /// Disk target.
    pub disk: String,
    /// The volume is a layer of the disk's backing chain, not its top image.
    pub backing: bool,
}

/// Joins the pool's volumes with the domains' disks.
fn join(volumes: Vec<VolumeSpec>, domains: &[DomainDisksSpec]) -> Vec<PoolVolume> {
    let mut out: Vec<PoolVolume> = volumes
        .into_iter()
        .map(|v| PoolVolume {
            format: v.format.as_deref().and_then(ImageFormat::parse),
            name: v.name,
            source: v.path,
            capacity: v.capacity,
            allocation: v.allocation,
            users: Vec::new(),
        })
        .collect();
    let by_source: HashMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, v)| (v.source.clone(), i))
        .collect();
    for domain in domains {
        for disk in &domain.disks {
            let top = disk.source.iter().map(|s| (s, false));
            let layers = disk.backing.iter().map(|l| (&l.source, true));
            for (source, backing) in top.chain(layers) {
                let Some(&i) = by_source.get(&source.display_name()) else {
                    continue;
                };
                out[i].users.push(VolumeUse {
                    domain: domain.name.clone(),
                    running: domain.running,
                    disk: disk.target.clone(),
                    backing,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    for volume in &mut out {
        volume
            .users
            .sort_by(|a, b| (&a.domain, &a.disk).cmp(&(&b.domain, &b.disk)));
    }
    out
}

impl Engine {
    /// The volumes of `pool` and the disks of this host's domains that use
    /// each (see the module's documentation for what counts and the bound).
    pub async fn pool_volumes(&self, pool: &str) -> Result<Vec<PoolVolume>, Error> {
        validate::object_name("pool", pool)?;
        let name = pool.to_string();
        let (volumes, domains) = self
            .inner
            .hv(move |hv| {
                let volumes = hv.pool_volumes(&name, MAX_POOL_VOLUMES)?;
                if volumes.len() > MAX_POOL_VOLUMES {
                    return Ok((volumes, Vec::new()));
                }
                Ok((volumes, hv.all_domain_disks()?))
            })
            .await
            .map_err(|e| match e {
                HvError::NoPool(_) => Error::PoolNotFound(pool.to_string()),
                HvError::PoolInactive(_) => Error::PoolInactive(pool.to_string()),
                other => unavailable_or("listing the volumes of a pool")(other),
            })?;
        if volumes.len() > MAX_POOL_VOLUMES {
            return Err(Error::Exhausted(format!(
                "storage pool '{pool}' holds more than {MAX_POOL_VOLUMES} volumes, the most one listing returns; list it with `virsh vol-list {pool}`"
            )));
        }
        Ok(join(volumes, &domains))
    }
}
