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
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::api::audit::Audit;
use crate::api::auth::{Caller, Grant};
use crate::api::client::{self, AuthChannel, Credentials};
use crate::api::node_service::EventStream;
use crate::config::ControllerConfig;
use crate::controller::group_placement::{self, DiskChoices};
use crate::controller::history::{Entry, History};
use crate::controller::inventory::{ClusterPool, Inventory, Merged};
use crate::controller::placement::{
    self, DiskToPlace, LayerToPlace, PoolCandidate, PoolPolicy, Verdict,
};
use crate::controller::registry::{self, NodeEntry, NodeFacts, Registry, RegistryError};
use crate::hypervisor::ImageFormat;
use crate::migration::model::now_ms;
use crate::proto;
use crate::proto::controller_server::Controller;
use crate::proto::node_client::NodeClient;

mod groups;
mod nodes;
mod relay;
mod resolve;
use resolve::shallow;
mod source_users;
#[cfg(test)]
mod tests;

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
    /// Open channels by node id, with the endpoint they go to and the
    /// generation of the client certificate they were opened with.
    channels: Mutex<HashMap<String, OpenChannel>>,
    /// What the controller presents to its nodes.
    credentials: Credentials,
    /// The follower of each unfinished migration being followed.
    followers: Mutex<HashMap<String, Arc<relay::Follower>>>,
    history: Arc<History>,
    /// Told of placement rejections and relayed events (metrics).
    observer: Arc<dyn crate::controller::Observer>,
}

/// A channel to a node, reused while its endpoint and the controller's client
/// certificate files stay the same (a rotated certificate opens new ones).
pub(super) struct OpenChannel {
    endpoint: String,
    generation: Vec<Option<std::time::SystemTime>>,
    channel: AuthChannel,
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

/// The `x-volmig-caller` value for `caller`: printable ASCII only.
fn caller_header(
    caller: &Caller,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let text: String = caller.audit_name().escape_default().take(256).collect();
    text.parse().ok()
}

impl ControllerService {
    /// A controller with its configuration and history; follows unfinished
    /// migrations again and keeps the pool inventory fresh in the background.
    pub fn new(config: ControllerConfig, history: History) -> ControllerService {
        ControllerService::with_credentials(config, history, Credentials::default())
    }

    /// [`ControllerService::new`] whose calls to nodes present `credentials`
    /// (its client certificate for `https://` nodes, a token).
    pub fn with_credentials(
        config: ControllerConfig,
        history: History,
        credentials: Credentials,
    ) -> ControllerService {
        ControllerService::observed(config, history, credentials, Arc::new(()))
    }

    /// [`ControllerService::with_credentials`] telling `observer` of its
    /// placement rejections and relayed events.
    pub fn observed(
        config: ControllerConfig,
        history: History,
        credentials: Credentials,
        observer: Arc<dyn crate::controller::Observer>,
    ) -> ControllerService {
        let registry = Registry::new(
            config
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.endpoint.clone())),
            Duration::from_secs(u64::from(config.down_after_seconds.max(1))),
            config.max_nodes.max(config.nodes.len()),
        );
        let service = ControllerService {
            inner: Arc::new(Inner {
                config,
                registry,
                inventory: Inventory::new(),
                channels: Mutex::new(HashMap::new()),
                credentials,
                followers: Mutex::new(HashMap::new()),
                history: Arc::new(history),
                observer,
            }),
        };
        for entry in service.inner.history.all() {
            if !entry.is_terminal() {
                service.follow(&entry, None);
            }
        }
        service.spawn_refresher();
        service
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

    /// Reports the pools `plan` rejected, by rule.
    pub(super) fn observe_rejections(&self, plan: &placement::Plan) {
        for decision in &plan.decisions {
            if let Verdict::Rejected(rejection) = &decision.verdict {
                self.inner.observer.placement_rejected(rejection.rule);
            }
        }
    }

    /// Bound on one call to a node.
    pub(super) fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.config.node_call_timeout_seconds.max(1))
    }

    /// Runs a call to a node within [`Self::call_timeout`]; for a stream,
    /// until its response headers.
    pub(super) async fn timed<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        tokio::time::timeout(self.call_timeout(), call)
            .await
            .map_err(|_| Status::deadline_exceeded("the node did not answer in time"))?
    }

    /// A request to a node, naming for its audit log the caller the
    /// controller acts for.
    pub(super) fn to_node<T>(&self, caller: Option<&Caller>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = caller.and_then(caller_header) {
            request
                .metadata_mut()
                .insert(crate::api::auth::CALLER_HEADER, value);
        }
        request
    }

    fn entry(&self, id: &str) -> Result<Entry, Status> {
        crate::migration::validate::migration_id(id)?;
        self.inner.history.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "no migration with id '{id}' in the controller's history"
            ))
        })
    }

    async fn node_of(&self, entry: &Entry) -> Result<(NodeEntry, NodeClient<AuthChannel>), Status> {
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
        let audit = Audit::start(&req, "Controller/RegisterNode").target(&[
            ("node_id", &req.get_ref().node_id),
            ("endpoint", &req.get_ref().endpoint),
        ]);
        audit.finish(self.register(req).await)
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
        if groups::is_group(&req) {
            let plan = self.plan_group(&req).await?;
            return Ok(Response::new(Self::group_plan_response(&plan)));
        }
        let (located, source_pool, _, plan) = self.plan(&req).await?;
        Ok(Response::new(Self::plan_response(
            &located,
            &source_pool,
            &plan,
        )))
    }

    type MigrateVolumeStream = EventStream;

    async fn migrate_volume(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Self::MigrateVolumeStream>, Status> {
        let audit = Audit::start(&req, "Controller/MigrateVolume").target(&[
            ("domain", &req.get_ref().domain),
            ("disk", &req.get_ref().disk),
            ("pool", &req.get_ref().destination_pool),
        ]);
        let (id, stream) = match self.start_migration(req).await {
            Ok((id, stream)) => (id, Ok(stream)),
            Err(e) => (String::new(), Err(e)),
        };
        audit.migration(&id).finish(stream.map(Response::new))
    }

    type WatchMigrationStream = EventStream;

    async fn watch_migration(
        &self,
        req: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Self::WatchMigrationStream>, Status> {
        let entry = self.entry(&req.into_inner().migration_id)?;
        let follower = match self.following(&entry.record.migration_id) {
            Some(follower) => follower,
            None => {
                // Nobody follows it (it ended, or was not followed yet): reach
                // the node now, so an unreachable node is this caller's
                // UNAVAILABLE, naming the node, rather than a silent wait.
                let (node, mut client) = self.node_of(&entry).await?;
                let request = self.to_node(
                    None,
                    proto::WatchMigrationRequest {
                        migration_id: entry.record.migration_id.clone(),
                    },
                );
                let stream = self
                    .timed(client.watch_migration(request))
                    .await
                    .map_err(|s| node_error(&node, s))?
                    .into_inner();
                self.follow(&entry, Some(stream))
            }
        };
        Ok(Response::new(self.watch_stream(&follower)?))
    }

    async fn cancel_migration(
        &self,
        req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        let audit =
            Audit::start(&req, "Controller/CancelMigration").migration(&req.get_ref().migration_id);
        audit.finish(self.cancel(req).await)
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
        let request = self.to_node(
            None,
            proto::GetMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            },
        );
        let record = self
            .timed(client.get_migration(request))
            .await
            .map_err(|s| node_error(&node, s))?
            .into_inner();
        match &record.latest {
            Some(latest) if relay::owns(&entry, latest) => {
                let _ = self.inner.history.update_latest(latest);
            }
            _ => {
                return Err(Status::internal(format!(
                    "node {} answered with a record that is not migration {}",
                    node.id, entry.record.migration_id
                )))
            }
        }
        Ok(Response::new(record))
    }

    async fn list_migrations(
        &self,
        req: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        let req = req.into_inner();
        crate::migration::validate::list_filter(&req.domain, &req.node_id)?;
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
        let audit = Audit::start(&req, "Controller/SetBandwidth")
            .migration(&req.get_ref().migration_id)
            .target(&[("bytes_per_sec", &req.get_ref().bytes_per_sec.to_string())]);
        audit.finish(self.bandwidth(req).await)
    }
}

/// The mutating calls, audited by their trait methods above.
impl ControllerService {
    async fn register(
        &self,
        req: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        let caller = Caller::of(&req).cloned();
        let req = req.into_inner();
        crate::migration::validate::object_name("node_id", &req.node_id)?;
        // Only the node itself (its bound identity) or a local caller.
        let caller = caller.ok_or_else(|| Status::unauthenticated("no caller identity"))?;
        if !caller.may_register(&req.node_id) {
            return Err(RegistryError::NotThisNode {
                caller: caller.identity.clone(),
                node_id: req.node_id.clone(),
                bound: match &caller.grant {
                    Grant::Role { node_id, .. } => node_id.clone(),
                    _ => None,
                },
            }
            .into());
        }
        registry::check_endpoint(&req.endpoint, caller.is_local())?;
        let facts = req.info.as_ref().map(facts_of).unwrap_or_default();
        let news = self
            .inner
            .registry
            .register(&req.node_id, &req.endpoint, facts)?;
        if news {
            // A new or returning node: its pools count from now, not from the
            // next refresh.
            if let Some(node) = self.inner.registry.get(&req.node_id) {
                tracing::info!(node = %node.id, endpoint = %node.endpoint.escape_debug(), by = %caller.identity, "node registered");
                let svc = self.clone();
                tokio::spawn(async move { svc.fetch_pools(&node).await }.in_current_span());
            }
        }
        Ok(Response::new(proto::RegisterNodeResponse {
            heartbeat_interval_seconds: self.inner.config.heartbeat_interval_seconds,
        }))
    }

    #[tracing::instrument(skip_all, fields(domain = %req.get_ref().domain.escape_debug(), disk = %req.get_ref().disk.escape_debug(), migration.id, node.id))]
    /// Places and starts a migration; its id and the caller's event stream.
    async fn start_migration(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<(String, EventStream), Status> {
        let caller = Caller::of(&req).cloned();
        let mut req = req.into_inner();
        if groups::is_group(&req) {
            return self.start_group_migration(caller.as_ref(), req).await;
        }
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
        let options = req.options.get_or_insert_with(Default::default);
        if options.source_policy == proto::SourcePolicy::Delete as i32 {
            let elsewhere = self
                .source_users_elsewhere(
                    &node,
                    &located.disk.pool,
                    &located.disk.source,
                    &req.domain,
                    &pools,
                )
                .await;
            options.source_users_elsewhere.extend(elsewhere);
        }
        let (stream, first) = self.start_on_node(caller.as_ref(), &node, &req).await?;
        let record = proto::MigrationRecord {
            migration_id: first.migration_id.clone(),
            node_id: node.id.clone(),
            request: Some(req),
            latest: Some(first.clone()),
            source_pool: located.disk.pool.clone(),
            previous_source: located.disk.source.clone(),
        };
        let entry = self.record_started(
            &node,
            Entry {
                record,
                dest_storage_id: chosen.storage_id.clone(),
                more_storage_ids: Vec::new(),
            },
        )?;
        let span = tracing::Span::current();
        span.record("migration.id", first.migration_id.as_str());
        span.record("node.id", node.id.as_str());
        tracing::info!(migration_id = %first.migration_id, node = %node.id, pool = %chosen.name, at = now_ms(), "migration relayed");
        let follower = self.follow(&entry, Some(stream));
        Ok((
            entry.record.migration_id.clone(),
            self.watch_stream(&follower)?,
        ))
    }

    /// Sends the request to the node and reads its first event, which must
    /// be the start of a migration of that node's own.
    async fn start_on_node(
        &self,
        caller: Option<&Caller>,
        node: &NodeEntry,
        req: &proto::MigrateVolumeRequest,
    ) -> Result<
        (
            tonic::codec::Streaming<proto::MigrationEvent>,
            proto::MigrationEvent,
        ),
        Status,
    > {
        let mut client = self.client(node).await?;
        let request = self.to_node(caller, req.clone());
        // Bounded until the first event: the node answers at once (it
        // validates before it streams); later events may be minutes apart.
        let (stream, first) = tokio::time::timeout(self.call_timeout(), async {
            let mut stream = client
                .migrate_volume(request)
                .await
                .map_err(|s| node_error(node, s))?
                .into_inner();
            let first = stream.message().await.map_err(|s| node_error(node, s))?;
            Ok::<_, Status>((stream, first))
        })
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "node {} did not start the migration in time",
                node.id
            ))
        })??;
        // The first event carries the migration id the node chose; record it
        // before relaying anything so the history never misses a migration.
        let first = first.ok_or_else(|| {
            Status::internal(format!(
                "node {} ended the stream without an event",
                node.id
            ))
        })?;
        if crate::migration::validate::migration_id(&first.migration_id).is_err()
            || first.node_id != node.id
        {
            return Err(Status::internal(format!(
                "node {} answered with an event that is not its own migration",
                node.id
            )));
        }
        Ok((stream, first))
    }

    /// Records a migration the node started (before anything is relayed, so
    /// the history never misses one); a retry that attached to a migration
    /// already recorded gets that entry.
    fn record_started(&self, node: &NodeEntry, entry: Entry) -> Result<Entry, Status> {
        let id = &entry.record.migration_id;
        match self.inner.history.get(id) {
            Some(prior) if prior.record.node_id != node.id => Err(Status::internal(format!(
                "node {} answered with migration {id}, which node {} runs",
                node.id, prior.record.node_id
            ))),
            Some(prior) => Ok(prior),
            None => {
                self.inner
                    .history
                    .put(entry.clone())
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(entry)
            }
        }
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        let caller = Caller::of(&req).cloned();
        let entry = self.entry(&req.into_inner().migration_id)?;
        let (node, mut client) = self.node_of(&entry).await?;
        let request = self.to_node(
            caller.as_ref(),
            proto::CancelMigrationRequest {
                migration_id: entry.record.migration_id.clone(),
            },
        );
        self.timed(client.cancel_migration(request))
            .await
            .map_err(|s| node_error(&node, s))
    }

    async fn bandwidth(
        &self,
        req: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        let caller = Caller::of(&req).cloned();
        let req = req.into_inner();
        let entry = self.entry(&req.migration_id)?;
        crate::migration::validate::bandwidth(req.bytes_per_sec)?;
        let (node, mut client) = self.node_of(&entry).await?;
        let request = self.to_node(caller.as_ref(), req);
        self.timed(client.set_bandwidth(request))
            .await
            .map_err(|s| node_error(&node, s))
    }
}
