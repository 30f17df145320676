//! End-to-end: a controller and two node processes (two node ids on this host,
//! sharing its libvirtd), a real writing guest. Placement, relay, refusal of a
//! named pool, controller restart mid-migration, and an unreachable node.

mod harness;

use std::time::Duration;

use harness::checks::assert_on_destination;
use harness::controller::{assert_refused_by_rule, cli_events, wait_nodes_up, ControllerProcess};
use harness::node::{self, NodeProcess};
use harness::{writing_guest_with_data, DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// Config that tags this test's pools (other tests' pools share the libvirtd and
/// must never be chosen) and makes `full` unusable by its threshold.
fn config(tag: &str, good: &[&DirPool], full: &DirPool, extra: &str) -> String {
    let mut cfg = String::from("heartbeat_interval_seconds = 1\ndown_after_seconds = 3\n");
    cfg.push_str(extra);
    for p in good {
        cfg.push_str(&format!(
            "[[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
            p.name()
        ));
    }
    cfg.push_str(&format!(
        "[[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\nused_threshold = 0.0001\n",
        full.name()
    ));
    cfg
}

fn register(ctl: &ControllerProcess) -> Vec<String> {
    vec!["--controller".to_string(), ctl.endpoint()]
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_places_by_the_plan_relays_and_refuses_a_named_pool_with_the_rule() {
    let src = DirPool::new("ct-src");
    let good = DirPool::new("ct-good");
    let full = DirPool::new("ct-full");
    let guest = Guest::start("ct-guest", &src, "qcow2", 64 * MIB);
    let tag = harness::unique_name("tag");
    let ctl = ControllerProcess::start("ct-ctl", &config(&tag, &[&good], &full, ""));
    let args = register(&ctl);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n1 = NodeProcess::start("ct-n1", &args);
    let n2 = NodeProcess::start("ct-n2", &args);
    wait_nodes_up(&ctl, &[n1.node_id(), n2.node_id()]).await;
    guest.wait_writing(20, BOOT);
    let mut client = ctl.client().await;

    let mut req = node::request(guest.name(), "vda", "");
    req.required_tags = vec![tag.clone()];
    let plan = client
        .plan_migration(req.clone())
        .await
        .expect("plan")
        .into_inner();
    assert_eq!(plan.chosen_pool, good.name(), "{plan:#?}");
    assert_eq!(plan.source_pool, src.name());
    let reason_of = |name: &str| {
        plan.candidates
            .iter()
            .find(|c| c.pool == name)
            .map(|c| (c.accepted, c.rejected_by.clone(), c.reason.clone()))
            .unwrap_or_else(|| panic!("{name} not considered: {plan:#?}"))
    };
    assert_eq!(reason_of(full.name()).1, "used_threshold");
    assert_eq!(reason_of(src.name()).1, "source_pool");
    assert!(reason_of(good.name()).0);
    // Other tests' pools lack the tag.
    assert!(plan
        .candidates
        .iter()
        .filter(|c| c.accepted)
        .all(|c| c.pool == good.name()));

    // The operator's view of the same plan.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args([
            "plan",
            "--controller",
            &ctl.endpoint(),
            "--domain",
            guest.name(),
            "--disk",
            "vda",
            "--tag",
            &tag,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("volmig plan");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains(good.name()) && table.contains("used_threshold"),
        "{table}"
    );
    eprintln!("volmig plan:\n{table}");

    // A named pool that a rule rejects is refused with that rule's reason.
    let mut named = req.clone();
    named.destination_pool = full.name().to_string();
    assert_refused_by_rule(&mut client, named, "used_threshold").await;

    // No pool named: `volmig migrate --controller` gets the plan's pool and the
    // node's events, relayed with one migration id.
    let events = cli_events(&[
        "migrate",
        "--controller",
        &ctl.endpoint(),
        "--domain",
        guest.name(),
        "--disk",
        "vda",
        "--tag",
        &tag,
    ]);
    let last = events.last().expect("events");
    assert_eq!(last["phase"], "PHASE_COMPLETED");
    assert!(events
        .iter()
        .all(|e| e["migration_id"] == events[0]["migration_id"]));
    let migration_id = events[0]["migration_id"].as_str().expect("id").to_string();
    let dest_pool = last["result"]["destination_pool"].as_str().expect("pool");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("source");
    assert_eq!(dest_pool, good.name());
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);

    let listed = client
        .list_migrations(proto::ListMigrationsRequest {
            domain: guest.name().to_string(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .migrations;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].migration_id, migration_id);

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_restart_mid_migration_still_completes_with_the_data_and_keeps_history() {
    let src = DirPool::new("cr-src");
    let good = DirPool::new("cr-good");
    let full = DirPool::new("cr-full");
    let guest = writing_guest_with_data("cr-guest", &src, "qcow2");

    let tag = harness::unique_name("tag");
    let mut ctl = ControllerProcess::start("cr-ctl", &config(&tag, &[&good], &full, ""));
    let args = register(&ctl);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n1 = NodeProcess::start("cr-n1", &args);
    wait_nodes_up(&ctl, &[n1.node_id()]).await;

    let id = {
        let mut client = ctl.client().await;
        let mut req = node::limited(guest.name(), "vda", "", 8 * MIB);
        req.required_tags = vec![tag.clone()];
        let mut stream = client
            .migrate_volume(req)
            .await
            .expect("migrate")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("event");
        first.migration_id
    };
    ctl.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl.restart();
    wait_nodes_up(&ctl, &[n1.node_id()]).await;
    let mut client = ctl.client().await;
    let events = node::collect(
        client
            .watch_migration(proto::WatchMigrationRequest {
                migration_id: id.clone(),
            })
            .await
            .expect("watch after restart")
            .into_inner(),
    )
    .await
    .expect("stream");
    node::assert_terminal(&events, proto::Phase::Completed);
    let record = client
        .get_migration(proto::GetMigrationRequest {
            migration_id: id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(record.node_id, n1.node_id());
    assert_eq!(
        record.latest.as_ref().map(|e| e.phase),
        Some(proto::Phase::Completed as i32)
    );
    let result = node::result_of(&events);
    assert_eq!(result.destination_pool, good.name());
    assert_eq!(
        record
            .latest
            .and_then(|e| e.result)
            .map(|r| r.destination_source),
        Some(result.destination_source.clone()),
        "history and the watched stream disagree"
    );
    assert_on_destination(&guest, "vda", &result);
    guest.verify_data_after_cold_restart();

    // The node that ran it goes away: routed calls say which node is unreachable.
    let node_id = n1.node_id().to_string();
    drop(n1);
    let err = client
        .watch_migration(proto::WatchMigrationRequest { migration_id: id })
        .await
        .expect_err("node gone");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&node_id), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_node_is_reported_and_its_absence_named() {
    let src = DirPool::new("cd-src");
    let good = DirPool::new("cd-good");
    let full = DirPool::new("cd-full");
    let tag = harness::unique_name("tag");
    let ghost = harness::unique_name("ghost");
    let extra =
        format!("[[nodes]]\nid = \"{ghost}\"\nendpoint = \"unix:///nonexistent/{ghost}.sock\"\n");
    let ctl = ControllerProcess::start("cd-ctl", &config(&tag, &[&good], &full, &extra));
    let mut client = ctl.client().await;
    let nodes = client
        .list_nodes(proto::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    let g = nodes
        .iter()
        .find(|n| n.node_id == ghost)
        .expect("configured node");
    assert_eq!(g.state, proto::NodeState::Down as i32);
    assert!(g.configured);
    let err = client
        .plan_migration(node::request("volmig-no-such-domain", "vda", ""))
        .await
        .expect_err("nobody runs it");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&ghost), "{}", err.message());
    drop(src);
}
