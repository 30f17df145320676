//! What the controller needs from a node, as a trait over domain types: the
//! edge implements it over gRPC (`volmig::api::node_client` in the root package), tests in memory.
//! Every call is bounded by the implementation (the node call timeout); a
//! stream only until its first event.

use std::pin::Pin;

use tokio_stream::Stream;

use super::error::NodeError;
use super::model::{DiskInfo, DomainInfo, NodeEvent, NodeRecord, Order, PoolInfo, PoolVolumeInfo};
use super::registry::{NodeEntry, NodeFacts};

/// A node's events of one migration.
pub type NodeEventStream = Pin<Box<dyn Stream<Item = Result<NodeEvent, NodeError>> + Send>>;

/// The controller's view of a node. `actor` names, for the node's audit
/// log, the caller the controller acts for.
#[async_trait::async_trait]
pub trait NodeAccess: Send + Sync + 'static {
    /// The node's facts (also a liveness probe).
    async fn info(&self, node: &NodeEntry) -> Result<NodeFacts, NodeError>;
    /// The node's pools.
    async fn list_pools(&self, node: &NodeEntry) -> Result<Vec<PoolInfo>, NodeError>;
    /// The disks of `domain` there; `NotFound` when it is not defined there.
    async fn list_disks(&self, node: &NodeEntry, domain: &str) -> Result<DomainInfo, NodeError>;
    /// The volumes of pool `pool` (its name on that node) and the disks of
    /// that node's domains using each.
    async fn list_pool_volumes(
        &self,
        node: &NodeEntry,
        pool: &str,
    ) -> Result<Vec<PoolVolumeInfo>, NodeError>;
    /// What uses `source` there, apart from `exclude_domain`.
    async fn find_volume_users(
        &self,
        node: &NodeEntry,
        source: &str,
        exclude_domain: &str,
    ) -> Result<Vec<String>, NodeError>;
    /// Starts `order` there: its first event and the rest of its events.
    async fn migrate(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        order: &Order,
    ) -> Result<(Option<NodeEvent>, NodeEventStream), NodeError>;
    /// Follows a migration running there (its latest event first).
    async fn watch(
        &self,
        node: &NodeEntry,
        migration_id: &str,
    ) -> Result<NodeEventStream, NodeError>;
    /// The node's record of a migration.
    async fn get(&self, node: &NodeEntry, migration_id: &str) -> Result<NodeRecord, NodeError>;
    /// Cancels a migration there; its latest event.
    async fn cancel(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        migration_id: &str,
    ) -> Result<Option<NodeEvent>, NodeError>;
    /// Changes a migration's copy bandwidth there.
    async fn set_bandwidth(
        &self,
        node: &NodeEntry,
        actor: Option<&str>,
        migration_id: &str,
        bytes_per_sec: u64,
    ) -> Result<(), NodeError>;
    /// Drops what is kept open to the node (it failed; the next call reconnects).
    fn forget(&self, node_id: &str);
}

/// Disk `disk` (target or source) of a listing.
pub fn find_disk<'a>(disks: &'a DomainInfo, disk: &str) -> Option<&'a DiskInfo> {
    disks
        .disks
        .iter()
        .find(|d| d.target == disk || d.source == disk)
}
