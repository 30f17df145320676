//! What ListDisks shows of a domain: its disks, their volumes, layers,
//! checkpoints and migrations; and the filter of ListMigrations.

use super::{unavailable_or, Engine};
use crate::error::Error;
use crate::hypervisor::{
    Definition, DiskKind, DiskSource, DiskSpec, HvError, Hypervisor, PoolRunState,
};
use crate::model::{Event, Phase};
use crate::validate;

/// A disk as `ListDisks` shows it.
#[derive(Debug, Clone)]
pub struct DiskView {
    /// The disk from the live definition.
    pub spec: DiskSpec,
    /// Pool and volume of its source, when a pool holds it.
    pub pool: Option<String>,
    /// Volume name.
    pub volume: Option<String>,
    /// Virtual size, bytes (0 when unknown).
    pub capacity: u64,
    /// Allocated bytes (0 when unknown).
    pub allocation: u64,
    /// The migration moving it now.
    pub migration_id: Option<String>,
    /// Checkpoints that keep a dirty bitmap on it (running domains only).
    pub checkpoints: Vec<String>,
    /// Its backing layers, nearest first.
    pub layers: Vec<LayerView>,
}

/// One backing layer of a disk, as placement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerView {
    /// Its path.
    pub source: String,
    /// The volume name it keeps in a destination pool.
    pub volume: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes its file spends.
    pub allocation: u64,
    /// Active file pools holding a volume of that name and virtual size.
    pub present_in_pools: Vec<String>,
}

/// What the host says of each backing layer of `spec` (see [`LayerView`]);
/// a layer it cannot read is left out rather than failing the listing.
fn layer_views(hv: &dyn Hypervisor, spec: &DiskSpec, file_pools: &[String]) -> Vec<LayerView> {
    spec.backing
        .iter()
        .filter_map(|layer| {
            let DiskSource::File { path } = &layer.source else {
                return None;
            };
            let info = hv.image_info(path).ok()?;
            let volume = match hv.volume_by_path(path).ok().flatten() {
                Some(v) => v.name,
                None => path.rsplit('/').next().unwrap_or_default().to_string(),
            };
            let present_in_pools = file_pools
                .iter()
                .filter(|pool| {
                    hv.volume(pool, &volume)
                        .is_ok_and(|v| v.capacity == info.virtual_size && v.path != *path)
                })
                .cloned()
                .collect();
            Some(LayerView {
                source: path.clone(),
                volume,
                capacity: info.virtual_size,
                allocation: info.actual_size,
                present_in_pools,
            })
        })
        .collect()
}

/// A domain's disks.
#[derive(Debug, Clone)]
pub struct DomainDisks {
    /// Domain name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Running.
    pub running: bool,
    /// Disks.
    pub disks: Vec<DiskView>,
}

/// Filter for [`Engine::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Domain name.
    pub domain: Option<String>,
    /// Latest phase in this set (empty: any).
    pub phases: Vec<Phase>,
    /// Started at or after (Unix ms).
    pub started_after_ms: Option<u64>,
    /// Started before (Unix ms).
    pub started_before_ms: Option<u64>,
    /// Not terminal.
    pub active_only: bool,
}

impl ListFilter {
    /// Whether a migration whose latest event is `e` passes.
    pub(super) fn matches(&self, e: &Event) -> bool {
        self.domain.as_ref().is_none_or(|d| &e.domain == d)
            && (self.phases.is_empty() || self.phases.contains(&e.phase))
            && self.started_after_ms.is_none_or(|t| e.started_ms >= t)
            && self.started_before_ms.is_none_or(|t| e.started_ms < t)
            && (!self.active_only || !e.phase.is_terminal())
    }
}

impl Engine {
    /// A domain's disks with their pools and migrations.
    pub async fn disks(&self, domain: &str) -> Result<DomainDisks, Error> {
        validate::object_name("domain", domain)?;
        let name = domain.to_string();
        let (state, specs, sizes, checkpoints) = self
            .inner
            .hv(move |hv| {
                let state = hv.domain(&name)?;
                let which = if state.active {
                    Definition::Live
                } else {
                    Definition::Persistent
                };
                let specs = hv.disks(&state.name, which)?;
                // Their bitmaps are only known to a running QEMU.
                let checkpoints = if state.active && state.checkpoints > 0 {
                    hv.checkpoints(&state.name)?
                } else {
                    Vec::new()
                };
                let file_pools: Vec<String> = if specs.iter().any(|s| !s.backing.is_empty()) {
                    hv.pools()?
                        .into_iter()
                        .filter(|p| {
                            p.state == PoolRunState::Running
                                && p.disk_kind() == Some(DiskKind::File)
                        })
                        .map(|p| p.name)
                        .collect()
                } else {
                    Vec::new()
                };
                let mut sizes = Vec::new();
                for spec in &specs {
                    let vol = match &spec.source {
                        Some(src) => hv.volume_by_path(&src.display_name()).ok().flatten(),
                        None => None,
                    };
                    sizes.push((vol, layer_views(hv, spec, &file_pools)));
                }
                Ok((state, specs, sizes, checkpoints))
            })
            .await
            .map_err(|e| match e {
                HvError::NoDomain(_) => Error::DomainNotFound(domain.to_string()),
                other => unavailable_or("reading disks")(other),
            })?;
        let reg = self.inner.registry();
        let disks = specs
            .into_iter()
            .zip(sizes)
            .map(|(spec, (vol, layers))| DiskView {
                layers,
                checkpoints: checkpoints
                    .iter()
                    .filter(|c| c.bitmap_on(&spec.target).is_some())
                    .map(|c| c.name.clone())
                    .collect(),
                migration_id: reg
                    .by_disk
                    .get(&(state.uuid.clone(), spec.target.clone()))
                    .cloned(),
                pool: vol.as_ref().map(|v| v.pool.clone()),
                volume: vol.as_ref().map(|v| v.name.clone()),
                capacity: vol.as_ref().map(|v| v.capacity).unwrap_or(0),
                allocation: vol.as_ref().map(|v| v.allocation).unwrap_or(0),
                spec,
            })
            .collect();
        Ok(DomainDisks {
            name: state.name,
            uuid: state.uuid,
            running: state.active,
            disks,
        })
    }
}
