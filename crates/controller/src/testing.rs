//! Nodes in memory, for the controller's unit tests: each answers from the
//! pools and domains a test gives it, and remembers which migrations it was
//! asked to start, so a test sees where the controller routed a request
//! without a node process or a network. A migration completes at once,
//! unless the test holds its domain's migrations ([`FakeNodes::hold`]) until
//! it ends them ([`FakeNodes::finish`]) or asks for failures
//! ([`FakeNodes::fail_times`]); a repeated request id attaches to the
//! migration it started, as a real node does.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;
use volmig_types::phase::Phase;

use super::error::{NodeError, NodeErrorKind};
use super::model::{
    DiskResult, DomainInfo, NodeEvent, NodeRecord, Order, PoolInfo, PoolVolumeInfo,
};
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
    /// The migrations, their watchers and the test's instructions.
    script: Mutex<Script>,
}

/// What the test asked of migrations, and the migrations so far.
#[derive(Default)]
struct Script {
    /// Domains whose migrations run until [`FakeNodes::finish`].
    held: HashSet<String>,
    /// Domains whose next migrations fail at once, how many.
    failures: HashMap<String, u32>,
    /// Migrations by id.
    migrations: HashMap<String, FakeMigration>,
    /// Each bandwidth change, as (migration id, bytes/s).
    bandwidths: Vec<(String, u64)>,
    /// Each migration cancelled.
    cancels: Vec<String>,
}

struct FakeMigration {
    order: Order,
    latest: NodeEvent,
    watchers: Vec<mpsc::UnboundedSender<Result<NodeEvent, NodeError>>>,
}

impl FakeMigration {
    /// Sends `event` to the watchers; after a terminal one, their streams end.
    fn emit(&mut self, event: NodeEvent) {
        self.watchers.retain(|w| w.send(Ok(event.clone())).is_ok());
        if event.is_terminal() {
            self.watchers.clear();
        }
        self.latest = event;
    }

    /// A stream of its events after now (none once it ended).
    fn subscribe(&mut self) -> NodeEventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.latest.is_terminal() {
            self.watchers.push(tx);
        }
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }
}

/// `latest` moved to `phase`, with each disk's result when it completed.
fn next_event(order: &Order, latest: &NodeEvent, phase: Phase) -> NodeEvent {
    let results = if phase == Phase::Completed {
        results(order)
    } else {
        Vec::new()
    };
    NodeEvent {
        phase: Some(phase),
        timestamp_ms: latest.timestamp_ms + 1,
        bytes_done: latest.bytes_total,
        error: match phase {
            Phase::Failed => "fake failure".to_string(),
            Phase::Cancelled => "cancelled".to_string(),
            _ => String::new(),
        },
        results,
        ..latest.clone()
    }
}

fn results(order: &Order) -> Vec<DiskResult> {
    order
        .disks
        .iter()
        .map(|d| DiskResult {
            disk: d.disk.clone(),
            destination_source: format!("/{}/{}-{}", d.destination_pool, order.domain, d.disk),
            destination_pool: d.destination_pool.clone(),
            destination_volume: format!("{}-{}", order.domain, d.disk),
            source_deleted: order.delete_source,
            ..DiskResult::default()
        })
        .collect()
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

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Migrations of `domain` run until [`FakeNodes::finish`].
    pub(crate) fn hold(&self, domain: &str) {
        self.script().held.insert(domain.to_string());
    }

    /// The next `n` migrations of `domain` fail at once.
    pub(crate) fn fail_times(&self, domain: &str, n: u32) {
        self.script().failures.insert(domain.to_string(), n);
    }

    /// Ends every running migration of `domain` in `phase`; how many.
    pub(crate) fn finish(&self, domain: &str, phase: Phase) -> usize {
        let mut script = self.script();
        script.held.remove(domain);
        let mut ended = 0;
        for m in script.migrations.values_mut() {
            if m.order.domain == domain && !m.latest.is_terminal() {
                let event = next_event(&m.order, &m.latest, phase);
                m.emit(event);
                ended += 1;
            }
        }
        ended
    }

    /// Migrations running now.
    pub(crate) fn running(&self) -> usize {
        let script = self.script();
        script
            .migrations
            .values()
            .filter(|m| !m.latest.is_terminal())
            .count()
    }

    /// Each bandwidth change so far, as (migration id, bytes/s).
    pub(crate) fn bandwidths(&self) -> Vec<(String, u64)> {
        self.script().bandwidths.clone()
    }

    /// Each migration cancelled so far.
    pub(crate) fn cancels(&self) -> Vec<String> {
        self.script().cancels.clone()
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

    /// Completes at once unless the test said otherwise; a known request
    /// id attaches to its migration.
    async fn migrate(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        order: &Order,
    ) -> Result<(Option<NodeEvent>, NodeEventStream), NodeError> {
        self.node(node)?;
        let mut script = self.script();
        let known = order.request_id.as_ref().and_then(|rid| {
            script
                .migrations
                .iter()
                .find(|(_, m)| m.order.request_id.as_ref() == Some(rid))
                .map(|(id, _)| id.clone())
        });
        if let Some(m) = known.and_then(|id| script.migrations.get_mut(&id)) {
            return Ok((Some(m.latest.clone()), m.subscribe()));
        }
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        started.push((node.id.clone(), order.clone()));
        let id = format!("{}-m{}", node.id, started.len());
        drop(started);
        let copying = NodeEvent {
            migration_id: id.clone(),
            node_id: node.id.clone(),
            phase: Some(Phase::Copying),
            timestamp_ms: 1,
            started_at_ms: 1,
            domain: order.domain.clone(),
            bytes_total: 100,
            ..NodeEvent::default()
        };
        let held = script.held.contains(&order.domain);
        let failures = script.failures.get_mut(&order.domain).filter(|n| **n > 0);
        let phase = match failures {
            Some(n) => {
                *n -= 1;
                Some(Phase::Failed)
            }
            None if held => None,
            None => Some(Phase::Completed),
        };
        let first = match phase {
            Some(phase) => next_event(order, &copying, phase),
            None => copying,
        };
        let mut m = FakeMigration {
            order: order.clone(),
            latest: first.clone(),
            watchers: Vec::new(),
        };
        let stream = m.subscribe();
        script.migrations.insert(id, m);
        Ok((Some(first), stream))
    }

    async fn watch(
        &self,
        node: &NodeEntry,
        migration_id: &str,
    ) -> Result<NodeEventStream, NodeError> {
        self.node(node)?;
        let mut script = self.script();
        let Some(m) = script.migrations.get_mut(migration_id) else {
            return Ok(no_events());
        };
        // Its latest event first, as a node replays it.
        let latest = m.latest.clone();
        let rest = m.subscribe();
        Ok(Box::pin(tokio_stream::StreamExt::chain(
            tokio_stream::once(Ok(latest)),
            rest,
        )))
    }

    async fn get(&self, node: &NodeEntry, migration_id: &str) -> Result<NodeRecord, NodeError> {
        self.node(node)?;
        match self.script().migrations.get(migration_id) {
            Some(m) => Ok(NodeRecord {
                latest: Some(m.latest.clone()),
                wire: Vec::new(),
            }),
            None => Err(not_found(format!("no migration {migration_id}"))),
        }
    }

    async fn cancel(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        migration_id: &str,
    ) -> Result<Option<NodeEvent>, NodeError> {
        self.node(node)?;
        let mut script = self.script();
        script.cancels.push(migration_id.to_string());
        let Some(m) = script.migrations.get_mut(migration_id) else {
            return Err(not_found(format!("no migration {migration_id}")));
        };
        if !m.latest.is_terminal() {
            let event = next_event(&m.order, &m.latest, Phase::Cancelled);
            m.emit(event);
        }
        Ok(Some(m.latest.clone()))
    }

    async fn set_bandwidth(
        &self,
        node: &NodeEntry,
        _actor: Option<&str>,
        migration_id: &str,
        bytes_per_sec: u64,
    ) -> Result<(), NodeError> {
        self.node(node)?;
        let mut script = self.script();
        if !script.migrations.contains_key(migration_id) {
            return Err(not_found(format!("no migration {migration_id}")));
        }
        script
            .bandwidths
            .push((migration_id.to_string(), bytes_per_sec));
        Ok(())
    }

    fn forget(&self, _node_id: &str) {}
}
