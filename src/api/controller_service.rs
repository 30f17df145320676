//! The Controller gRPC service: resolves which node runs a domain, places the
//! disk with [`crate::controller::placement`], forwards the migration to that
//! node and relays its events, keeping every migration in the history.
//!
//! The relay runs in its own task: a caller dropping the stream neither stops
//! the migration (it runs on the node) nor the history updates. After a
//! controller restart, unfinished migrations are followed again from the nodes.
//!
//! Scale: placement reads the pool [`Inventory`], refreshed in the background
//! every heartbeat interval and when a node (re)registers, never asking every
//! node per request. The source of a migration is always a node's fresh
//! answer: the node that last ran the domain is asked first, and only when it
//! does not run it any more are all up nodes asked, concurrently. Channels to
//! nodes are kept and reused. A plan judges the pools the domain's node
//! reaches (plus a pool the caller names, wherever it is), so its cost and
//! size follow that node's pools, not the size of the fleet.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::api::client;
use crate::api::node_service::EventStream;
use crate::config::ControllerConfig;
use crate::controller::history::{Entry, History};
use crate::controller::inventory::{ClusterPool, Inventory, Merged};
use crate::controller::placement::{self, DiskToPlace, PoolCandidate, PoolPolicy, Verdict};
use crate::controller::registry::{NodeEntry, NodeFacts, Registry};
use crate::hypervisor::ImageFormat;
use crate::migration::model::now_ms;
use crate::proto;
use crate::proto::controller_server::Controller;
use crate::proto::node_client::NodeClient;

/// How long one call to a node may take before the node counts as unreachable.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many nodes are asked at once when many must be (probes, refreshes, a
/// domain whose node is not known).
const FAN_OUT: usize = 64;

/// The controller service.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControllerConfig,
    registry: Registry,
    inventory: Inventory,
    /// Open channels by node id, with the endpoint they go to.
    channels: Mutex<HashMap<String, (String, Channel)>>,
    history: Arc<History>,
}

/// Where a domain's disk is, as its node reports it.
struct Located {
    node: NodeEntry,
    disk: proto::Disk,
}

/// One node's answer to "do you run this domain?".
enum Answer {
    Running(proto::ListDisksResponse),
    /// Defined there but not running.
    Defined,
    Absent,
    /// The request itself is wrong; every node would say so.
    Invalid(Status),
    Unreachable,
}

fn node_unavailable(node: &NodeEntry, err: impl std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "node {} at {} is unreachable: {err}; check that `volmig node` runs there",
        node.id, node.endpoint
    ))
}

fn facts_of(info: &proto::NodeInfo) -> NodeFacts {
    NodeFacts {
        hostname: info.hostname.clone(),
        libvirt_version: info.libvirt_version.clone(),
        hypervisor_version: info.hypervisor_version.clone(),
        volmig_version: info.volmig_version.clone(),
    }
}

async fn timed<T>(
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    tokio::time::timeout(NODE_CALL_TIMEOUT, call)
        .await
        .map_err(|_| Status::deadline_exceeded("timed out"))?
}

impl ControllerService {
    /// A controller with its configuration and history; follows unfinished
    /// migrations again and keeps the pool inventory fresh in the background.
    pub fn new(config: ControllerConfig, history: History) -> ControllerService {
        let registry = Registry::new(
            config
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.endpoint.clone())),
            Duration::from_secs(u64::from(config.down_after_seconds.max(1))),
        );
        let service = ControllerService {
            inner: Arc::new(Inner {
                config,
                registry,
                inventory: Inventory::new(),
                channels: Mutex::new(HashMap::new()),
                history: Arc::new(history),
            }),
        };
        for entry in service.inner.history.all() {
            if !entry.is_terminal() {
                let svc = service.clone();
                tokio::spawn(async move { svc.follow_until_done(entry).await });
            }
        }
        service.spawn_refresher();
        service
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.inner.config.heartbeat_interval_seconds.max(1),
        ))
    }

    /// A node heard from within this window is not probed. Two heartbeat
    /// intervals, because a node sends its next heartbeat one interval after
    /// the previous one returned: with one interval, every node would be
    /// probed for a moment every interval. Never more than `down_after`.
    fn fresh_window(&self) -> Duration {
        let down_after =
            Duration::from_secs(u64::from(self.inner.config.down_after_seconds.max(1)));
        (self.heartbeat() * 2).min(down_after)
    }

    /// Refreshes the pools of the up and configured nodes every heartbeat
    /// interval, until the service is dropped.
    fn spawn_refresher(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.heartbeat();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let svc = ControllerService { inner };
                    let nodes = svc
                        .inner
                        .registry
                        .all()
                        .into_iter()
                        .filter(|n| n.configured || svc.inner.registry.is_up(n))
                        .collect();
                    let mut set = svc.fan_out(nodes, |svc, node| async move {
                        let _ = svc.fetch_pools(&node).await;
                    });
                    while set.join_next().await.is_some() {}
                }
            }
            .instrument(tracing::info_span!("inventory_refresh")),
        );
    }

    /// Keeps the history of a migration up to date after a restart, retrying
    /// while its node is unreachable.
    async fn follow_until_done(&self, entry: Entry) {
        let id = entry.record.migration_id.clone();
        loop {
            let Some(node) = self.inner.registry.get(&entry.record.node_id) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if let Ok(mut client) = self.client(&node).await {
                if let Ok(resp) = client
                    .watch_migration(proto::WatchMigrationRequest {
                        migration_id: id.clone(),
                    })
                    .await
                {
                    let mut stream = resp.into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        let _ = self.inner.history.update_latest(&event);
                    }
                }
            }
            if self.inner.history.get(&id).is_some_and(|e| e.is_terminal()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Channel)>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A client for `node`, over its open channel or a new one.
    async fn client(&self, node: &NodeEntry) -> Result<NodeClient<Channel>, Status> {
        if let Some((endpoint, channel)) = self.channels().get(&node.id) {
            if *endpoint == node.endpoint {
                return Ok(NodeClient::new(channel.clone()));
            }
        }
        match client::connect(&node.endpoint).await {
            Ok(channel) => {
                self.channels()
                    .insert(node.id.clone(), (node.endpoint.clone(), channel.clone()));
                Ok(NodeClient::new(channel))
            }
            Err(e) => {
                self.node_failed(&node.id, e.to_string());
                Err(node_unavailable(node, e))
            }
        }
    }

    /// Marks a node down and drops its channel, so the next call reconnects.
    fn node_failed(&self, id: &str, error: String) {
        self.inner.registry.failed(id, error);
        self.channels().remove(id);
    }

    /// Runs `call` for every node, at most [`FAN_OUT`] at once, each in its own task.
    fn fan_out<T, F, Fut>(&self, nodes: Vec<NodeEntry>, call: F) -> JoinSet<(NodeEntry, T)>
    where
        F: Fn(ControllerService, NodeEntry) -> Fut,
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
    async fn up_nodes(&self) -> Vec<NodeEntry> {
        let fresh = self.fresh_window();
        let (mut up, stale): (Vec<NodeEntry>, Vec<NodeEntry>) = self
            .inner
            .registry
            .all()
            .into_iter()
            .partition(|n| self.inner.registry.is_fresh(n, fresh));
        let mut probes = self.fan_out(stale, |svc, node| async move {
            let mut c = svc.client(&node).await?;
            timed(c.get_info(proto::GetInfoRequest {})).await
        });
        while let Some(joined) = probes.join_next().await {
            let Ok((node, probe)) = joined else { continue };
            match probe {
                Ok(info) => {
                    self.inner
                        .registry
                        .seen(&node.id, Some(facts_of(info.get_ref())));
                    up.push(node);
                }
                Err(e) => self.node_failed(&node.id, e.message().to_string()),
            }
        }
        up.sort_by(|a, b| a.id.cmp(&b.id));
        up
    }

    /// Asks a node for its pools and records them in the inventory.
    async fn fetch_pools(&self, node: &NodeEntry) -> Result<Vec<proto::Pool>, Status> {
        let listed = async {
            let mut c = self.client(node).await?;
            timed(c.list_pools(proto::ListPoolsRequest {})).await
        };
        match listed.await {
            Ok(resp) => {
                let pools = resp.into_inner().pools;
                self.inner.registry.seen(&node.id, None);
                self.inner.inventory.set(&node.id, pools.clone());
                Ok(pools)
            }
            Err(e) => {
                self.node_failed(&node.id, e.message().to_string());
                Err(e)
            }
        }
    }

    /// The merged pools of the up nodes, asking those never asked yet (e.g. a
    /// configured node just probed) first.
    async fn cluster_pools(&self, up: &[NodeEntry]) -> Arc<Merged> {
        let unknown: Vec<NodeEntry> = up
            .iter()
            .filter(|n| !self.inner.inventory.knows(&n.id))
            .cloned()
            .collect();
        let mut fetches = self.fan_out(unknown, |svc, node| async move {
            let _ = svc.fetch_pools(&node).await;
        });
        while fetches.join_next().await.is_some() {}
        // Up now: `up` less the nodes that just failed to list their pools.
        let up_ids: BTreeSet<String> = self.inner.registry.up_ids();
        self.inner.inventory.merged(&up_ids)
    }

    /// Migrations writing to each storage id now.
    fn in_flight(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for e in self.inner.history.all() {
            if !e.is_terminal() {
                *counts.entry(e.dest_storage_id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Asks one node whether it runs `domain`.
    async fn ask_disks(&self, node: &NodeEntry, domain: &str) -> Answer {
        let Ok(mut c) = self.client(node).await else {
            return Answer::Unreachable;
        };
        let answer = timed(c.list_disks(proto::ListDisksRequest {
            domain: domain.to_string(),
        }))
        .await;
        match answer {
            Ok(resp) => {
                let disks = resp.into_inner();
                if disks.running {
                    Answer::Running(disks)
                } else {
                    Answer::Defined
                }
            }
            Err(s) if s.code() == Code::NotFound => Answer::Absent,
            Err(s) if s.code() == Code::InvalidArgument => Answer::Invalid(s),
            Err(s) => {
                self.node_failed(&node.id, s.message().to_string());
                Answer::Unreachable
            }
        }
    }

    /// The disk of a domain that `node` just said it runs.
    fn found(
        &self,
        node: NodeEntry,
        domain: &str,
        disk: &str,
        disks: proto::ListDisksResponse,
    ) -> Result<Located, Status> {
        self.inner.registry.learn_domain(domain, &node.id);
        let found = disks
            .disks
            .into_iter()
            .find(|d| d.target == disk || d.source == disk)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "domain '{domain}' on node {} has no disk '{disk}'",
                    node.id
                ))
            })?;
        Ok(Located { node, disk: found })
    }

    /// Finds the node running `domain` among the `up` nodes. Only a node's
    /// answer now counts: the node that last ran it is asked first, then, if
    /// it does not run it any more, every other up node at once.
    async fn locate(&self, domain: &str, disk: &str, up: &[NodeEntry]) -> Result<Located, Status> {
        let mut down = Vec::new();
        let mut defined_on = Vec::new();
        let hinted = self
            .inner
            .registry
            .domain_hint(domain)
            .and_then(|id| up.iter().find(|n| n.id == id).cloned());
        if let Some(node) = &hinted {
            match self.ask_disks(node, domain).await {
                Answer::Running(disks) => return self.found(node.clone(), domain, disk, disks),
                Answer::Defined => defined_on.push(node.id.clone()),
                Answer::Invalid(s) => return Err(s),
                Answer::Unreachable => down.push(format!("{} ({})", node.id, node.endpoint)),
                Answer::Absent => {}
            }
        }
        let others: Vec<NodeEntry> = up
            .iter()
            .filter(|n| hinted.as_ref().is_none_or(|h| h.id != n.id))
            .cloned()
            .collect();
        let domain_owned = domain.to_string();
        let mut asked = self.fan_out(others, move |svc, node| {
            let domain = domain_owned.clone();
            async move { svc.ask_disks(&node, &domain).await }
        });
        while let Some(joined) = asked.join_next().await {
            let Ok((node, answer)) = joined else { continue };
            match answer {
                // Dropping `asked` stops asking the others.
                Answer::Running(disks) => return self.found(node, domain, disk, disks),
                Answer::Defined => defined_on.push(node.id.clone()),
                Answer::Invalid(s) => return Err(s),
                Answer::Unreachable => down.push(format!("{} ({})", node.id, node.endpoint)),
                Answer::Absent => {}
            }
        }
        let up_ids: HashSet<&str> = up.iter().map(|n| n.id.as_str()).collect();
        down.extend(
            self.inner
                .registry
                .all()
                .into_iter()
                .filter(|n| !up_ids.contains(n.id.as_str()))
                .map(|n| format!("{} ({})", n.id, n.endpoint)),
        );
        if !defined_on.is_empty() {
            defined_on.sort();
            return Err(Status::failed_precondition(format!(
                "domain '{domain}' is defined on node(s) {} but not running; live migration needs a running guest",
                defined_on.join(", ")
            )));
        }
        if !down.is_empty() {
            down.sort();
            return Err(Status::unavailable(format!(
                "domain '{domain}' runs on no reachable node; unreachable: {}",
                down.join(", ")
            )));
        }
        Err(Status::not_found(format!(
            "domain '{domain}' runs on no known node (see `volmig nodes`)"
        )))
    }

    /// The storage id of the pool the disk is on, from the inventory, asking
    /// the node again when the pool is new to it.
    async fn source_storage_id(&self, located: &Located) -> String {
        let find = |pools: &[proto::Pool]| {
            pools
                .iter()
                .find(|p| p.name == located.disk.pool)
                .map(|p| p.storage_id.clone())
        };
        if located.disk.pool.is_empty() {
            return String::new();
        }
        if let Some(id) = self
            .inner
            .inventory
            .pools_of(&located.node.id)
            .and_then(|ps| find(&ps))
        {
            return id;
        }
        match self.fetch_pools(&located.node).await {
            Ok(pools) => find(&pools).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Resolves the source and judges every pool: the core of PlanMigration and MigrateVolume.
    async fn plan(
        &self,
        req: &proto::MigrateVolumeRequest,
    ) -> Result<(Located, String, Arc<Merged>, placement::Plan), Status> {
        if req.domain.is_empty() || req.disk.is_empty() {
            return Err(Status::invalid_argument("domain and disk are required"));
        }
        let up = self.up_nodes().await;
        let located = self.locate(&req.domain, &req.disk, &up).await?;
        let source_storage_id = self.source_storage_id(&located).await;
        let pools = self.cluster_pools(&up).await;
        let requested_format = match proto::VolumeFormat::try_from(req.destination_format) {
            Ok(proto::VolumeFormat::Raw) => Some(ImageFormat::Raw),
            Ok(proto::VolumeFormat::Qcow2) => Some(ImageFormat::Qcow2),
            Ok(proto::VolumeFormat::Unspecified) => None,
            Err(_) => {
                return Err(Status::invalid_argument(
                    "invalid destination_format: unknown value",
                ))
            }
        };
        let disk = DiskToPlace {
            node_id: located.node.id.clone(),
            source_storage_id,
            virtual_size: located.disk.capacity_bytes,
            allocation: located.disk.allocation_bytes,
            requested_format,
            required_tags: req.required_tags.clone(),
        };
        let node_id = located.node.id.as_str();
        let named = &req.destination_pool;
        // A pool the domain's node does not reach can never be chosen, so only
        // a pool the caller names is judged (and explained) wherever it is:
        // with a thousand hosts of local pools, the rest would be thousands of
        // "unreachable" rows.
        let considered: Vec<&ClusterPool> = if named.is_empty() {
            pools.reachable_from(node_id).collect()
        } else {
            pools
                .pools
                .iter()
                .filter(|cp| cp.name_on(node_id) == named || cp.storage_id == *named)
                .collect()
        };
        if !named.is_empty() && considered.is_empty() {
            return Err(Status::not_found(format!(
                "storage pool '{named}' is not known on any up node (see `volmig pools --controller …`)"
            )));
        }
        let in_flight = self.in_flight();
        let candidates: Vec<PoolCandidate> = considered
            .into_iter()
            .map(|cp| PoolCandidate {
                storage_id: cp.storage_id.clone(),
                name: cp.name_on(node_id).to_string(),
                pool_type: cp.pool.r#type.clone(),
                active: cp.pool.state == proto::PoolState::Running as i32,
                capacity: cp.pool.capacity_bytes,
                allocation: cp.pool.allocation_bytes,
                available: cp.pool.available_bytes,
                provisioned: cp.pool.provisioned_bytes,
                reachable_from: cp.names.keys().cloned().collect(),
                tags: self
                    .inner
                    .config
                    .pool_settings(&cp.pool.name, &cp.storage_id)
                    .tags,
                in_flight: in_flight.get(&cp.storage_id).copied().unwrap_or(0),
            })
            .collect();
        let policy = |c: &PoolCandidate| {
            let s = self.inner.config.pool_settings(&c.name, &c.storage_id);
            PoolPolicy {
                used_threshold: s.used_threshold,
                overprovision_factor: s.overprovision_factor,
                max_in_flight: s.max_in_flight,
            }
        };
        let plan = placement::plan(&disk, &candidates, policy);
        let source_pool = located.disk.pool.clone();
        Ok((located, source_pool, pools, plan))
    }

    fn plan_response(
        located: &Located,
        source_pool: &str,
        plan: &placement::Plan,
    ) -> proto::PlanMigrationResponse {
        proto::PlanMigrationResponse {
            node_id: located.node.id.clone(),
            disk: Some(located.disk.clone()),
            source_pool: source_pool.to_string(),
            candidates: plan
                .decisions
                .iter()
                .map(|d| match &d.verdict {
                    Verdict::Accepted(fit) => proto::PlacementCandidate {
                        pool: d.name.clone(),
                        storage_id: d.storage_id.clone(),
                        accepted: true,
                        rejected_by: String::new(),
                        reason: String::new(),
                        score: fit.score,
                        free_after_bytes: fit.free_after,
                    },
                    Verdict::Rejected(r) => proto::PlacementCandidate {
                        pool: d.name.clone(),
                        storage_id: d.storage_id.clone(),
                        accepted: false,
                        rejected_by: r.rule.name().to_string(),
                        reason: r.reason.clone(),
                        score: 0.0,
                        free_after_bytes: 0,
                    },
                })
                .collect(),
            chosen_pool: plan.chosen().map(|d| d.name.clone()).unwrap_or_default(),
        }
    }

    /// Relays a node's event stream to the caller and into the history.
    fn relay(
        &self,
        mut stream: tonic::Streaming<proto::MigrationEvent>,
        first: Option<proto::MigrationEvent>,
    ) -> EventStream {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let history = self.inner.history.clone();
        tokio::spawn(async move {
            let mut caller_gone = false;
            if let Some(event) = first {
                caller_gone = tx.send(Ok(event)).await.is_err();
            }
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        if let Err(e) = history.update_latest(&event) {
                            tracing::error!(error = %e, "cannot record migration event");
                        }
                        if !caller_gone {
                            caller_gone = tx.send(Ok(event)).await.is_err();
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if !caller_gone {
                            let _ = tx
                                .send(Err(Status::unavailable(format!(
                                    "lost the node's event stream: {}; the migration goes on there, follow it with WatchMigration",
                                    status.message()
                                ))))
                                .await;
                        }
                        break;
                    }
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn entry(&self, id: &str) -> Result<Entry, Status> {
        self.inner.history.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "no migration with id '{id}' in the controller's history"
            ))
        })
    }

    async fn node_of(&self, entry: &Entry) -> Result<(NodeEntry, NodeClient<Channel>), Status> {
        let node = self.inner.registry.get(&entry.record.node_id).ok_or_else(|| {
            Status::unavailable(format!(
                "node {} that runs migration {} is not registered (it has not sent a heartbeat since the controller started)",
                entry.record.node_id, entry.record.migration_id
            ))
        })?;
        let client = self.client(&node).await?;
        Ok((node, client))
    }
}

fn node_error(node: &NodeEntry, status: Status) -> Status {
    if matches!(status.code(), Code::Unavailable | Code::Unknown) {
        node_unavailable(node, status.message())
    } else {
        status
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register_node(
        &self,
        req: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        let req = req.into_inner();
        crate::migration::validate::object_name("node_id", &req.node_id)?;
        if req.endpoint.is_empty() {
            return Err(Status::invalid_argument(
                "endpoint is required: how the controller reaches the node",
            ));
        }
        let facts = req.info.as_ref().map(facts_of).unwrap_or_default();
        if self
            .inner
            .registry
            .register(&req.node_id, &req.endpoint, facts)
        {
            // A new or returning node: its pools count from now, not from the
            // next refresh.
            if let Some(node) = self.inner.registry.get(&req.node_id) {
                let svc = self.clone();
                tokio::spawn(async move { svc.fetch_pools(&node).await }.in_current_span());
            }
        }
        Ok(Response::new(proto::RegisterNodeResponse {
            heartbeat_interval_seconds: self.inner.config.heartbeat_interval_seconds,
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        self.up_nodes().await;
        let nodes = self
            .inner
            .registry
            .all()
            .into_iter()
            .map(|n| proto::NodeStatus {
                state: if self.inner.registry.is_up(&n) {
                    proto::NodeState::Up
                } else {
                    proto::NodeState::Down
                } as i32,
                info: n.facts.as_ref().map(|f| proto::NodeInfo {
                    node_id: n.id.clone(),
                    hostname: f.hostname.clone(),
                    libvirt_version: f.libvirt_version.clone(),
                    hypervisor_version: f.hypervisor_version.clone(),
                    volmig_version: f.volmig_version.clone(),
                    ..Default::default()
                }),
                node_id: n.id,
                endpoint: n.endpoint,
                last_seen_unix_ms: n.last_seen_ms,
                configured: n.configured,
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn list_pools(
        &self,
        _req: Request<proto::ListClusterPoolsRequest>,
    ) -> Result<Response<proto::ListClusterPoolsResponse>, Status> {
        let up = self.up_nodes().await;
        let in_flight = self.in_flight();
        let pools = self
            .cluster_pools(&up)
            .await
            .pools
            .iter()
            .cloned()
            .map(|cp| {
                let settings = self
                    .inner
                    .config
                    .pool_settings(&cp.pool.name, &cp.storage_id);
                proto::ClusterPool {
                    in_flight_migrations: in_flight.get(&cp.storage_id).copied().unwrap_or(0),
                    node_ids: cp.names.keys().cloned().collect(),
                    tags: settings.tags,
                    used_threshold: settings.used_threshold,
                    storage_id: cp.storage_id,
                    pool: Some(cp.pool),
                }
            })
            .collect();
        Ok(Response::new(proto::ListClusterPoolsResponse { pools }))
    }

    async fn plan_migration(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<proto::PlanMigrationResponse>, Status> {
        let req = req.into_inner();
        let (located, source_pool, _, plan) = self.plan(&req).await?;
        Ok(Response::new(Self::plan_response(
            &located,
            &source_pool,
            &plan,
        )))
    }

    type MigrateVolumeStream = EventStream;

    #[tracing::instrument(skip_all, fields(domain = %req.get_ref().domain, disk = %req.get_ref().disk))]
    async fn migrate_volume(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Self::MigrateVolumeStream>, Status> {
        let mut req = req.into_inner();
        let (located, _source_pool, pools, plan) = self.plan(&req).await?;
        let chosen = match plan.chosen() {
            Some(d) => d.clone(),
            None if !req.destination_pool.is_empty() => {
                let why = plan
                    .decisions
                    .first()
                    .map(|d| match &d.verdict {
                        Verdict::Rejected(r) => format!("{}: {}", r.rule.name(), r.reason),
                        Verdict::Accepted(_) => String::new(),
                    })
                    .unwrap_or_default();
                return Err(Status::failed_precondition(format!(
                    "pool '{}' cannot take disk {} of '{}': {why}",
                    req.destination_pool, req.disk, req.domain
                )));
            }
            None => {
                return Err(Status::resource_exhausted(format!(
                    "no pool can take disk {} of '{}'; see `volmig plan` for each pool's reason",
                    req.disk, req.domain
                )))
            }
        };
        let pool = pools
            .pools
            .iter()
            .find(|p| p.storage_id == chosen.storage_id)
            .map(|p| p.name_on(&located.node.id).to_string())
            .unwrap_or(chosen.name.clone());
        req.destination_pool = pool;
        let node = located.node;
        let mut client = self.client(&node).await?;
        let mut stream = client
            .migrate_volume(req.clone())
            .await
            .map_err(|s| node_error(&node, s))?
            .into_inner();
        // The first event carries the migration id the node chose; record it
        // before relaying anything so the history never misses a migration.
        let first = stream
            .message()
            .await
            .map_err(|s| node_error(&node, s))?
            .ok_or_else(|| {
                Status::internal(format!(
                    "node {} ended the stream without an event",
                    node.id
                ))
            })?;
        let record = proto::MigrationRecord {
            migration_id: first.migration_id.clone(),
            node_id: node.id.clone(),
            request: Some(req),
            latest: Some(first.clone()),
            source_pool: located.disk.pool.clone(),
            previous_source: located.disk.source.clone(),
        };
        let prior = self.inner.history.get(&first.migration_id);
        if prior.is_none() {
            self.inner
                .history
                .put(Entry {
                    record,
                    dest_storage_id: chosen.storage_id.clone(),
                })
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        tracing::info!(migration_id = %first.migration_id, node = %node.id, pool = %chosen.name, at = now_ms(), "migration relayed");
        Ok(Response::new(self.relay(stream, Some(first))))
    }

    type WatchMigrationStream = EventStream;

    async fn watch_migration(
        &self,
        req: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Self::WatchMigrationStream>, Status> {
        let entry = self.entry(&req.into_inner().migration_id)?;
        let (node, mut client) = self.node_of(&entry).await?;
        let stream = client
            .watch_migration(proto::WatchMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            })
            .await
            .map_err(|s| node_error(&node, s))?
            .into_inner();
        Ok(Response::new(self.relay(stream, None)))
    }

    async fn cancel_migration(
        &self,
        req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        let entry = self.entry(&req.into_inner().migration_id)?;
        let (node, mut client) = self.node_of(&entry).await?;
        client
            .cancel_migration(proto::CancelMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            })
            .await
            .map_err(|s| node_error(&node, s))
    }

    async fn get_migration(
        &self,
        req: Request<proto::GetMigrationRequest>,
    ) -> Result<Response<proto::MigrationRecord>, Status> {
        let entry = self.entry(&req.into_inner().migration_id)?;
        if entry.is_terminal() {
            return Ok(Response::new(entry.record));
        }
        // Ask the node for the live state; its record is the truth while it runs.
        let (node, mut client) = self.node_of(&entry).await?;
        let record = client
            .get_migration(proto::GetMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            })
            .await
            .map_err(|s| node_error(&node, s))?
            .into_inner();
        if let Some(latest) = &record.latest {
            let _ = self.inner.history.update_latest(latest);
        }
        Ok(Response::new(record))
    }

    async fn list_migrations(
        &self,
        req: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        let req = req.into_inner();
        let mut records: Vec<proto::MigrationRecord> = self
            .inner
            .history
            .all()
            .into_iter()
            .filter(|e| {
                let r = &e.record;
                let latest = r.latest.clone().unwrap_or_default();
                (req.node_id.is_empty() || r.node_id == req.node_id)
                    && (req.domain.is_empty() || latest.domain == req.domain)
                    && (req.phases.is_empty() || req.phases.contains(&latest.phase))
                    && (req.started_after_unix_ms == 0
                        || latest.started_at_unix_ms >= req.started_after_unix_ms)
                    && (req.started_before_unix_ms == 0
                        || latest.started_at_unix_ms < req.started_before_unix_ms)
                    && (!req.active_only || !e.is_terminal())
            })
            .map(|e| e.record)
            .collect();
        records.sort_by_key(|r| {
            std::cmp::Reverse(r.latest.as_ref().map(|e| e.started_at_unix_ms).unwrap_or(0))
        });
        Ok(Response::new(proto::ListMigrationsResponse {
            migrations: records,
        }))
    }

    async fn set_bandwidth(
        &self,
        req: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        let req = req.into_inner();
        let entry = self.entry(&req.migration_id)?;
        let (node, mut client) = self.node_of(&entry).await?;
        client
            .set_bandwidth(req)
            .await
            .map_err(|s| node_error(&node, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::node_server::{Node, NodeServer};

    /// A node that runs `domain` when it is set, with one local pool.
    struct FakeNode {
        id: String,
        domain: Arc<Mutex<Option<String>>>,
    }

    #[tonic::async_trait]
    impl Node for FakeNode {
        async fn get_info(
            &self,
            _: Request<proto::GetInfoRequest>,
        ) -> Result<Response<proto::NodeInfo>, Status> {
            Ok(Response::new(proto::NodeInfo {
                node_id: self.id.clone(),
                ..Default::default()
            }))
        }
        async fn list_pools(
            &self,
            _: Request<proto::ListPoolsRequest>,
        ) -> Result<Response<proto::ListPoolsResponse>, Status> {
            let pool = |name: &str| proto::Pool {
                name: name.into(),
                r#type: "dir".into(),
                state: proto::PoolState::Running as i32,
                capacity_bytes: 100 << 30,
                available_bytes: 90 << 30,
                storage_id: format!("local:{}:/{name}", self.id),
                ..Default::default()
            };
            Ok(Response::new(proto::ListPoolsResponse {
                pools: vec![pool("src"), pool("dst")],
            }))
        }
        async fn list_disks(
            &self,
            req: Request<proto::ListDisksRequest>,
        ) -> Result<Response<proto::ListDisksResponse>, Status> {
            let runs = self.domain.lock().expect("lock").clone();
            if runs.as_deref() != Some(req.get_ref().domain.as_str()) {
                return Err(Status::not_found("no such domain"));
            }
            Ok(Response::new(proto::ListDisksResponse {
                running: true,
                disks: vec![proto::Disk {
                    target: "vda".into(),
                    pool: "src".into(),
                    capacity_bytes: 1 << 30,
                    allocation_bytes: 1 << 30,
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }
        type MigrateVolumeStream = EventStream;
        async fn migrate_volume(
            &self,
            _: Request<proto::MigrateVolumeRequest>,
        ) -> Result<Response<EventStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type WatchMigrationStream = EventStream;
        async fn watch_migration(
            &self,
            _: Request<proto::WatchMigrationRequest>,
        ) -> Result<Response<EventStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn cancel_migration(
            &self,
            _: Request<proto::CancelMigrationRequest>,
        ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_migration(
            &self,
            _: Request<proto::GetMigrationRequest>,
        ) -> Result<Response<proto::MigrationRecord>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_migrations(
            &self,
            _: Request<proto::ListMigrationsRequest>,
        ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn set_bandwidth(
            &self,
            _: Request<proto::SetBandwidthRequest>,
        ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    async fn fake_node(
        dir: &std::path::Path,
        svc: &ControllerService,
        id: &str,
    ) -> Arc<Mutex<Option<String>>> {
        let domain = Arc::new(Mutex::new(None));
        let path = dir.join(format!("{id}.sock"));
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let node = FakeNode {
            id: id.into(),
            domain: domain.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeServer::new(node))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        svc.register_node(Request::new(proto::RegisterNodeRequest {
            node_id: id.into(),
            endpoint: format!("unix://{}", path.display()),
            info: None,
        }))
        .await
        .expect("register");
        domain
    }

    fn request(pool: &str) -> Request<proto::MigrateVolumeRequest> {
        Request::new(proto::MigrateVolumeRequest {
            domain: "vm".into(),
            disk: "vda".into(),
            destination_pool: pool.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_domain_that_moved_is_found_on_its_new_node_despite_the_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(&dir.path().join("state")).expect("history");
        let svc = ControllerService::new(ControllerConfig::default(), history);
        let on_a = fake_node(dir.path(), &svc, "a").await;
        let on_b = fake_node(dir.path(), &svc, "b").await;

        *on_a.lock().expect("lock") = Some("vm".into());
        let plan = svc
            .plan_migration(request(""))
            .await
            .expect("plan")
            .into_inner();
        assert_eq!(plan.node_id, "a");
        assert_eq!(svc.inner.registry.domain_hint("vm").as_deref(), Some("a"));
        // Only a's pools are judged; its other pool is chosen.
        assert_eq!(plan.candidates.len(), 2);
        assert_eq!(plan.chosen_pool, "dst");

        *on_a.lock().expect("lock") = None;
        *on_b.lock().expect("lock") = Some("vm".into());
        let plan = svc
            .plan_migration(request(""))
            .await
            .expect("plan")
            .into_inner();
        assert_eq!(plan.node_id, "b", "the stale hint is not trusted");
        assert_eq!(svc.inner.registry.domain_hint("vm").as_deref(), Some("b"));
        assert!(plan
            .candidates
            .iter()
            .all(|c| c.storage_id.starts_with("local:b:")));

        // A named pool is judged even where the domain's node cannot reach it.
        let plan = svc
            .plan_migration(request("local:a:/dst"))
            .await
            .expect("plan")
            .into_inner();
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].rejected_by, "unreachable");

        *on_b.lock().expect("lock") = None;
        let err = svc.plan_migration(request("")).await.expect_err("nowhere");
        assert_eq!(err.code(), Code::NotFound);
    }
}
