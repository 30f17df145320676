//! End-to-end: ListPoolVolumes on a real dir pool, through a real node over
//! gRPC and once through `volmig volumes`. A running guest's overlay and its
//! template, a stopped defined domain's disk and a volume no one uses are each
//! reported with the users libvirt's definitions give them, to a gRPC client
//! and to the controller's `NodeAccess` over gRPC; ListDisks reads the
//! stopped domain from its persistent definition; an unknown pool, a stopped
//! pool and a malformed name are refused with their codes.

mod harness;

use std::time::Duration;

use harness::node::NodeProcess;
use harness::{DefinedDomain, DirPool, Guest, Pool};
use tonic::Code;
use volmig::api::client::Credentials;
use volmig::api::node_client::GrpcNodes;
use volmig::controller::nodes::NodeAccess;
use volmig::controller::registry::NodeEntry;
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

fn volume<'a>(reply: &'a proto::ListPoolVolumesResponse, name: &str) -> &'a proto::PoolVolume {
    reply
        .volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name} in {reply:?}"))
}

fn user(domain: &str, running: bool, backing: bool) -> proto::VolumeUse {
    proto::VolumeUse {
        domain: domain.into(),
        running,
        disk: "vda".into(),
        backing,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_volumes_name_running_stopped_backing_and_unattached_users() {
    let pool = DirPool::new("pv");
    let guest = Guest::builder("pv-run", &pool)
        .backing_file(10)
        .pause_ms(10)
        .start();
    guest.wait_writing(5, BOOT);
    let template = guest.template_volume().expect("template").to_string();

    let stopped_volume = pool.new_volume_name("pv-stopped");
    let stopped_path = pool.create_volume(&stopped_volume, 16 * MIB, "qcow2");
    let stopped = DefinedDomain::using_file("pv-off", &stopped_path, "qcow2");
    let spare = pool.new_volume_name("pv-spare");
    let spare_path = pool.create_volume(&spare, 16 * MIB, "raw");

    let node = NodeProcess::start("pv", &[]);
    let mut client = node.client().await;
    let reply = client
        .list_pool_volumes(proto::ListPoolVolumesRequest {
            pool: pool.name().into(),
        })
        .await
        .unwrap_or_else(|s| panic!("ListPoolVolumes: {s:?}"))
        .into_inner();
    assert_eq!(reply.volumes.len(), 4, "{reply:?}");

    let top = volume(&reply, guest.disk_volume());
    assert_eq!(top.source, pool.volume_path(guest.disk_volume()));
    assert_eq!(top.format(), proto::VolumeFormat::Qcow2);
    assert_eq!(top.users, [user(guest.name(), true, false)]);
    // The live definition lists the chain, so the template shows as backing.
    assert_eq!(
        volume(&reply, &template).users,
        [user(guest.name(), true, true)]
    );
    let off = volume(&reply, &stopped_volume);
    assert_eq!(off.source, stopped_path);
    assert_eq!(off.users, [user(stopped.name(), false, false)]);
    let unused = volume(&reply, &spare);
    assert_eq!(unused.source, spare_path);
    assert_eq!(unused.format(), proto::VolumeFormat::Raw);
    assert_eq!(unused.capacity_bytes, 16 * MIB);
    assert!(unused.users.is_empty(), "{unused:?}");

    // The controller's port over gRPC sees the same: what the drain calls.
    let nodes = GrpcNodes::new(Credentials::default(), &[], Duration::from_secs(30));
    let entry = NodeEntry {
        id: node.node_id().into(),
        endpoint: node.endpoint(),
        configured: false,
        facts: None,
        last_seen: None,
        last_heard: None,
        last_seen_ms: 0,
        last_error: None,
    };
    let seen = nodes
        .list_pool_volumes(&entry, pool.name())
        .await
        .unwrap_or_else(|e| panic!("NodeAccess::list_pool_volumes: {e:?}"));
    let off = seen
        .iter()
        .find(|v| v.name == stopped_volume)
        .expect("the stopped domain's volume");
    assert_eq!(off.users.len(), 1, "{off:?}");
    assert_eq!(off.users[0].domain, stopped.name());
    assert!(!off.users[0].running && !off.users[0].backing);
    assert_eq!(seen.len(), 4);

    // ListDisks of the stopped domain: its persistent definition, with the
    // pool and volume its disk lives in (what a drain moves it by).
    let disks = client
        .list_disks(proto::ListDisksRequest {
            domain: stopped.name().into(),
        })
        .await
        .unwrap_or_else(|s| panic!("ListDisks of a stopped domain: {s:?}"))
        .into_inner();
    assert!(!disks.running);
    assert_eq!(disks.disks.len(), 1, "{disks:?}");
    assert_eq!(disks.disks[0].target, "vda");
    assert_eq!(disks.disks[0].source, stopped_path);
    assert_eq!(disks.disks[0].pool, pool.name());
    assert_eq!(disks.disks[0].volume, stopped_volume);

    // The operator's command, once: the table and the JSON.
    let endpoint = node.endpoint();
    let (code, out, err) = harness::volmig(&["volumes", pool.name(), "--node", &endpoint], &[]);
    assert_eq!(code, 0, "volmig volumes: {err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{out}"))
            .to_string()
    };
    assert!(
        line(&stopped_volume).ends_with(&format!("{}:vda (defined)", stopped.name())),
        "{out}"
    );
    assert!(
        line(&template).ends_with(&format!("{}:vda (running, backing)", guest.name())),
        "{out}"
    );
    assert!(line(&spare).ends_with(" -"), "{out}");
    let (code, out, err) = harness::volmig(
        &["volumes", pool.name(), "--node", &endpoint, "--json"],
        &[],
    );
    assert_eq!(code, 0, "volmig volumes --json: {err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let listed = json["volumes"].as_array().expect("volumes");
    let entry = listed
        .iter()
        .find(|v| v["name"] == guest.disk_volume())
        .expect("the guest's volume");
    assert_eq!(entry["users"][0]["domain"], guest.name());
    assert_eq!(entry["users"][0]["running"], true);
    assert_eq!(entry["users"][0]["backing"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_stopped_and_malformed_pools_are_refused_with_their_codes() {
    let pool = DirPool::new("pv-stop");
    harness::virsh_ok(&["pool-destroy", pool.name()]);
    let node = NodeProcess::start("pv-codes", &[]);
    let client = node.client().await;
    let ask = |name: &str| {
        let mut c = client.clone();
        let req = proto::ListPoolVolumesRequest { pool: name.into() };
        async move { c.list_pool_volumes(req).await.expect_err("refused") }
    };
    let status = ask("volmig-no-such-pool").await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = ask(pool.name()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("virsh pool-start {}", pool.name())),
        "{status:?}"
    );
    let status = ask("bad\nname").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
