//! The Controller gRPC service. Placement, routing and history are not built
//! yet: every RPC answers UNIMPLEMENTED saying so, never a fake success.

use tonic::{Request, Response, Status};

use crate::api::node_service::EventStream;
use crate::proto;
use crate::proto::controller_server::Controller;

/// The controller service (not implemented yet).
#[derive(Debug, Default)]
pub struct ControllerService;

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "Controller.{rpc} is not implemented yet; call the node's Node.{rpc} directly (volmig --node ...)"
    ))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register_node(
        &self,
        _req: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        Err(unimplemented("RegisterNode"))
    }

    async fn list_nodes(
        &self,
        _req: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        Err(unimplemented("ListNodes"))
    }

    async fn list_pools(
        &self,
        _req: Request<proto::ListClusterPoolsRequest>,
    ) -> Result<Response<proto::ListClusterPoolsResponse>, Status> {
        Err(unimplemented("ListPools"))
    }

    async fn plan_migration(
        &self,
        _req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<proto::PlanMigrationResponse>, Status> {
        Err(unimplemented("PlanMigration"))
    }

    type MigrateVolumeStream = EventStream;

    async fn migrate_volume(
        &self,
        _req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Self::MigrateVolumeStream>, Status> {
        Err(unimplemented("MigrateVolume"))
    }

    type WatchMigrationStream = EventStream;

    async fn watch_migration(
        &self,
        _req: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Self::WatchMigrationStream>, Status> {
        Err(unimplemented("WatchMigration"))
    }

    async fn cancel_migration(
        &self,
        _req: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        Err(unimplemented("CancelMigration"))
    }

    async fn get_migration(
        &self,
        _req: Request<proto::GetMigrationRequest>,
    ) -> Result<Response<proto::MigrationRecord>, Status> {
        Err(unimplemented("GetMigration"))
    }

    async fn list_migrations(
        &self,
        _req: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        Err(unimplemented("ListMigrations"))
    }

    async fn set_bandwidth(
        &self,
        _req: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        Err(unimplemented("SetBandwidth"))
    }
}
