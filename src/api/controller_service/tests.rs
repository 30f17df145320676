//! Unit tests of the controller service against in-process fake nodes.

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
    async fn find_volume_users(
        &self,
        _: Request<proto::FindVolumeUsersRequest>,
    ) -> Result<Response<proto::FindVolumeUsersResponse>, Status> {
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
    let mut register = Request::new(proto::RegisterNodeRequest {
        node_id: id.into(),
        endpoint: format!("unix://{}", path.display()),
        info: None,
    });
    register
        .extensions_mut()
        .insert(crate::api::auth::Caller::local("unix:test"));
    svc.register_node(register).await.expect("register");
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
