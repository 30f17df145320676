//! The controller's view of its nodes: liveness probes, fan-out calls, the
//! background refresh of the pool inventory, and registrations shared
//! through the store (`nodes/<id>`, lapsing `down_after_seconds` after the
//! last heartbeat, so a node that stops is down at every controller).
//! Registered nodes that stay lapsed are forgotten, pools and channels with
//! them, at each refresh and before each registration.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::inventory::Merged;
use super::model::PoolInfo;
use super::registry::{NodeEntry, NodeFacts};
use super::{Controller, FAN_OUT};
use volmig_types::phase::now_ms;

/// Key prefix of node registrations.
pub const NODES_PREFIX: &str = "nodes/";

/// How often a controller reads the registrations the others received.
const SYNC_EVERY: Duration = Duration::from_millis(500);

/// A registration as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Registration {
    endpoint: String,
    hostname: String,
    libvirt_version: String,
    hypervisor_version: String,
    volmig_version: String,
    /// When the heartbeat arrived, Unix ms.
    seen_ms: u64,
}

impl Controller {
    pub(super) fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.inner.config.heartbeat_interval_seconds.max(1),
        ))
    }

    fn down_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.inner.config.down_after_seconds.max(1)))
    }

    /// A node heard from within this window is not probed. Two heartbeat
    /// intervals, because a node sends its next heartbeat one interval after
    /// the previous one returned: with one interval, every node would be
    /// probed for a moment every interval. Never more than `down_after`.
    pub(super) fn fresh_window(&self) -> Duration {
        (self.heartbeat() * 2).min(self.down_after())
    }

    /// Shares a heartbeat with the other controllers.
    pub(super) async fn publish_registration(&self, id: &str, endpoint: &str, facts: &NodeFacts) {
        let registration = Registration {
            endpoint: endpoint.to_string(),
            hostname: facts.hostname.clone(),
            libvirt_version: facts.libvirt_version.clone(),
            hypervisor_version: facts.hypervisor_version.clone(),
            volmig_version: facts.volmig_version.clone(),
            seen_ms: now_ms(),
        };
        let Ok(value) = serde_json::to_vec(&registration) else {
            return;
        };
        let key = format!("{NODES_PREFIX}{id}");
        if let Err(e) = self
            .inner
            .store
            .put_leased(&key, value, self.down_after())
            .await
        {
            tracing::warn!(node = %id, error = %e, "cannot share the node's registration");
        }
    }

    /// Reads the registrations other controllers received into the registry,
    /// and marks down the nodes whose registration lapsed, until the
    /// controller is dropped.
    pub(super) fn spawn_registration_sync(&self, mut known: HashMap<String, u64>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(SYNC_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let _ = Controller { inner }
                        .sync_registrations(&mut known, true)
                        .await;
                }
            }
            .instrument(tracing::info_span!("registration_sync")),
        );
    }

    /// One pass of the registration sync: registers the nodes whose stored
    /// registration is newer than `known` says (and, with `fetch`, reads the
    /// pools of those that come back), marks down those whose registration
    /// lapsed since, and updates `known`. Run once before the controller
    /// serves, so a controller that starts knows every registered node at
    /// once, wherever its heartbeats go.
    pub(super) async fn sync_registrations(
        &self,
        known: &mut HashMap<String, u64>,
        fetch: bool,
    ) -> Result<(), crate::store::StoreError> {
        let c = self;
        let listed = c.inner.store.list(NODES_PREFIX).await?;
        let mut present = HashMap::new();
        for (key, v) in listed {
            let id = key[NODES_PREFIX.len()..].to_string();
            let Ok(r) = serde_json::from_slice::<Registration>(&v.value) else {
                continue;
            };
            if known.get(&id).is_none_or(|seen| *seen < r.seen_ms) {
                let facts = NodeFacts {
                    hostname: r.hostname.clone(),
                    libvirt_version: r.libvirt_version.clone(),
                    hypervisor_version: r.hypervisor_version.clone(),
                    volmig_version: r.volmig_version.clone(),
                };
                let returning = c
                    .inner
                    .registry
                    .get(&id)
                    .is_none_or(|n| !c.inner.registry.is_up(&n));
                if c.inner.registry.register(&id, &r.endpoint, facts).is_ok() && returning && fetch
                {
                    if let Some(node) = c.inner.registry.get(&id) {
                        let _ = c.fetch_pools(&node).await;
                    }
                }
            }
            present.insert(id, r.seen_ms);
        }
        for id in known.keys().filter(|id| !present.contains_key(*id)) {
            tracing::info!(node = %id, "node registration lapsed: node down");
            c.node_failed(id, "its registration lapsed (no heartbeat)".to_string());
        }
        *known = present;
        Ok(())
    }

    /// Refreshes the pools of the up and configured nodes every heartbeat
    /// interval, until the controller is dropped.
    pub(super) fn spawn_refresher(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.heartbeat();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let c = Controller { inner };
                    c.forget_lapsed_nodes();
                    let nodes = c
                        .inner
                        .registry
                        .all()
                        .into_iter()
                        .filter(|n| n.configured || c.inner.registry.is_up(n))
                        .collect();
                    let mut set = c.fan_out(nodes, |c, node| async move {
                        let _ = c.fetch_pools(&node).await;
                    });
                    while set.join_next().await.is_some() {}
                }
            }
            .instrument(tracing::info_span!("inventory_refresh")),
        );
    }

    /// Forgets the registered nodes that lapsed (see
    /// [`super::registry::NodeRegistry::forget_lapsed`]) with their pools and
    /// channels, so their places under `max_nodes` can be taken again.
    pub(super) fn forget_lapsed_nodes(&self) {
        for id in self.inner.registry.forget_lapsed() {
            tracing::info!(node = %id, "registered node not heard from for forget_lapsed_nodes_after_seconds: forgotten");
            self.inner.inventory.remove(&id);
            self.inner.nodes.forget(&id);
        }
    }

    /// Marks a node down and drops what is open to it, so the next call reconnects.
    pub(super) fn node_failed(&self, id: &str, error: String) {
        self.inner.registry.failed(id, error);
        self.inner.nodes.forget(id);
    }

    /// Runs `call` for every node, at most [`FAN_OUT`] at once, each in its own task.
    pub(super) fn fan_out<T, F, Fut>(
        &self,
        nodes: Vec<Arc<NodeEntry>>,
        call: F,
    ) -> JoinSet<(Arc<NodeEntry>, T)>
    where
        F: Fn(Controller, Arc<NodeEntry>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(FAN_OUT));
        let mut set = JoinSet::new();
        for node in nodes {
            let limit = limit.clone();
            let work = call(self.clone(), node.clone());
            set.spawn(
                async move {
                    let _permit = limit.acquire_owned().await;
                    (node, work.await)
                }
                .in_current_span(),
            );
        }
        set
    }

    /// Nodes that answer now: fresh ones as they are, stale ones probed
    /// (concurrently).
    pub(super) async fn up_nodes(&self) -> Vec<Arc<NodeEntry>> {
        let fresh = self.fresh_window();
        let (mut up, stale): (Vec<Arc<NodeEntry>>, Vec<Arc<NodeEntry>>) = self
            .inner
            .registry
            .all()
            .into_iter()
            .partition(|n| self.inner.registry.is_fresh(n, fresh));
        let mut probes = self.fan_out(
            stale,
            |c, node| async move { c.inner.nodes.info(&node).await },
        );
        while let Some(joined) = probes.join_next().await {
            let Ok((node, probe)) = joined else { continue };
            match probe {
                Ok(facts) => {
                    self.inner.registry.seen(&node.id, Some(facts));
                    up.push(node);
                }
                Err(e) => self.node_failed(&node.id, e.message),
            }
        }
        up.sort_by(|a, b| a.id.cmp(&b.id));
        up
    }

    /// Asks a node for its pools and records them in the inventory.
    pub(super) async fn fetch_pools(
        &self,
        node: &NodeEntry,
    ) -> Result<Vec<PoolInfo>, super::error::NodeError> {
        match self.inner.nodes.list_pools(node).await {
            Ok(pools) => {
                self.inner.registry.seen(&node.id, None);
                self.inner.inventory.set(&node.id, pools.clone());
                Ok(pools)
            }
            Err(e) => {
                self.node_failed(&node.id, e.message.clone());
                Err(e)
            }
        }
    }

    /// The merged pools of the up nodes, asking those never asked yet (e.g. a
    /// configured node just probed) first.
    pub(super) async fn cluster_pools(&self, up: &[Arc<NodeEntry>]) -> Arc<Merged> {
        let unknown: Vec<Arc<NodeEntry>> = up
            .iter()
            .filter(|n| !self.inner.inventory.knows(&n.id))
            .cloned()
            .collect();
        let mut fetches = self.fan_out(unknown, |c, node| async move {
            c.fetch_pools(&node).await.is_ok()
        });
        let mut failed = BTreeSet::new();
        while let Some(joined) = fetches.join_next().await {
            if let Ok((node, false)) = joined {
                failed.insert(node.id.clone());
            }
        }
        // Up now: `up` less the nodes that just failed to list their pools.
        // Borrowed, not copied: with a thousand nodes the copies were a
        // good part of a plan's time.
        let up_ids: BTreeSet<&str> = up
            .iter()
            .map(|n| n.id.as_str())
            .filter(|id| !failed.contains(*id))
            .collect();
        self.inner.inventory.merged(&up_ids)
    }
}
