//! The cluster's pools: every node's pools, with a pool that several nodes
//! reach (same NFS export, same Ceph pool and monitors, same iSCSI target)
//! merged into one entry by its storage id.
//!
//! [`Inventory`] keeps what each node last reported so that placement does not
//! ask every node on every request; the controller refreshes it in the
//! background and when a node registers. Pool figures may therefore be up to
//! one refresh interval old, which placement tolerates: the node checks the
//! room in the destination itself before it accepts a migration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::model::PoolInfo;

/// One pool of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPool {
    /// The storage id.
    pub storage_id: String,
    /// The pool as the first node (by id) that reaches it reports it.
    pub pool: PoolInfo,
    /// The pool's name on each node that reaches it.
    pub names: BTreeMap<String, String>,
}

impl ClusterPool {
    /// The pool's name as `node_id` knows it, else its representative name.
    pub fn name_on(&self, node_id: &str) -> &str {
        self.names
            .get(node_id)
            .map(String::as_str)
            .unwrap_or(&self.pool.name)
    }
}

/// Merges the pools reported by each node (node id → its pools).
pub fn merge(per_node: &BTreeMap<String, Vec<PoolInfo>>) -> Vec<ClusterPool> {
    merge_nodes(per_node.iter())
}

/// [`merge`] over nodes given in id order.
fn merge_nodes<'a>(
    per_node: impl Iterator<Item = (&'a String, &'a Vec<PoolInfo>)>,
) -> Vec<ClusterPool> {
    let mut merged: BTreeMap<String, ClusterPool> = BTreeMap::new();
    for (node_id, pools) in per_node {
        for pool in pools {
            let entry = merged
                .entry(pool.storage_id.clone())
                .or_insert_with(|| ClusterPool {
                    storage_id: pool.storage_id.clone(),
                    pool: pool.clone(),
                    names: BTreeMap::new(),
                });
            entry.names.insert(node_id.clone(), pool.name.clone());
        }
    }
    merged.into_values().collect()
}

/// The merged pools of a set of nodes, indexed by the node that reaches them.
#[derive(Debug, Default)]
pub struct Merged {
    /// Every pool, by storage id.
    pub pools: Vec<ClusterPool>,
    by_node: HashMap<String, Vec<usize>>,
}

impl Merged {
    fn new(pools: Vec<ClusterPool>) -> Self {
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, pool) in pools.iter().enumerate() {
            for node in pool.names.keys() {
                by_node.entry(node.clone()).or_default().push(i);
            }
        }
        Merged { pools, by_node }
    }

    /// The pools `node_id` reaches, by storage id; without scanning the others.
    pub fn reachable_from<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a ClusterPool> {
        self.by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .map(|&i| &self.pools[i])
    }
}

/// The pools each node last reported, and their merge, thread-safe.
#[derive(Default)]
pub struct Inventory {
    state: Mutex<InventoryState>,
}

#[derive(Default)]
struct InventoryState {
    per_node: BTreeMap<String, Vec<PoolInfo>>,
    /// Bumped whenever a node's pools change.
    generation: u64,
    /// The last merge: the generation and the nodes it was made of.
    merged: Option<(u64, Vec<String>, Arc<Merged>)>,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InventoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the pools `node_id` reports now.
    pub fn set(&self, node_id: &str, pools: Vec<PoolInfo>) {
        let mut state = self.lock();
        if state.per_node.get(node_id) != Some(&pools) {
            state.per_node.insert(node_id.to_string(), pools);
            state.generation += 1;
        }
    }

    /// Forgets a node's pools (it could not be reached).
    pub fn remove(&self, node_id: &str) {
        let mut state = self.lock();
        if state.per_node.remove(node_id).is_some() {
            state.generation += 1;
        }
    }

    /// The pools `node_id` last reported, if it was asked yet.
    pub fn pools_of(&self, node_id: &str) -> Option<Vec<PoolInfo>> {
        self.lock().per_node.get(node_id).cloned()
    }

    /// Whether `node_id` has reported its pools.
    pub fn knows(&self, node_id: &str) -> bool {
        self.lock().per_node.contains_key(node_id)
    }

    /// The merged pools of the nodes in `up`; a node outside it (down) adds
    /// nothing. The merge is reused until a node's pools or the set change.
    pub fn merged(&self, up: &BTreeSet<&str>) -> Arc<Merged> {
        let mut state = self.lock();
        let state = &mut *state;
        let included = || state.per_node.keys().filter(|id| up.contains(id.as_str()));
        if let Some((generation, nodes, merged)) = &state.merged {
            if *generation == state.generation && included().eq(nodes.iter()) {
                return merged.clone();
            }
        }
        let nodes: Vec<String> = included().cloned().collect();
        let merged = Arc::new(Merged::new(merge_nodes(
            state
                .per_node
                .iter()
                .filter(|(id, _)| up.contains(id.as_str())),
        )));
        state.merged = Some((state.generation, nodes, merged.clone()));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, storage_id: &str) -> PoolInfo {
        PoolInfo {
            name: name.into(),
            storage_id: storage_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn shared_storage_is_one_pool_reachable_from_each_node() {
        let per_node = BTreeMap::from([
            (
                "a".to_string(),
                vec![pool("ceph", "rbd:m1:6789/vms"), pool("local", "local:a:/v")],
            ),
            (
                "b".to_string(),
                vec![
                    pool("vms-rbd", "rbd:m1:6789/vms"),
                    pool("local", "local:b:/v"),
                ],
            ),
        ]);
        let merged = merge(&per_node);
        assert_eq!(merged.len(), 3);
        let ceph = merged
            .iter()
            .find(|p| p.storage_id == "rbd:m1:6789/vms")
            .expect("ceph");
        assert_eq!(ceph.names.len(), 2);
        assert_eq!(ceph.name_on("b"), "vms-rbd");
        assert_eq!(ceph.name_on("a"), "ceph");
    }

    #[test]
    fn inventory_leaves_out_down_nodes_and_follows_changes() {
        let inv = Inventory::new();
        let both = BTreeSet::from(["a", "b"]);
        let only_b = BTreeSet::from(["b"]);
        inv.set(
            "a",
            vec![pool("ceph", "rbd:m1:6789/vms"), pool("l", "local:a:/v")],
        );
        inv.set("b", vec![pool("vms-rbd", "rbd:m1:6789/vms")]);
        let merged = inv.merged(&both);
        assert_eq!(merged.pools.len(), 2);
        assert_eq!(merged.reachable_from("a").count(), 2);
        assert_eq!(merged.reachable_from("b").count(), 1);
        assert!(Arc::ptr_eq(&merged, &inv.merged(&both)), "reused");
        let merged = inv.merged(&only_b);
        assert_eq!(merged.pools.len(), 1);
        assert_eq!(merged.pools[0].names.len(), 1);
        assert_eq!(merged.reachable_from("a").count(), 0, "a is down");
        inv.set(
            "b",
            vec![pool("vms-rbd", "rbd:m1:6789/vms"), pool("l", "local:b:/v")],
        );
        assert_eq!(inv.merged(&only_b).pools.len(), 2, "b's new pool");
        inv.remove("b");
        assert!(inv
            .merged(&both)
            .pools
            .iter()
            .all(|p| !p.names.contains_key("b")));
        assert!(inv.knows("a") && !inv.knows("b"));
    }
}
