//! Unit tests of the controller service against in-process fake nodes.

use std::sync::Mutex;

use tonic::Code;

use super::*;
use crate::controller::store::file::FileStore;
use crate::proto::node_server::{Node, NodeServer};

/// A controller with its store in `state`.
async fn service(state: &std::path::Path, config: ControllerConfig) -> ControllerService {
    let store: Arc<dyn Store> = Arc::new(FileStore::open(state).expect("store"));
    ControllerService::start(config, store, Credentials::default(), Arc::new(()))
        .await
        .expect("controller")
}

/// A node that runs `domain` when it is set, with one local pool.
struct FakeNode {
    id: String,
    domain: Arc<Mutex<Option<String>>>,
    /// What MigrateVolume streams: the first event at once, the rest once
    /// `gate` is opened.
    script: Arc<Mutex<Vec<proto::MigrationEvent>>>,
    gate: Arc<tokio::sync::Notify>,
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
        let mut script = self.script.lock().expect("lock").clone().into_iter();
        let gate = self.gate.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            if let Some(first) = script.next() {
                let _ = tx.send(Ok(first)).await;
            }
            gate.notified().await;
            for event in script {
                let _ = tx.send(Ok(event)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
    async fn list_pool_volumes(
        &self,
        _: Request<proto::ListPoolVolumesRequest>,
    ) -> Result<Response<proto::ListPoolVolumesResponse>, Status> {
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
        script: Arc::default(),
        gate: Arc::default(),
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
    let svc = service(&dir.path().join("state"), ControllerConfig::default()).await;
    let on_a = fake_node(dir.path(), &svc, "a").await;
    let on_b = fake_node(dir.path(), &svc, "b").await;

    *on_a.lock().expect("lock") = Some("vm".into());
    let plan = svc
        .plan_migration(request(""))
        .await
        .expect("plan")
        .into_inner();
    assert_eq!(plan.node_id, "a");
    assert_eq!(svc.controller().domain_hint("vm").as_deref(), Some("a"));
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
    assert_eq!(svc.controller().domain_hint("vm").as_deref(), Some("b"));
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

fn event(id: &str, node: &str, phase: proto::Phase) -> proto::MigrationEvent {
    proto::MigrationEvent {
        migration_id: id.into(),
        node_id: node.into(),
        phase: phase as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn only_the_owning_nodes_events_are_recorded_once_each_however_many_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let svc = service(&state, ControllerConfig::default()).await;
    let path = dir.path().join("a.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let domain = Arc::new(Mutex::new(Some("vm".to_string())));
    let script = Arc::new(Mutex::new(vec![
        event("m1", "a", proto::Phase::Accepted),
        // Forged: another migration, and this one claimed by another node.
        event("m2", "a", proto::Phase::Completed),
        event("m1", "b", proto::Phase::Failed),
        event("m1", "a", proto::Phase::Copying),
        event("m1", "a", proto::Phase::Completed),
    ]));
    let gate = Arc::new(tokio::sync::Notify::new());
    let node = FakeNode {
        id: "a".into(),
        domain,
        script,
        gate: gate.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(node))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let mut register = Request::new(proto::RegisterNodeRequest {
        node_id: "a".into(),
        endpoint: format!("unix://{}", path.display()),
        info: None,
    });
    register
        .extensions_mut()
        .insert(crate::api::auth::Caller::local("unix:test"));
    svc.register_node(register).await.expect("register");

    let caller = svc
        .migrate_volume(request("dst"))
        .await
        .expect("migrate")
        .into_inner();
    let mut watchers = Vec::new();
    for _ in 0..4 {
        watchers.push(
            svc.watch_migration(Request::new(proto::WatchMigrationRequest {
                migration_id: "m1".into(),
            }))
            .await
            .expect("watch")
            .into_inner(),
        );
    }
    gate.notify_one();
    use tokio_stream::StreamExt;
    let phases = |events: Vec<Result<proto::MigrationEvent, Status>>| {
        events
            .into_iter()
            .map(|e| {
                let e = e.expect("event");
                assert_eq!((e.migration_id.as_str(), e.node_id.as_str()), ("m1", "a"));
                e.phase()
            })
            .collect::<Vec<_>>()
    };
    let seen = phases(caller.collect().await);
    assert_eq!(
        seen,
        [
            proto::Phase::Accepted,
            proto::Phase::Copying,
            proto::Phase::Completed
        ]
    );
    for w in watchers {
        let seen = phases(w.collect().await);
        assert_eq!(seen.last(), Some(&proto::Phase::Completed), "{seen:?}");
    }
    assert!(
        svc.controller().entry("m2").await.is_err(),
        "forged migration recorded"
    );
    let entry = svc.controller().entry("m1").await.expect("m1");
    assert_eq!(
        entry.latest.phase,
        Some(crate::migration::model::Phase::Completed)
    );
    // One write for the new record, one per owned event after it: not one
    // per watcher.
    let writes = std::fs::read_to_string(state.join("store.jsonl"))
        .expect("store")
        .lines()
        .filter(|l| l.contains("\"migrations/m1\""))
        .count();
    assert_eq!(writes, 3);
}

#[tokio::test]
async fn registration_is_refused_for_other_ids_and_bad_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig {
        max_nodes: 2,
        ..ControllerConfig::default()
    };
    let svc = service(&dir.path().join("state"), config).await;
    let node_caller = crate::api::auth::Caller {
        identity: "cert:n1".into(),
        grant: crate::api::auth::Grant::Role {
            role: crate::config::Role::Node,
            node_id: Some("n1".into()),
        },
        on_behalf_of: None,
    };
    let register = |caller: Option<&crate::api::auth::Caller>, id: &str, endpoint: &str| {
        let mut req = Request::new(proto::RegisterNodeRequest {
            node_id: id.into(),
            endpoint: endpoint.into(),
            info: None,
        });
        if let Some(c) = caller {
            req.extensions_mut().insert(c.clone());
        }
        svc.register_node(req)
    };
    let code = |r: Result<Response<proto::RegisterNodeResponse>, Status>| {
        r.err().map(|s| s.code()).unwrap_or(Code::Ok)
    };
    assert_eq!(
        code(register(Some(&node_caller), "n2", "http://10.0.0.2:7451").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(register(Some(&node_caller), "n1", "unix:///run/volmig/node.sock").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            register(
                Some(&node_caller),
                "n1",
                &format!("http://{}:1", "h".repeat(1 << 20))
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(register(None, "n1", "http://10.0.0.1:7451").await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(register(Some(&node_caller), "n1", "http://127.0.0.1:9").await),
        Code::Ok
    );
    let local = crate::api::auth::Caller::local("unix:uid=0");
    assert_eq!(
        code(register(Some(&local), "n2", "http://127.0.0.1:9").await),
        Code::Ok
    );
    assert_eq!(
        code(register(Some(&local), "n3", "http://127.0.0.1:9").await),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn with_tls_a_node_without_a_certificate_must_still_advertise_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig {
        tls_cert: Some("/etc/volmig/tls/tls.crt".into()),
        ..ControllerConfig::default()
    };
    let svc = service(&dir.path().join("state"), config).await;
    // A token caller: the request carries no client certificate.
    let register = |endpoint: &str| {
        let mut req = Request::new(proto::RegisterNodeRequest {
            node_id: "n1".into(),
            endpoint: endpoint.into(),
            info: None,
        });
        req.extensions_mut().insert(crate::api::auth::Caller {
            identity: "token:n1".into(),
            grant: crate::api::auth::Grant::Role {
                role: crate::config::Role::Node,
                node_id: Some("n1".into()),
            },
            on_behalf_of: None,
        });
        svc.register_node(req)
    };
    let err = register("http://127.0.0.1:9").await.expect_err("plaintext");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("https://"), "{}", err.message());
    assert!(svc.controller().list_nodes().await.is_empty());
    register("https://127.0.0.1:9").await.expect("https");
}

#[tokio::test]
async fn a_malformed_advertise_allow_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("store"));
    let config = ControllerConfig {
        advertise_allow: vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()],
        ..ControllerConfig::default()
    };
    let err = ControllerService::start(config, store, Credentials::default(), Arc::new(()))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "advertise_allow entry \"10.0.0.0/40\": the prefix length must be 0 to 32"
    );
}

#[tokio::test]
async fn a_controller_started_later_knows_the_nodes_registered_with_another_at_once() {
    // Two controllers sharing one store, as several on etcd do: the node
    // registered with the first only; the second must list it the moment it
    // starts, before any heartbeat reaches it or its background sync runs.
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("store"));
    let start = || {
        ControllerService::start(
            ControllerConfig::default(),
            store.clone(),
            Credentials::default(),
            Arc::new(()),
        )
    };
    let first = start().await.expect("first controller");
    let mut req = Request::new(proto::RegisterNodeRequest {
        node_id: "n1".into(),
        endpoint: "http://127.0.0.1:9".into(),
        info: None,
    });
    req.extensions_mut()
        .insert(crate::api::auth::Caller::local("unix:uid=0"));
    first.register_node(req).await.expect("registered");
    let second = start().await.expect("second controller");
    let health = second.controller().node_health();
    assert!(
        health.iter().any(|(id, up, _)| id == "n1" && *up),
        "{health:?}"
    );
}
