//! The cluster's pools: every node's pools, with a pool that several nodes
//! reach (same NFS export, same Ceph pool and monitors, same iSCSI target)
//! merged into one entry by its storage id.

use std::collections::BTreeMap;

use crate::proto;

/// One pool of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPool {
    /// The storage id.
    pub storage_id: String,
    /// The pool as the first node (by id) that reaches it reports it.
    pub pool: proto::Pool,
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
pub fn merge(per_node: &BTreeMap<String, Vec<proto::Pool>>) -> Vec<ClusterPool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, storage_id: &str) -> proto::Pool {
        proto::Pool {
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
}
