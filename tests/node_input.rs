//! End-to-end: the node's answers to bad input and its service surface (info,
//! pools, disks, health, reflection, identity), against real libvirt.

mod harness;

use std::time::Duration;

use harness::node::{self, NodeProcess};
use harness::{DirPool, Guest, Pool};
use tonic::Code;
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_contract_status_codes() {
    let src = DirPool::new("i-src");
    let dst = DirPool::new("i-dst");
    let guest = Guest::builder("i-guest", &src)
        .format("qcow2")
        .cdrom()
        .readonly_disk()
        .start();
    guest.wait_writing(5, BOOT);
    let node = NodeProcess::start("i-node", &[]);
    let mut client = node.client().await;
    let long = "x".repeat(4096);
    let good = node::request(guest.name(), "vda", dst.name());
    type Tweak = Box<dyn Fn(&mut proto::MigrateVolumeRequest)>;
    let cases: Vec<(&str, Tweak, Code)> = vec![
        (
            "unknown domain",
            Box::new(|r| r.domain = "volmig-no-such-domain".into()),
            Code::NotFound,
        ),
        (
            "domain with quotes and markup",
            Box::new(|r| r.domain = "a'b\"<c>&d".into()),
            Code::NotFound,
        ),
        (
            "domain with a slash",
            Box::new(|r| r.domain = "../etc".into()),
            Code::InvalidArgument,
        ),
        (
            "empty domain",
            Box::new(|r| r.domain = String::new()),
            Code::InvalidArgument,
        ),
        (
            "4 KiB domain",
            Box::new(move |r| r.domain = "x".repeat(4096)),
            Code::InvalidArgument,
        ),
        (
            "unknown disk",
            Box::new(|r| r.disk = "vdz".into()),
            Code::NotFound,
        ),
        (
            "disk path with ..",
            Box::new(|r| r.disk = "/var/../etc/shadow".into()),
            Code::InvalidArgument,
        ),
        (
            "empty disk",
            Box::new(|r| r.disk = String::new()),
            Code::InvalidArgument,
        ),
        (
            "unknown pool",
            Box::new(|r| r.destination_pool = "volmig-no-such-pool".into()),
            Code::NotFound,
        ),
        (
            "pool with a slash",
            Box::new(|r| r.destination_pool = "a/b".into()),
            Code::InvalidArgument,
        ),
        (
            "empty pool",
            Box::new(|r| r.destination_pool = String::new()),
            Code::InvalidArgument,
        ),
        (
            "volume with XML",
            Box::new(|r| r.destination_volume = "x'/><evil a='".into()),
            Code::InvalidArgument,
        ),
        (
            "volume with ..",
            Box::new(|r| r.destination_volume = "../x".into()),
            Code::InvalidArgument,
        ),
        (
            "volume with &",
            Box::new(|r| r.destination_volume = "a&b".into()),
            Code::InvalidArgument,
        ),
        (
            "4 KiB volume",
            Box::new(move |r| r.destination_volume = long.clone()),
            Code::InvalidArgument,
        ),
        (
            "bad request id",
            Box::new(|r| r.request_id = "a b".into()),
            Code::InvalidArgument,
        ),
        (
            "unknown enum",
            Box::new(|r| r.destination_format = 42),
            Code::InvalidArgument,
        ),
        (
            "cdrom",
            Box::new(|r| r.disk = "hdc".into()),
            Code::FailedPrecondition,
        ),
        (
            "read-only disk",
            Box::new(|r| r.disk = "vdc".into()),
            Code::FailedPrecondition,
        ),
    ];
    for (what, tweak, want) in cases {
        let mut req = good.clone();
        tweak(&mut req);
        let status = node::migrate(&mut client, req).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}: empty message");
        assert!(status.message().len() < 1000, "{what}: message too long");
    }
    let mut same = good.clone();
    same.destination_pool = src.name().to_string();
    let status = node::migrate(&mut client, same)
        .await
        .expect_err("same pool");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("already in pool"),
        "{}",
        status.message()
    );

    // A well-formed unknown id is NOT_FOUND; a malformed one is refused before
    // it is looked up or echoed.
    for (id, want) in [
        ("mig-unknown", Code::NotFound),
        ("../../x", Code::InvalidArgument),
    ] {
        let s = client
            .cancel_migration(proto::CancelMigrationRequest {
                migration_id: id.into(),
            })
            .await
            .expect_err("cancel unknown");
        assert_eq!(s.code(), want, "{id}");
        let s = client
            .get_migration(proto::GetMigrationRequest {
                migration_id: id.into(),
            })
            .await
            .expect_err("get unknown");
        assert_eq!(s.code(), want, "{id}");
        let s = client
            .watch_migration(proto::WatchMigrationRequest {
                migration_id: id.into(),
            })
            .await
            .expect_err("watch unknown");
        assert_eq!(s.code(), want, "{id}");
    }

    guest.destroy();
    let status = node::migrate(&mut client, good)
        .await
        .expect_err("stopped guest");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("not running"),
        "{}",
        status.message()
    );

    let left = harness::pools::volume_names(dst.name()).expect("vol-list");
    assert!(left.is_empty(), "refused requests left volumes: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn node_answers_info_pools_disks_health_reflection_and_identity() {
    let src = DirPool::new("s-src");
    let guest = Guest::builder("s-guest", &src)
        .format("qcow2")
        .data_disk(8 * MIB, "raw")
        .start();
    let node = NodeProcess::start("s-node", &[]);
    let mut client = node.client().await;

    let info = client
        .get_info(proto::GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, node.node_id());
    assert!(info.libvirt_version.starts_with("9."), "{info:?}");

    let pools = client
        .list_pools(proto::ListPoolsRequest {})
        .await
        .expect("pools")
        .into_inner();
    let mine = pools
        .pools
        .iter()
        .find(|p| p.name == src.name())
        .expect("our pool listed");
    assert_eq!(mine.r#type, "dir");
    assert_eq!(mine.state, proto::PoolState::Running as i32);
    assert!(mine.capacity_bytes > 0);

    let disks = client
        .list_disks(proto::ListDisksRequest {
            domain: guest.name().into(),
        })
        .await
        .expect("disks")
        .into_inner();
    assert!(disks.running);
    let vda = disks.disks.iter().find(|d| d.target == "vda").expect("vda");
    assert_eq!(vda.pool, src.name());
    assert_eq!(vda.format, proto::VolumeFormat::Qcow2 as i32);
    assert_eq!(vda.capacity_bytes, 64 * MIB);
    assert!(disks.disks.iter().any(|d| d.target == "vdb"));
    let missing = client
        .list_disks(proto::ListDisksRequest {
            domain: "volmig-no-such-domain".into(),
        })
        .await
        .expect_err("unknown domain");
    assert_eq!(missing.code(), Code::NotFound);

    let channel = volmig::api::client::connect(&node.endpoint())
        .await
        .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "volmig.v1.Node".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut identity = proto::identity_client::IdentityClient::new(channel.clone());
    let probe = identity
        .probe(proto::ProbeRequest {})
        .await
        .expect("probe")
        .into_inner();
    assert!(probe.ready, "{probe:?}");
    let plugin = identity
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .expect("plugin info")
        .into_inner();
    assert_eq!(plugin.name, "volmig");

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "volmig.v1.Node",
        "volmig.v1.Identity",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qcow2_internal_snapshots_are_refused_before_anything_changes() {
    let src = DirPool::new("i-snap-src");
    let dst = DirPool::new("i-snap-dst");
    let guest = Guest::start("i-snap", &src, "qcow2", 64 * MIB);
    guest.wait_writing(5, BOOT);
    guest.destroy();
    let path = src.volume_path(guest.disk_volume());
    harness::run_ok("qemu-img", &["snapshot", "-c", "before-upgrade", &path]);
    guest.boot();
    guest.wait_writing(5, BOOT);
    let node = NodeProcess::start("i-snap", &[]);
    let mut client = node.client().await;
    let status = node::migrate(&mut client, node::request(guest.name(), "vda", dst.name()))
        .await
        .expect_err("snapshots would be lost");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("internal snapshot"),
        "{}",
        status.message()
    );
    assert_eq!(guest.live_disk_source("vda").path, path);
    assert_eq!(
        harness::pools::volume_names(dst.name()).expect("vol-list"),
        Vec::<String>::new(),
        "no destination volume may be created"
    );
    assert_eq!(node.journal_records(), 0, "no migration may be recorded");
}
