//! The Node gRPC service: a thin shim over the migration engine.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::audit::Audit;
use crate::api::convert;
use crate::migration::{Engine, Subscription};
use crate::proto;
use crate::proto::node_server::Node;

/// A stream of migration events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::MigrationEvent, Status>> + Send>>;

/// Node service over an engine.
pub struct NodeService {
    engine: Engine,
}

impl NodeService {
    /// A service for `engine`.
    pub fn new(engine: Engine) -> Self {
        NodeService { engine }
    }
}

/// Turns a subscription into a gRPC stream. The subscription is driven by its
/// own task so that a client going away only drops the channel, never the job.
pub fn event_stream(mut sub: Subscription) -> EventStream {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // A caller that went away frees its subscription at once, not at
            // the migration's next event: watchers are counted against a limit.
            let event = tokio::select! {
                event = sub.next() => event,
                () = tx.closed() => None,
            };
            let Some(event) = event else { break };
            if tx.send(Ok(convert::event_to_proto(&event))).await.is_err() {
                break;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn get_info(
        &self,
        _req: Request<proto::GetInfoRequest>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        let host = self
            .engine
            .host_info()
            .await
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(convert::node_info_to_proto(
            self.engine.node_id(),
            &host,
            self.engine.max_concurrent(),
        )))
    }

    async fn list_pools(
        &self,
        _req: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let pools = self
            .engine
            .pools()
            .await
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(proto::ListPoolsResponse {
            pools: pools.iter().map(convert::pool_to_proto).collect(),
        }))
    }

    async fn list_disks(
        &self,
        req: Request<proto::ListDisksRequest>,
    ) -> Result<Response<proto::ListDisksResponse>, Status> {
        let disks = self
            .engine
            .disks(&req.into_inner().domain)
            .await
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(convert::disks_to_proto(&disks)))
    }

    type MigrateVolumeStream = EventStream;

    #[tracing::instrument(skip_all, fields(domain, disk))]
    async fn migrate_volume(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Self::MigrateVolumeStream>, Status> {
        let mut audit = Audit::start(&req, "Node/MigrateVolume");
        let req = req.into_inner();
        tracing::Span::current().record("domain", req.domain.escape_debug().to_string());
        let disks = if req.all_disks {
            "all".to_string()
        } else if req.disks.is_empty() {
            req.disk.clone()
        } else {
            let named: Vec<&str> = req.disks.iter().map(|d| d.disk.as_str()).collect();
            crate::api::audit::bounded_list(&named)
        };
        tracing::Span::current().record("disk", disks.escape_debug().to_string());
        audit = audit.target(&[
            ("domain", &req.domain),
            ("disk", &disks),
            ("pool", &req.destination_pool),
        ]);
        let started = async {
            if req.destination_pool.is_empty() && req.disks.is_empty() && !req.all_disks {
                return Err(Status::invalid_argument(
                    "invalid destination_pool: a node needs the destination pool named (the controller chooses one when it is empty)",
                ));
            }
            Ok(match convert::requested_from_proto(req).map_err(crate::api::status::engine)? {
                convert::Requested::Disk(request) => self.engine.migrate(request).await.map_err(crate::api::status::engine)?,
                convert::Requested::Group(request) => self.engine.migrate_group(request).await.map_err(crate::api::status::engine)?,
            })
        }
        .await;
        if let Ok(sub) = &started {
            audit.set_migration(sub.migration_id());
        }
        let sub = audit.finish(started)?;
        Ok(Response::new(event_stream(sub)))
    }

    type WatchMigrationStream = EventStream;

    async fn watch_migration(
        &self,
        req: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Self::WatchMigrationStream>, Status> {
        let sub = self
            .engine
            .watch(&req.into_inner().migration_id)
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(event_stream(sub)))
    }

    async fn cancel_migration(
        &self,
        req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        let id = req.get_ref().migration_id.clone();
        let audit = Audit::start(&req, "Node/CancelMigration").migration(&id);
        let latest = audit.finish(
            self.engine
                .cancel(&id)
                .await
                .map_err(crate::api::status::engine),
        )?;
        Ok(Response::new(proto::CancelMigrationResponse {
            latest: Some(convert::event_to_proto(&latest)),
        }))
    }

    async fn get_migration(
        &self,
        req: Request<proto::GetMigrationRequest>,
    ) -> Result<Response<proto::MigrationRecord>, Status> {
        let id = req.into_inner().migration_id;
        if let Some(group) = self
            .engine
            .get_group(&id)
            .map_err(crate::api::status::engine)?
        {
            return Ok(Response::new(convert::group_to_proto(&group)));
        }
        let record = self.engine.get(&id).map_err(crate::api::status::engine)?;
        Ok(Response::new(convert::record_to_proto(&record)))
    }

    async fn list_migrations(
        &self,
        req: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        let req = req.into_inner();
        crate::migration::validate::list_filter(&req.domain, &req.node_id)
            .map_err(crate::api::status::invalid)?;
        if !req.node_id.is_empty() && req.node_id != self.engine.node_id() {
            return Ok(Response::new(proto::ListMigrationsResponse::default()));
        }
        let filter = convert::filter_from_proto(&req);
        let mut migrations: Vec<proto::MigrationRecord> = self
            .engine
            .list(&filter)
            .iter()
            .map(convert::record_to_proto)
            .chain(
                self.engine
                    .list_groups(&filter)
                    .iter()
                    .map(convert::group_to_proto),
            )
            .collect();
        migrations.sort_by_key(|m| {
            std::cmp::Reverse(m.latest.as_ref().map_or(0, |e| e.started_at_unix_ms))
        });
        Ok(Response::new(proto::ListMigrationsResponse { migrations }))
    }

    async fn find_volume_users(
        &self,
        req: Request<proto::FindVolumeUsersRequest>,
    ) -> Result<Response<proto::FindVolumeUsersResponse>, Status> {
        let req = req.into_inner();
        let exclude = Some(req.exclude_domain.as_str()).filter(|d| !d.is_empty());
        let users = self
            .engine
            .volume_users(&req.source, exclude)
            .await
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(proto::FindVolumeUsersResponse { users }))
    }

    async fn list_pool_volumes(
        &self,
        req: Request<proto::ListPoolVolumesRequest>,
    ) -> Result<Response<proto::ListPoolVolumesResponse>, Status> {
        let volumes = self
            .engine
            .pool_volumes(&req.into_inner().pool)
            .await
            .map_err(crate::api::status::engine)?;
        Ok(Response::new(convert::pool_volumes_to_proto(&volumes)))
    }

    async fn set_bandwidth(
        &self,
        req: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        let audit = Audit::start(&req, "Node/SetBandwidth");
        let req = req.into_inner();
        let audit = audit
            .migration(&req.migration_id)
            .target(&[("bytes_per_sec", &req.bytes_per_sec.to_string())]);
        audit.finish(
            self.engine
                .set_bandwidth(&req.migration_id, req.bytes_per_sec)
                .await
                .map_err(crate::api::status::engine),
        )?;
        Ok(Response::new(proto::SetBandwidthResponse {}))
    }
}
