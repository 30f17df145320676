//! The fleet's nodes: canned answers over gRPC on unix sockets, cheap enough that a
//! thousand of them leave the controller as the only thing measured.

use std::path::PathBuf;
use std::time::Duration;

use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use volmig::proto;
use volmig::proto::node_server::{Node, NodeServer};

pub const POOLS_PER_NODE: usize = 10;
const EVENT_INTERVAL: Duration = Duration::from_millis(100);
const GIB: u64 = 1 << 30;

/// A node with canned answers: its pools, its one running domain, and
/// migrations that emit `events` events at 10/s, the last one COMPLETED.
pub struct FakeNode {
    pub id: String,
    pub domain: String,
    pub events: u64,
}

pub fn domain_of(i: usize) -> String {
    format!("vm-{i:04}")
}

impl FakeNode {
    fn pools(&self) -> Vec<proto::Pool> {
        (0..POOLS_PER_NODE)
            .map(|j| proto::Pool {
                name: format!("pool-{j}"),
                uuid: format!("{}-{j}", self.id),
                r#type: "dir".into(),
                state: proto::PoolState::Running as i32,
                capacity_bytes: 1024 * GIB,
                allocation_bytes: (100 + 10 * j as u64) * GIB,
                available_bytes: (924 - 10 * j as u64) * GIB,
                disk_type: proto::DiskType::File as i32,
                target_path: format!("/srv/pool-{j}"),
                storage_id: format!("local:{}:/srv/pool-{j}", self.id),
                shared: false,
                provisioned_bytes: (200 + 10 * j as u64) * GIB,
            })
            .collect()
    }
}

type Events = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::MigrationEvent, Status>> + Send>,
>;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn get_info(
        &self,
        _: Request<proto::GetInfoRequest>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        Ok(Response::new(proto::NodeInfo {
            node_id: self.id.clone(),
            hostname: self.id.clone(),
            ..Default::default()
        }))
    }

    async fn list_pools(
        &self,
        _: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        Ok(Response::new(proto::ListPoolsResponse {
            pools: self.pools(),
        }))
    }

    async fn list_disks(
        &self,
        req: Request<proto::ListDisksRequest>,
    ) -> Result<Response<proto::ListDisksResponse>, Status> {
        if req.get_ref().domain != self.domain {
            return Err(Status::not_found("no such domain"));
        }
        Ok(Response::new(proto::ListDisksResponse {
            domain_name: self.domain.clone(),
            domain_uuid: String::new(),
            running: true,
            disks: vec![proto::Disk {
                target: "vda".into(),
                r#type: proto::DiskType::File as i32,
                device: "disk".into(),
                format: proto::VolumeFormat::Qcow2 as i32,
                source: format!("/srv/pool-0/{}.qcow2", self.domain),
                pool: "pool-0".into(),
                volume: format!("{}.qcow2", self.domain),
                capacity_bytes: 20 * GIB,
                allocation_bytes: 8 * GIB,
                ..Default::default()
            }],
        }))
    }

    type MigrateVolumeStream = Events;

    async fn migrate_volume(
        &self,
        req: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Events>, Status> {
        let req = req.into_inner();
        let id = format!("{}-{}", self.id, uuid::Uuid::new_v4());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (events, node_id) = (self.events, self.id.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVENT_INTERVAL);
            for seq in 1..=events {
                tick.tick().await;
                let phase = match seq {
                    1 => proto::Phase::Accepted,
                    s if s == events => proto::Phase::Completed,
                    _ => proto::Phase::Copying,
                };
                let event = proto::MigrationEvent {
                    migration_id: id.clone(),
                    phase: phase as i32,
                    // The sequence number, to check order at the far end.
                    progress: Some(proto::MigrationProgress {
                        bytes_done: seq,
                        bytes_total: events,
                        ..Default::default()
                    }),
                    timestamp_unix_ms: 0,
                    node_id: node_id.clone(),
                    domain: req.domain.clone(),
                    disk: req.disk.clone(),
                    ..Default::default()
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchMigrationStream = Events;

    async fn watch_migration(
        &self,
        _: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn cancel_migration(
        &self,
        _: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn get_migration(
        &self,
        _: Request<proto::GetMigrationRequest>,
    ) -> Result<Response<proto::MigrationRecord>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn list_migrations(
        &self,
        _: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn set_bandwidth(
        &self,
        _: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }
    async fn find_volume_users(
        &self,
        _: Request<proto::FindVolumeUsersRequest>,
    ) -> Result<Response<proto::FindVolumeUsersResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }
    async fn list_pool_volumes(
        &self,
        _: Request<proto::ListPoolVolumesRequest>,
    ) -> Result<Response<proto::ListPoolVolumesResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }
}

pub async fn serve_fake_node(node: FakeNode, path: PathBuf) -> std::io::Result<()> {
    let listener = tokio::net::UnixListener::bind(&path)?;
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(NodeServer::new(node))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
    Ok(())
}
