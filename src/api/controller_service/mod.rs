//! The Controller gRPC service: a shim over [`crate::controller::Controller`]
//! that checks who calls, converts proto ↔ domain ([`convert`]) and audits
//! the mutating calls. What the controller decides lives in the domain.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::audit::Audit;
use crate::api::auth::{Caller, Grant};
use crate::api::client::Credentials;
use crate::api::node_client::GrpcNodes;
use crate::api::node_service::EventStream;
use crate::config::ControllerConfig;
use crate::controller::advertise::Registrant;
use crate::controller::error::ControllerError;
use crate::controller::placement::{self, PoolVerdict};
use crate::controller::registry::RegistryError;
use crate::controller::store::Store;
use crate::controller::{self, ControllerObserver, Found, Planned, SinglePlan, WatchStream};
use crate::proto;
// The generated service trait, named apart from the domain's `controller::Controller`.
use crate::proto::controller_server::Controller as ControllerRpc;

pub mod convert;
pub mod legacy;
mod peer;
#[cfg(test)]
mod tests;

/// The controller service.
#[derive(Clone)]
pub struct ControllerService {
    controller: controller::Controller,
}

/// The stream a caller reads: the domain's events as the node sent them.
fn event_stream(mut watch: WatchStream) -> EventStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = watch.recv() => item,
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            let item = item
                .map(|e| convert::event_to_proto(&e))
                .map_err(crate::api::status::controller);
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn candidates(plan: &placement::PlacementPlan) -> Vec<proto::PlacementCandidate> {
    plan.decisions
        .iter()
        .map(|d| match &d.verdict {
            PoolVerdict::Accepted(fit) => proto::PlacementCandidate {
                pool: d.name.clone(),
                storage_id: d.storage_id.clone(),
                accepted: true,
                rejected_by: String::new(),
                reason: String::new(),
                score: fit.score,
                free_after_bytes: fit.free_after,
            },
            PoolVerdict::Rejected(r) => proto::PlacementCandidate {
                pool: d.name.clone(),
                storage_id: d.storage_id.clone(),
                accepted: false,
                rejected_by: r.rule.name().to_string(),
                reason: r.reason.clone(),
                score: 0.0,
                free_after_bytes: 0,
            },
        })
        .collect()
}

fn single_plan_response(p: &SinglePlan) -> proto::PlanMigrationResponse {
    proto::PlanMigrationResponse {
        node_id: p.located.node.id.clone(),
        disk: Some(convert::disk_to_proto(&p.located.disk)),
        source_pool: p.source_pool.clone(),
        candidates: candidates(&p.plan),
        chosen_pool: p.plan.chosen().map(|d| d.name.clone()).unwrap_or_default(),
        disks: Vec::new(),
    }
}

fn plan_response(planned: &Planned) -> proto::PlanMigrationResponse {
    match planned {
        Planned::Single(p) => single_plan_response(p),
        Planned::Group(g) => proto::PlanMigrationResponse {
            node_id: g.node.id.clone(),
            disks: g
                .disks
                .iter()
                .map(|(located, _, plan)| {
                    single_plan_response(&SinglePlan {
                        located: located.clone(),
                        source_pool: located.disk.pool.clone(),
                        plan: plan.clone(),
                    })
                })
                .collect(),
            ..Default::default()
        },
    }
}

impl ControllerService {
    /// A controller over `store` whose calls to nodes present `credentials`
    /// (its client certificate for `https://` nodes; its token only to the
    /// configured nodes reached over `https://` or `unix://`) and that tells
    /// `observer` of its placement rejections and relayed events.
    pub async fn start(
        config: ControllerConfig,
        store: Arc<dyn Store>,
        credentials: Credentials,
        observer: Arc<dyn ControllerObserver>,
    ) -> Result<ControllerService, ControllerError> {
        let nodes = Arc::new(GrpcNodes::new(
            credentials,
            &config.nodes,
            std::time::Duration::from_secs(config.node_call_timeout_seconds.max(1)),
        ));
        let controller = controller::Controller::start(config, store, nodes, observer).await?;
        Ok(ControllerService { controller })
    }

    /// The domain controller behind the service.
    pub fn controller(&self) -> &controller::Controller {
        &self.controller
    }

    /// See [`controller::Controller::node_health`].
    pub fn node_health(&self) -> Vec<(String, bool, Option<std::time::Duration>)> {
        self.controller.node_health()
    }
}

/// A malformed migration id is the caller's error.
fn migration_id(id: &str) -> Result<&str, Status> {
    crate::migration::validate::migration_id(id).map_err(crate::api::status::invalid)?;
    Ok(id)
}

#[tonic::async_trait]
impl ControllerRpc for ControllerService {
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
        let nodes = self
            .controller
            .list_nodes()
            .await
            .into_iter()
            .map(|s| {
                let n = s.node;
                proto::NodeStatus {
                    state: if s.up {
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
                    node_id: n.id.clone(),
                    endpoint: n.endpoint.clone(),
                    last_seen_unix_ms: n.last_seen_ms,
                    configured: n.configured,
                }
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn list_pools(
        &self,
        _req: Request<proto::ListClusterPoolsRequest>,
    ) -> Result<Response<proto::ListClusterPoolsResponse>, Status> {
        let pools = self
            .controller
            .list_pools()
            .await
            .map_err(crate::api::status::controller)?
            .into_iter()
            .map(|p| proto::ClusterPool {
                in_flight_migrations: p.in_flight,
                node_ids: p.pool.names.keys().cloned().collect(),
                tags: p.tags,
                used_threshold: p.used_threshold,
                maintenance: p.maintenance.as_ref().map(convert::maintenance_to_proto),
                storage_id: p.pool.storage_id.clone(),
                pool: Some(convert::pool_to_proto(&p.pool.pool)),
            })
            .collect();
        Ok(Response::new(proto::ListClusterPoolsResponse { pools }))
    }

    async fn plan_migration(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<proto::PlanMigrationResponse>, Status> {
        let order = convert::order_from_proto(req.into_inner())?;
        let planned = self
            .controller
            .plan(&order)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(plan_response(&planned)))
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
        let req = req.into_inner();
        let watch = self
            .controller
            .watch(migration_id(&req.migration_id)?)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(event_stream(watch)))
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
        let req = req.into_inner();
        let record = match self
            .controller
            .get(migration_id(&req.migration_id)?)
            .await
            .map_err(crate::api::status::controller)?
        {
            Found::Recorded(entry) => convert::entry_to_proto(&entry),
            Found::Live(record) => convert::node_record_to_proto(&record),
        };
        Ok(Response::new(record))
    }

    async fn list_migrations(
        &self,
        req: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        let req = req.into_inner();
        crate::migration::validate::list_filter(&req.domain, &req.node_id)
            .map_err(crate::api::status::invalid)?;
        let migrations = self
            .controller
            .list(&convert::filter_from_proto(&req))
            .await
            .map_err(crate::api::status::controller)?
            .iter()
            .map(convert::entry_to_proto)
            .collect();
        Ok(Response::new(proto::ListMigrationsResponse { migrations }))
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

    async fn set_pool_maintenance(
        &self,
        req: Request<proto::SetPoolMaintenanceRequest>,
    ) -> Result<Response<proto::SetPoolMaintenanceResponse>, Status> {
        let audit = Audit::start(&req, "Controller/SetPoolMaintenance").target(&[
            ("pool", &req.get_ref().pool),
            ("maintenance", &req.get_ref().maintenance.to_string()),
        ]);
        audit.finish(self.pool_maintenance(req).await)
    }
}

/// The mutating calls, audited by their trait methods above.
impl ControllerService {
    async fn register(
        &self,
        req: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        let caller = Caller::of(&req).cloned();
        let certificate = peer::certificate_hosts(&req);
        let req = req.into_inner();
        crate::migration::validate::object_name("node_id", &req.node_id)
            .map_err(crate::api::status::invalid)?;
        // Only the node itself (its bound identity) or a local caller.
        let caller = caller.ok_or_else(|| Status::unauthenticated("no caller identity"))?;
        if !caller.may_register(&req.node_id) {
            return Err(crate::api::status::registry(RegistryError::NotThisNode {
                caller: caller.identity.clone(),
                node_id: req.node_id.clone(),
                bound: match &caller.grant {
                    Grant::Role { node_id, .. } => node_id.clone(),
                    _ => None,
                },
            }));
        }
        let facts = req
            .info
            .as_ref()
            .map(convert::facts_from_proto)
            .unwrap_or_default();
        let registrant = if caller.is_local() {
            Registrant::Local
        } else {
            Registrant::Remote(certificate)
        };
        let heartbeat = self
            .controller
            .register(&req.node_id, &req.endpoint, facts, &registrant)
            .await
            .map_err(crate::api::status::controller)?;
        tracing::debug!(node = %req.node_id, by = %caller.identity, "registration");
        Ok(Response::new(proto::RegisterNodeResponse {
            heartbeat_interval_seconds: heartbeat,
        }))
    }

    #[tracing::instrument(skip_all, fields(domain = %req.get_ref().domain.escape_debug(), disk = %req.get_ref().disk.escape_debug(), migration.id, node.id))]
    /// Places and starts a migration; its id and the caller's event stream.
    async fn start_migration(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<(String, EventStream), Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let order = convert::order_from_proto(req.into_inner())?;
        let (id, watch) = self
            .controller
            .start_migration(actor.as_deref(), order)
            .await
            .map_err(crate::api::status::controller)?;
        Ok((id, event_stream(watch)))
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let req = req.into_inner();
        let latest = self
            .controller
            .cancel(actor.as_deref(), migration_id(&req.migration_id)?)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(proto::CancelMigrationResponse {
            latest: latest.as_ref().map(convert::event_to_proto),
        }))
    }

    async fn pool_maintenance(
        &self,
        req: Request<proto::SetPoolMaintenanceRequest>,
    ) -> Result<Response<proto::SetPoolMaintenanceResponse>, Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let req = req.into_inner();
        // A pool is named as libvirt names pools, or by a storage id, which
        // may hold '/' (a path): bounded and printable either way.
        crate::migration::validate::pool_ref(&req.pool).map_err(crate::api::status::invalid)?;
        let set = self
            .controller
            .set_pool_maintenance(
                actor.as_deref(),
                &req.pool,
                req.maintenance,
                Some(req.reason).filter(|r| !r.is_empty()),
            )
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(proto::SetPoolMaintenanceResponse {
            storage_id: set.storage_id,
            pool: set.name,
            maintenance: Some(convert::maintenance_to_proto(&set.flag)),
        }))
    }

    async fn bandwidth(
        &self,
        req: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        let actor = Caller::of(&req).map(Caller::audit_name);
        let req = req.into_inner();
        let id = migration_id(&req.migration_id)?;
        self.controller
            .entry(id)
            .await
            .map_err(crate::api::status::controller)?;
        crate::migration::validate::bandwidth(req.bytes_per_sec)
            .map_err(crate::api::status::invalid)?;
        self.controller
            .set_bandwidth(actor.as_deref(), id, req.bytes_per_sec)
            .await
            .map_err(crate::api::status::controller)?;
        Ok(Response::new(proto::SetBandwidthResponse {}))
    }
}
