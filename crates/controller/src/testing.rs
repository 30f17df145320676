//! Nodes in memory, for the controller's unit tests: each answers from the
//! pools and domains a test gives it, and remembers which migrations it was
//! asked to start, so a test sees where the controller routed a request
//! without a node process or a network.

use std::collections::HashMap;
use std::sync::Mutex;

use volmig_types::phase::Phase;

use super::error::{NodeError, NodeErrorKind};
use super::model::{DomainInfo, NodeEvent, NodeRecord, Order, PoolInfo, PoolVolumeInfo};
use super::nodes::{NodeAccess, NodeEventStream};
use super::registry::{NodeEntry, NodeFacts};

/// One node's pools and running domains.
#[derive(Default)]
pub(crate) struct FakeNode {
    pub(crate) pools: Vec<PoolInfo>,
    pub(crate) domains: Vec<DomainInfo>,
    /// Each pool's volumes, by pool name.
    pub(crate) volumes: HashMap<String, Vec<PoolVolumeInfo>>,
}

/// Fake nodes by id. A node not given is unreachable.
#[derive(Default)]
pub(crate) struct FakeNodes {
    nodes: HashMap<String, FakeNode>,
    /// Each migration started, as (node id, order), in order.
    started: Mutex<Vec<(String, Order)>>,
}

impl FakeNodes {
    pub(crate) fn with(mut self, node_id: &str, node: FakeNode) -> Self {
        self.nodes.insert(node_id.to_string(), node);
        self
    }

    /// The migrations started so far, as (node id, order).
    pub(crate) fn started(&self) -> Vec<(String, Order)> {
        self.started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn node(&self, node: &NodeEntry) -> Result<&FakeNode, NodeError> {
        self.nodes
            .get(&node.id)
            .ok_or_else(|| NodeError::unavailable(format!("no fake node {}", node.id)))
    }
}

fn not_found(what: String) -> NodeError {
    NodeError {
        kind: NodeErrorKind::NotFound,
        message: what,
    }
}

fn no_events() -> NodeEventStream {
    Box::pin(tokio_stream::empty())
}

#[async_trait::async_trait]
impl NodeAccess for FakeNodes {
    async fn info(&self, node: &NodeEntry) -> Result<NodeFacts, NodeError> {
        self.node(node).map(|_| NodeFacts::default())
    }

    async fn list_pools(&self, node: &NodeEntry) -> Result<Vec<PoolInfo>, NodeError> {
        Ok(self.node(node)?.pools.clone())
    }

    async fn list_disks(&self, node: &NodeEntry, domain: &str) -> Result<DomainInfo, NodeError> {
        self.node(node)?
            .domains
            .iter()
            .find(|d| d.name == domain)
            .cloned()
            .ok_or_else(|| not_found(format!("no domain {domain} on {}", node.id)))
    }

    async fn list_pool_volumes(
        &self,
        node: &NodeEntry,
        pool: &str,
    ) -> Result<Vec<PoolVolumeInfo>, NodeError> {
        let fake = self.node(node)?;
        if !fake.pools.iter().any(|p| p.name == pool) {
            return Err(not_found(format!("no pool {pool} on {}", node.id)));
        }
        Ok(fake.volumes.get(pool).cloned().unwrap_or_default())
    }

    async fn find_volume_users(
        &self,
        node: &NodeEntry,
        _source: &str,
        _exclude_domain: &str,
    ) -> Result<Vec<String>, NodeError> {
        self.node(node).map(|_| Vec::new())
    }

    /// Completes at once: the first event is terminal, so nothing is left
    /// to follow.
    async fn migrate(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        order: &Order,
    ) -> Result<(Option<NodeEvent>, NodeEventStream), NodeError> {
        self.node(node)?;
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        started.push((node.id.clone(), order.clone()));
        let event = NodeEvent {
            migration_id: format!("{}-m{}", node.id, started.len()),
            node_id: node.id.clone(),
            phase: Some(Phase::Completed),
            domain: order.domain.clone(),
            ..NodeEvent::default()
        };
        Ok((Some(event), no_events()))
    }

    async fn watch(
        &self,
        node: &NodeEntry,
        _migration_id: &str,
    ) -> Result<NodeEventStream, NodeError> {
        self.node(node).map(|_| no_events())
    }

    async fn get(&self, node: &NodeEntry, migration_id: &str) -> Result<NodeRecord, NodeError> {
        self.node(node)?;
        Err(not_found(format!("no migration {migration_id}")))
    }

    async fn cancel(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        migration_id: &str,
    ) -> Result<Option<NodeEvent>, NodeError> {
        self.node(node)?;
        Err(not_found(format!("no migration {migration_id}")))
    }

    async fn set_bandwidth(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        migration_id: &str,
        _bytes_per_sec: u64,
    ) -> Result<(), NodeError> {
        self.node(node)?;
        Err(not_found(format!("no migration {migration_id}")))
    }

    fn forget(&self, _node_id: &str) {}
}
