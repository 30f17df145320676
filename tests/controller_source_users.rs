//! End-to-end: a migration through the controller with SOURCE_POLICY_DELETE
//! asks the other nodes that reach the source's pool what uses the source, and
//! keeps it when one does. Two node processes share this host's libvirtd, so
//! both see the pools; the reason must carry the other node's id, which only
//! the controller's question produces.

mod harness;

use std::time::Duration;

use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::defined::DefinedDomain;
use harness::node::{self, NodeProcess};
use harness::{DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn delete_through_the_controller_keeps_a_source_another_node_uses() {
    let src = DirPool::new("cu-src");
    let dst = DirPool::new("cu-dst");
    let guest = Guest::start("cu-guest", &src, "qcow2", 64 * MIB);
    let source_path = src.volume_path(guest.disk_volume());
    let holder = DefinedDomain::using_file("cu-holder", &source_path, "qcow2");
    let tag = harness::unique_name("tag");
    let ctl = ControllerProcess::start(
        "cu-ctl",
        &format!(
            "heartbeat_interval_seconds = 1\ndown_after_seconds = 3\n\
             [[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
            dst.name()
        ),
    );
    let args = ["--controller".to_string(), ctl.endpoint()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n1 = NodeProcess::start("cu-n1", &args);
    let n2 = NodeProcess::start("cu-n2", &args);
    let ids = [n1.node_id().to_string(), n2.node_id().to_string()];
    wait_nodes_up(&ctl, &[n1.node_id(), n2.node_id()]).await;
    let mut client = ctl.client().await;
    guest.wait_writing(20, BOOT);

    let mut req = node::request(guest.name(), "vda", "");
    req.required_tags = vec![tag];
    req.options
        .get_or_insert_with(Default::default)
        .source_policy = proto::SourcePolicy::Delete as i32;
    let events = node::collect(
        client
            .migrate_volume(req)
            .await
            .expect("start")
            .into_inner(),
    )
    .await
    .expect("stream");
    node::assert_terminal(&events, proto::Phase::Completed);
    let last = events.last().expect("terminal");
    let result = last.result.clone().expect("result");
    assert!(!result.source_deleted, "{result:?}");
    let other = ids
        .iter()
        .find(|id| **id != last.node_id)
        .expect("the other node");
    assert!(
        result
            .source_kept_reason
            .contains(&format!("node {other}: domain '{}'", holder.name())),
        "{}",
        result.source_kept_reason
    );
    assert!(std::path::Path::new(&source_path).exists());
    assert_eq!(
        guest.live_disk_source("vda").path,
        result.destination_source
    );
    assert_eq!(
        guest.persistent_disk_source("vda").path,
        result.destination_source
    );
    guest.cold_restart();
    guest.wait_writing(guest.last_ack() + 5, BOOT);
    guest.verify_records("vda");
}
