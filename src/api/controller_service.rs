//! The Controller gRPC service: resolves which node runs a domain, places the
//! disk with [`crate::controller::placement`], forwards the migration to that
//! node and relays its events, keeping every migration in the history.
//!
//! The relay runs in its own task: a caller dropping the stream neither stops
//! the migration (it runs on the node) nor the history updates. After a
//! controller restart, unfinished migrations are followed again from the nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::api::client;
use crate::api::node_service::EventStream;
use crate::config::ControllerConfig;
use crate::controller::history::{Entry, History};
use crate::controller::inventory::{self, ClusterPool};
use crate::controller::placement::{self, DiskToPlace, PoolCandidate, PoolPolicy, Verdict};
use crate::controller::registry::{NodeEntry, NodeFacts, Registry};
use crate::hypervisor::ImageFormat;
use crate::migration::model::now_ms;
use crate::proto;
use crate::proto::controller_server::Controller;
use crate::proto::node_client::NodeClient;

/// How long one call to a node may take before the node counts as unreachable.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The controller service.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControllerConfig,
    registry: Registry,
    history: Arc<History>,
}

/// Where a domain's disk is, as its node reports it.
struct Located {
    node: NodeEntry,
    disk: proto::Disk,
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

impl ControllerService {
    /// A controller with its configuration and history; follows unfinished
    /// migrations again in the background.
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
                history: Arc::new(history),
            }),
        };
        for entry in service.inner.history.all() {
            if !entry.is_terminal() {
                let svc = service.clone();
                tokio::spawn(async move { svc.follow_until_done(entry).await });
            }
        }
        service
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

    async fn client(&self, node: &NodeEntry) -> Result<NodeClient<Channel>, Status> {
        match client::connect(&node.endpoint).await {
            Ok(channel) => Ok(NodeClient::new(channel)),
            Err(e) => {
                self.inner.registry.failed(&node.id, e.to_string());
                Err(node_unavailable(node, e))
            }
        }
    }

    /// Nodes that answer now: fresh ones as they are, stale ones probed.
    async fn up_nodes(&self) -> Vec<NodeEntry> {
        let fresh = Duration::from_secs(u64::from(
            self.inner.config.heartbeat_interval_seconds.max(1),
        ));
        let mut up = Vec::new();
        for node in self.inner.registry.all() {
            if self.inner.registry.is_fresh(&node, fresh) {
                up.push(node);
                continue;
            }
            let probe = async {
                let mut c = self.client(&node).await?;
                tokio::time::timeout(NODE_CALL_TIMEOUT, c.get_info(proto::GetInfoRequest {}))
                    .await
                    .map_err(|_| Status::deadline_exceeded("timed out"))?
            };
            match probe.await {
                Ok(info) => {
                    self.inner
                        .registry
                        .seen(&node.id, Some(facts_of(info.get_ref())));
                    up.push(node);
                }
                Err(e) => self
                    .inner
                    .registry
                    .failed(&node.id, e.message().to_string()),
            }
        }
        up
    }

    async fn node_pools(&self, nodes: &[NodeEntry]) -> BTreeMap<String, Vec<proto::Pool>> {
        let mut per_node = BTreeMap::new();
        for node in nodes {
            let listed = async {
                let mut c = self.client(node).await?;
                tokio::time::timeout(NODE_CALL_TIMEOUT, c.list_pools(proto::ListPoolsRequest {}))
                    .await
                    .map_err(|_| Status::deadline_exceeded("timed out"))?
            };
            match listed.await {
                Ok(resp) => {
                    per_node.insert(node.id.clone(), resp.into_inner().pools);
                }
                Err(e) => self
                    .inner
                    .registry
                    .failed(&node.id, e.message().to_string()),
            }
        }
        per_node
    }

    fn in_flight(&self, storage_id: &str) -> u32 {
        self.inner
            .history
            .all()
            .iter()
            .filter(|e| !e.is_terminal() && e.dest_storage_id == storage_id)
            .count() as u32
    }

    fn cluster_pools(&self, per_node: &BTreeMap<String, Vec<proto::Pool>>) -> Vec<ClusterPool> {
        inventory::merge(per_node)
    }

    /// Finds the node running `domain` by asking every up node (never a cache).
    async fn locate(&self, domain: &str, disk: &str) -> Result<Located, Status> {
        let nodes = self.up_nodes().await;
        let down: Vec<String> = self
            .inner
            .registry
            .all()
            .into_iter()
            .filter(|n| !nodes.iter().any(|u| u.id == n.id))
            .map(|n| format!("{} ({})", n.id, n.endpoint))
            .collect();
        let mut defined_on = Vec::new();
        for node in nodes {
            let mut c = self.client(&node).await?;
            let answer = tokio::time::timeout(
                NODE_CALL_TIMEOUT,
                c.list_disks(proto::ListDisksRequest {
                    domain: domain.to_string(),
                }),
            )
            .await;
            match answer {
                Ok(Ok(resp)) => {
                    let disks = resp.into_inner();
                    if !disks.running {
                        defined_on.push(node.id.clone());
                        continue;
                    }
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
                    return Ok(Located { node, disk: found });
                }
                Ok(Err(s)) if s.code() == Code::NotFound => {}
                Ok(Err(s)) if s.code() == Code::InvalidArgument => return Err(s),
                Ok(Err(s)) => self
                    .inner
                    .registry
                    .failed(&node.id, s.message().to_string()),
                Err(_) => self
                    .inner
                    .registry
                    .failed(&node.id, "timed out".to_string()),
            }
        }
        if !defined_on.is_empty() {
            return Err(Status::failed_precondition(format!(
                "domain '{domain}' is defined on node(s) {} but not running; live migration needs a running guest",
                defined_on.join(", ")
            )));
        }
        if !down.is_empty() {
            return Err(Status::unavailable(format!(
                "domain '{domain}' runs on no reachable node; unreachable: {}",
                down.join(", ")
            )));
        }
        Err(Status::not_found(format!(
            "domain '{domain}' runs on no known node (see `volmig nodes`)"
        )))
    }

    /// Resolves the source and judges every pool: the core of PlanMigration and MigrateVolume.
    async fn plan(
        &self,
        req: &proto::MigrateVolumeRequest,
    ) -> Result<(Located, String, Vec<ClusterPool>, placement::Plan), Status> {
        if req.domain.is_empty() || req.disk.is_empty() {
            return Err(Status::invalid_argument("domain and disk are required"));
        }
        let located = self.locate(&req.domain, &req.disk).await?;
        let nodes = self.up_nodes().await;
        let per_node = self.node_pools(&nodes).await;
        let pools = self.cluster_pools(&per_node);
        let source_storage_id = per_node
            .get(&located.node.id)
            .and_then(|ps| ps.iter().find(|p| p.name == located.disk.pool))
            .map(|p| p.storage_id.clone())
            .unwrap_or_default();
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
        let candidates: Vec<PoolCandidate> = pools
            .iter()
            .map(|cp| PoolCandidate {
                storage_id: cp.storage_id.clone(),
                name: cp.name_on(&located.node.id).to_string(),
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
                in_flight: self.in_flight(&cp.storage_id),
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
        let plan = if req.destination_pool.is_empty() {
            placement::plan(&disk, &candidates, policy)
        } else {
            let named = candidates
                .iter()
                .filter(|c| c.name == req.destination_pool || c.storage_id == req.destination_pool)
                .cloned()
                .collect::<Vec<_>>();
            if named.is_empty() {
                return Err(Status::not_found(format!(
                    "storage pool '{}' is not known on any up node (see `volmig pools --controller …`)",
                    req.destination_pool
                )));
            }
            placement::plan(&disk, &named, policy)
        };
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
        self.inner
            .registry
            .register(&req.node_id, &req.endpoint, facts);
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
        let nodes = self.up_nodes().await;
        let per_node = self.node_pools(&nodes).await;
        let pools = self
            .cluster_pools(&per_node)
            .into_iter()
            .map(|cp| {
                let settings = self
                    .inner
                    .config
                    .pool_settings(&cp.pool.name, &cp.storage_id);
                proto::ClusterPool {
                    in_flight_migrations: self.in_flight(&cp.storage_id),
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
