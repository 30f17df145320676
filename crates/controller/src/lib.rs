//! The controller's domain: node registry, pool inventory, placement,
//! migration history, in-flight reservations and the relay of node events.
//!
//! [`Controller`] offers the operations (register, plan, start, watch,
//! cancel, get, list, pool maintenance) over plain types ([`model`]); it reaches nodes through
//! [`nodes::NodeAccess`] and keeps what must last in a [`store::Store`]. The
//! gRPC edge (`volmig::api::controller_service`) only converts; nothing here
//! knows the wire format.
//!
//! Scale: placement reads the pool [`inventory::Inventory`], refreshed in the
//! background every heartbeat interval and when a node (re)registers, never
//! asking every node per request. The source of a migration is always a
//! node's fresh answer: the node that last ran the domain is asked first,
//! and only when it does not run it any more are all up nodes asked,
//! concurrently. A plan judges the pools the domain's node reaches (plus a
//! pool the caller names, wherever it is), so its cost and size follow that
//! node's pools, not the size of the fleet.
//!
//! Several controllers may share one store: any of them serves every call;
//! the one that leads ([`store::Store::lead`]) also follows every unfinished
//! migration, sweeps reservations ([`leader`]) and carries out the pool
//! drains recorded in the store ([`drain`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

pub mod advertise;
pub mod drain;
pub mod error;
pub mod group_placement;
pub mod history;
pub mod inventory;
mod leader;
mod liveness;
pub mod maintenance;
pub mod model;
pub mod nodes;
pub mod placement;
pub mod registry;
mod relay;
pub mod reservations;
mod resolve;
mod retries;
mod source_users;
mod start;
pub mod store;
#[cfg(test)]
mod testing;

use error::ControllerError;
use history::History;
use inventory::{ClusterPool, Inventory};
use model::{MigrationEntry, MigrationFilter, NodeEvent, NodeRecord};
use nodes::NodeAccess;
use registry::{NodeEntry, NodeFacts, NodeRegistry};
use reservations::Reservations;
use store::Store;
use volmig_config::ControllerConfig;

pub use relay::WatchStream;
pub use resolve::{GroupPlan, Planned, SinglePlan};

/// How many nodes are asked at once when many must be (probes, refreshes, a
/// domain whose node is not known).
const FAN_OUT: usize = 64;

/// Told of the controller's decisions and relays, for metrics, without the
/// controller depending on a metrics library (see `crate::metrics`). Called
/// inline on request paths: must be cheap.
pub trait ControllerObserver: Send + Sync + 'static {
    /// A placement rejected a pool for a disk by `rule`.
    fn placement_rejected(&self, rule: placement::Rule);
    /// A node's migration event reached the controller `lag` after the node
    /// stamped it (0 when the clocks disagree the other way).
    fn event_relayed(&self, lag: std::time::Duration);
}

/// Observes nothing.
impl ControllerObserver for () {
    fn placement_rejected(&self, _: placement::Rule) {}
    fn event_relayed(&self, _: std::time::Duration) {}
}

/// A node as `ListNodes` shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The registry's entry.
    pub node: Arc<NodeEntry>,
    /// Up now.
    pub up: bool,
}

/// A cluster pool as `ListPools` shows it.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// The pool and the nodes reaching it.
    pub pool: ClusterPool,
    /// Migrations writing to it now.
    pub in_flight: u32,
    /// Its operator tags.
    pub tags: Vec<String>,
    /// Its used threshold.
    pub used_threshold: f64,
    /// Its maintenance flag as last set; `None` if it never was.
    pub maintenance: Option<maintenance::PoolMaintenance>,
}

/// What GetMigration answers.
#[derive(Debug, Clone)]
pub enum Found {
    /// A finished migration, from the history.
    Recorded(Box<MigrationEntry>),
    /// An unfinished one, as its node reports it now.
    Live(NodeRecord),
}

/// The controller.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControllerConfig,
    registry: NodeRegistry,
    inventory: Inventory,
    nodes: Arc<dyn NodeAccess>,
    store: Arc<dyn Store>,
    history: History,
    reservations: Reservations,
    /// The follower of each unfinished migration being followed.
    followers: Mutex<HashMap<String, Arc<relay::Follower>>>,
    /// Told of placement rejections and relayed events (metrics).
    observer: Arc<dyn ControllerObserver>,
    /// The drains this controller executes or relays.
    drains: drain::Drains,
}

impl Controller {
    /// A controller over `store`, reaching nodes through `nodes`. It keeps
    /// the pool inventory fresh in the background and, while it leads the
    /// controllers sharing the store, follows unfinished migrations.
    pub async fn start(
        config: ControllerConfig,
        store: Arc<dyn Store>,
        nodes: Arc<dyn NodeAccess>,
        observer: Arc<dyn ControllerObserver>,
    ) -> Result<Controller, ControllerError> {
        let history = History::open(store.clone(), history::HistoryRetention::of(&config)).await?;
        let registry = NodeRegistry::from_config(&config)?;
        let controller = Controller {
            inner: Arc::new(Inner {
                config,
                registry,
                inventory: Inventory::new(),
                nodes,
                reservations: Reservations::new(store.clone()),
                store,
                history,
                followers: Mutex::new(HashMap::new()),
                observer,
                drains: Default::default(),
            }),
        };
        // The registrations every controller shares, read before serving: a
        // controller started while nodes heartbeat to the others lists them
        // at once. Pools are left to the refresher, so starting waits on no
        // node; a store that does not answer leaves it to the sync's next pass.
        let mut known = HashMap::new();
        let first = tokio::time::timeout(
            controller.heartbeat(),
            controller.sync_registrations(&mut known, false),
        )
        .await;
        if !matches!(first, Ok(Ok(()))) {
            known.clear();
        }
        controller.spawn_refresher();
        controller.spawn_registration_sync(known);
        controller.spawn_leader();
        Ok(controller)
    }

    /// Every node with whether it is up and how long ago it was last heard
    /// from (`None`: not since this controller started or since a failed call).
    pub fn node_health(&self) -> Vec<(String, bool, Option<Duration>)> {
        let registry = &self.inner.registry;
        registry
            .all()
            .into_iter()
            .map(|e| {
                (
                    e.id.clone(),
                    registry.is_up(&e),
                    e.last_seen.map(|t| t.elapsed()),
                )
            })
            .collect()
    }

    /// Every known node, probing the stale ones first.
    pub async fn list_nodes(&self) -> Vec<NodeStatus> {
        self.up_nodes().await;
        self.inner
            .registry
            .all()
            .into_iter()
            .map(|node| NodeStatus {
                up: self.inner.registry.is_up(&node),
                node,
            })
            .collect()
    }

    /// The pools of the up nodes, a shared pool once.
    pub async fn list_pools(&self) -> Result<Vec<PoolStatus>, ControllerError> {
        let up = self.up_nodes().await;
        let in_flight = self.in_flight().await?;
        let mut maintenance = self.maintenance().await?;
        Ok(self
            .cluster_pools(&up)
            .await
            .pools
            .iter()
            .cloned()
            .map(|pool| {
                let settings = self
                    .inner
                    .config
                    .pool_settings(&pool.pool.name, &pool.storage_id);
                PoolStatus {
                    in_flight: in_flight.get(&pool.storage_id).copied().unwrap_or(0),
                    tags: settings.tags,
                    used_threshold: settings.used_threshold,
                    maintenance: maintenance.remove(&pool.storage_id),
                    pool,
                }
            })
            .collect())
    }

    /// Records a node's registration or heartbeat (the caller's right to
    /// register as `node_id` is checked by the edge, which also says who
    /// stands behind the endpoint); the heartbeat interval.
    pub async fn register(
        &self,
        node_id: &str,
        endpoint: &str,
        facts: NodeFacts,
        registrant: &advertise::Registrant,
    ) -> Result<u32, ControllerError> {
        self.inner.registry.admit(endpoint, registrant)?;
        self.forget_lapsed_nodes();
        let news = self
            .inner
            .registry
            .register(node_id, endpoint, facts.clone())?;
        self.publish_registration(node_id, endpoint, &facts).await;
        if news {
            // A new or returning node: its pools count from now, not from the
            // next refresh.
            if let Some(node) = self.inner.registry.get(node_id) {
                tracing::info!(node = %node.id, endpoint = %node.endpoint.escape_debug(), "node registered");
                let c = self.clone();
                tokio::spawn(
                    async move {
                        let _ = c.fetch_pools(&node).await;
                    }
                    .in_current_span(),
                );
            }
        }
        Ok(self.inner.config.heartbeat_interval_seconds)
    }

    /// The node that last ran `domain`, as far as this controller knows.
    pub fn domain_hint(&self, domain: &str) -> Option<String> {
        self.inner.registry.domain_hint(domain)
    }

    /// The entry of migration `id`.
    pub async fn entry(&self, id: &str) -> Result<MigrationEntry, ControllerError> {
        self.inner
            .history
            .get(id)
            .await?
            .ok_or_else(|| ControllerError::UnknownMigration(id.to_string()))
    }

    /// The node that runs `entry`'s migration.
    fn node_of(&self, entry: &MigrationEntry) -> Result<Arc<NodeEntry>, ControllerError> {
        self.inner
            .registry
            .get(&entry.node_id)
            .ok_or_else(|| ControllerError::NodeNotRegistered {
                node: entry.node_id.clone(),
                migration_id: entry.migration_id.clone(),
            })
    }

    /// A failed call to `node`: an unreachable node is marked down.
    fn node_failed_call(&self, node: &NodeEntry, err: error::NodeError) -> ControllerError {
        if err.is_unreachable() {
            self.node_failed(&node.id, err.message.clone());
        }
        ControllerError::from_node(&node.id, &node.endpoint, err)
    }

    /// A migration: from the history once it ended, else as its node reports it now.
    pub async fn get(&self, id: &str) -> Result<Found, ControllerError> {
        let entry = self.entry(id).await?;
        if entry.is_terminal() {
            return Ok(Found::Recorded(Box::new(entry)));
        }
        // Ask the node for the live state; its record is the truth while it runs.
        let node = self.node_of(&entry)?;
        let record = self
            .inner
            .nodes
            .get(&node, &entry.migration_id)
            .await
            .map_err(|e| ControllerError::from_node(&node.id, &node.endpoint, e))?;
        match &record.latest {
            Some(latest) if entry.owns(latest) => {
                let _ = self.inner.history.update_latest(latest).await;
            }
            _ => {
                return Err(ControllerError::NodeMisbehaved(format!(
                    "node {} answered with a record that is not migration {}",
                    node.id, entry.migration_id
                )))
            }
        }
        Ok(Found::Live(record))
    }

    /// The history's migrations that pass `filter`, latest started first.
    pub async fn list(
        &self,
        filter: &MigrationFilter,
    ) -> Result<Vec<MigrationEntry>, ControllerError> {
        let mut entries: Vec<MigrationEntry> = self
            .inner
            .history
            .all()
            .await?
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.latest.started_at_ms));
        Ok(entries)
    }

    /// Cancels a migration on its node; its latest event.
    pub async fn cancel(
        &self,
        actor: Option<&str>,
        id: &str,
    ) -> Result<Option<NodeEvent>, ControllerError> {
        let entry = self.entry(id).await?;
        let node = self.node_of(&entry)?;
        self.inner
            .nodes
            .cancel(&node, actor, &entry.migration_id)
            .await
            .map_err(|e| ControllerError::from_node(&node.id, &node.endpoint, e))
    }

    /// Changes a migration's bandwidth on its node.
    pub async fn set_bandwidth(
        &self,
        actor: Option<&str>,
        id: &str,
        bytes_per_sec: u64,
    ) -> Result<(), ControllerError> {
        let entry = self.entry(id).await?;
        let node = self.node_of(&entry)?;
        self.inner
            .nodes
            .set_bandwidth(&node, actor, &entry.migration_id, bytes_per_sec)
            .await
            .map_err(|e| ControllerError::from_node(&node.id, &node.endpoint, e))
    }

    /// Migrations writing to each storage id now.
    pub(crate) async fn in_flight(&self) -> Result<HashMap<String, u32>, ControllerError> {
        Ok(self.inner.reservations.counts().await?)
    }
}
