//! Finding what is on the pool to drain: every up node that reaches it is
//! asked for the pool's volumes and their users, and those are grouped by
//! guest (one item per domain, all its disks on the pool). A shared pool is
//! seen from several nodes: each guest counts once, on the node that runs
//! it; a stopped guest defined on several nodes cannot be moved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::model::{DrainSpec, LeftBehind, Unmovable};
use super::plan::{DiskToMove, Found, Guest};
use crate::error::{ControllerError, NodeError};
use crate::inventory::{ClusterPool, Merged};
use crate::model::PoolVolumeInfo;
use crate::registry::NodeEntry;
use crate::resolve::Located;
use crate::Controller;

/// The pool a drain names: by storage id, else by its name on some node.
pub(crate) fn resolve_pool<'a>(
    pools: &'a [ClusterPool],
    wanted: &str,
) -> Result<&'a ClusterPool, ControllerError> {
    crate::maintenance::resolve_pool(pools, wanted)?
        .ok_or_else(|| ControllerError::UnknownPool(wanted.to_string()))
}

/// A guest with disks on the pool, as the nodes' listings show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GuestOnPool {
    /// The nodes running it (one, unless something is badly wrong).
    pub(crate) running_on: BTreeSet<String>,
    /// The nodes where it is defined (running or not).
    pub(crate) defined_on: BTreeSet<String>,
    /// Its disk targets on the pool, per node.
    pub(crate) disks: BTreeMap<String, BTreeSet<String>>,
    /// Its volumes on the pool.
    pub(crate) volumes: BTreeSet<String>,
}

/// Groups each node's listing by guest (domain name); the volumes no guest
/// uses as its top image are left behind, with the reason.
pub(crate) fn group(
    listed: &BTreeMap<String, Vec<PoolVolumeInfo>>,
) -> (BTreeMap<String, GuestOnPool>, Vec<LeftBehind>) {
    // A shared pool lists a volume on every node: judge it once, with the
    // users every node reports.
    let mut volumes: BTreeMap<&str, Vec<(&str, &crate::model::VolumeUseInfo)>> = BTreeMap::new();
    for (node, vols) in listed {
        for vol in vols {
            let users = volumes.entry(vol.name.as_str()).or_default();
            users.extend(vol.users.iter().map(|u| (node.as_str(), u)));
        }
    }
    let first_node = |volume: &str| {
        listed
            .iter()
            .find(|(_, vols)| vols.iter().any(|v| v.name == volume))
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    };
    let mut guests: BTreeMap<String, GuestOnPool> = BTreeMap::new();
    let mut left = Vec::new();
    for (volume, users) in volumes {
        let tops: Vec<_> = users.iter().filter(|(_, u)| !u.backing).collect();
        if tops.is_empty() {
            left.push(LeftBehind {
                node_id: first_node(volume),
                domain: String::new(),
                volumes: vec![volume.to_string()],
                reason: if users.is_empty() {
                    Unmovable::NoUser
                } else {
                    Unmovable::BackingOnly
                },
            });
            continue;
        }
        for (node, used) in tops {
            let g = guests.entry(used.domain.clone()).or_default();
            if used.running {
                g.running_on.insert(node.to_string());
            }
            g.defined_on.insert(node.to_string());
            g.disks
                .entry(node.to_string())
                .or_default()
                .insert(used.disk.clone());
            g.volumes.insert(volume.to_string());
        }
    }
    (guests, left)
}

/// Whether a guest that runs nowhere is moved offline: asked for, defined
/// on one node only (else which definition to switch is not clear) and one
/// disk on the pool (offline moves take one disk at a time).
fn offline_candidate(guest: &GuestOnPool, include_stopped: bool) -> bool {
    include_stopped && guest.defined_on.len() == 1 && guest.volumes.len() == 1
}

/// Why a guest that runs nowhere stays, by the drain's choice.
fn stopped_reason(guest: &GuestOnPool, include_stopped: bool) -> Unmovable {
    if guest.defined_on.len() > 1 {
        Unmovable::DefinedOnSeveralNodes {
            nodes: guest
                .defined_on
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        }
    } else if include_stopped {
        Unmovable::OfflineNotSupported
    } else {
        Unmovable::Stopped
    }
}

impl Controller {
    /// What is on the pool `spec` drains, with each movable disk's
    /// candidate pools: the input of [`super::plan::plan`].
    pub(crate) async fn find_on_pool(&self, spec: &DrainSpec) -> Result<Found, ControllerError> {
        let up = self.up_nodes().await;
        let pools = self.cluster_pools(&up).await;
        let source = resolve_pool(&pools.pools, &spec.pool)?.clone();
        let reaching: Vec<Arc<NodeEntry>> = up
            .iter()
            .filter(|n| source.names.contains_key(&n.id))
            .cloned()
            .collect();
        let names = source.names.clone();
        let mut asked = self.fan_out(reaching, move |c, node| {
            let pool = names.get(&node.id).cloned().unwrap_or_default();
            async move { c.inner.nodes.list_pool_volumes(&node, &pool).await }
        });
        let mut listed = BTreeMap::new();
        let mut left = Vec::new();
        let mut by_id = BTreeMap::new();
        while let Some(joined) = asked.join_next().await {
            let Ok((node, answer)) = joined else { continue };
            match answer {
                Ok(volumes) => {
                    listed.insert(node.id.clone(), volumes);
                }
                Err(e) => left.push(unreachable(&node, e)),
            }
            by_id.insert(node.id.clone(), node);
        }
        let (guests, more) = group(&listed);
        left.extend(more);
        let mut found = Found {
            storage_id: source.storage_id.clone(),
            guests: Vec::new(),
            left,
        };
        for (domain, on_pool) in guests {
            let running = on_pool.running_on.iter().next().and_then(|n| by_id.get(n));
            let offline = running.is_none() && offline_candidate(&on_pool, spec.include_stopped);
            let node = running.or_else(|| {
                offline
                    .then(|| on_pool.defined_on.iter().next().and_then(|n| by_id.get(n)))
                    .flatten()
            });
            let Some(node) = node else {
                found.left.push(LeftBehind {
                    node_id: on_pool
                        .defined_on
                        .iter()
                        .next()
                        .cloned()
                        .unwrap_or_default(),
                    domain,
                    volumes: on_pool.volumes.iter().cloned().collect(),
                    reason: stopped_reason(&on_pool, spec.include_stopped),
                });
                continue;
            };
            let targets = on_pool.disks.get(&node.id).cloned().unwrap_or_default();
            match self
                .guest(spec, node, &domain, &targets, &pools, offline)
                .await?
            {
                Ok(guest) => found.guests.push(guest),
                Err(reason) => found.left.push(LeftBehind {
                    node_id: node.id.clone(),
                    domain,
                    volumes: on_pool.volumes.iter().cloned().collect(),
                    reason,
                }),
            }
        }
        Ok(found)
    }

    /// The guest's disks `targets` with their candidate pools, or why it
    /// cannot move.
    async fn guest(
        &self,
        spec: &DrainSpec,
        node: &Arc<NodeEntry>,
        domain: &str,
        targets: &BTreeSet<String>,
        pools: &Merged,
        offline: bool,
    ) -> Result<Result<Guest, Unmovable>, ControllerError> {
        let listed = match self.inner.nodes.list_disks(node, domain).await {
            Ok(listed) => listed,
            Err(e) => return Ok(Err(unreachable(node, e).reason)),
        };
        if listed.running == offline {
            // It stopped (or started) since the pool was listed.
            return Ok(Err(Unmovable::Changed));
        }
        let named = spec.destination.as_deref().unwrap_or_default();
        let mut disks = Vec::new();
        for target in targets {
            let Some(info) = listed.disks.iter().find(|d| &d.target == target) else {
                continue;
            };
            if !info.movable() {
                return Ok(Err(Unmovable::DiskNotMovable {
                    disk: target.clone(),
                }));
            }
            if !info.migration_id.is_empty() {
                return Ok(Err(Unmovable::Busy {
                    disk: target.clone(),
                    migration_id: info.migration_id.clone(),
                }));
            }
            let located = Located {
                node: node.clone(),
                disk: info.clone(),
            };
            let choices = self
                .choices(&located, pools, None, &spec.required_tags, named, false)
                .await?;
            disks.push(DiskToMove {
                info: info.clone(),
                choices,
            });
        }
        if disks.is_empty() {
            return Ok(Err(Unmovable::Changed));
        }
        Ok(Ok(Guest {
            node_id: node.id.clone(),
            domain: domain.to_string(),
            disks,
            offline,
        }))
    }
}

/// A node whose listing failed: what it holds stays, and says why.
fn unreachable(node: &NodeEntry, e: NodeError) -> LeftBehind {
    LeftBehind {
        node_id: node.id.clone(),
        domain: String::new(),
        volumes: Vec::new(),
        reason: Unmovable::NodeUnreachable { error: e.message },
    }
}
