//! End-to-end: pool maintenance through the real binary — a controller, a
//! node and a writing guest on this host's libvirtd. A pool put in
//! maintenance with `volmig pool maintenance … on` is explained by
//! `volmig plan`, refused by name (single and multi-disk requests), shown by
//! `volmig pools`, still in maintenance after the controller restarts, and
//! chosen again once it is off.

mod harness;

use std::time::Duration;

use harness::controller::{
    assert_refused_by_rule, cli_events, tagged_pools_config, wait_nodes_up, ControllerProcess,
};
use harness::node::{self, NodeProcess};
use harness::{volmig, DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// `volmig ARGS --controller URL`, which must succeed; its stdout.
fn cli_ok(ctl: &ControllerProcess, args: &[&str]) -> String {
    let endpoint = ctl.endpoint();
    let mut full = args.to_vec();
    full.extend(["--controller", &endpoint]);
    let (code, stdout, stderr) = volmig(&full, &[]);
    assert_eq!(code, 0, "volmig {full:?}:\n{stdout}\n{stderr}");
    stdout
}

/// The maintenance flag of `pool` in `volmig pools --json`.
fn listed_flag(ctl: &ControllerProcess, pool: &str) -> serde_json::Value {
    let out = cli_ok(ctl, &["pools", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("pools --json");
    listed["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"]["name"] == pool)
        .unwrap_or_else(|| panic!("{pool} not listed: {out}"))["maintenance"]
        .clone()
}

/// The controller's plan for `req`.
async fn plan_of(
    ctl: &ControllerProcess,
    req: &proto::MigrateVolumeRequest,
) -> proto::PlanMigrationResponse {
    ctl.client()
        .await
        .plan_migration(req.clone())
        .await
        .expect("plan")
        .into_inner()
}

/// The rule and reason with which `plan` judged `pool`.
fn verdict(plan: &proto::PlanMigrationResponse, pool: &str) -> (String, String) {
    plan.candidates
        .iter()
        .find(|c| c.pool == pool)
        .map(|c| (c.rejected_by.clone(), c.reason.clone()))
        .unwrap_or_else(|| panic!("{pool} not judged: {plan:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_in_maintenance_is_never_chosen_refused_by_name_and_kept_across_a_restart() {
    let src = DirPool::new("mt-src");
    let roomy = DirPool::new("mt-roomy");
    let other = DirPool::new("mt-other");
    let guest = Guest::start("mt-guest", &src, "qcow2", 64 * MIB);
    let tag = harness::unique_name("tag");
    let config = tagged_pools_config(&tag, &[&roomy, &other], "");
    let mut ctl = ControllerProcess::start("mt-ctl", &config);
    let endpoint = ctl.endpoint();
    let n1 = NodeProcess::start("mt-n1", &["--controller", &endpoint]);
    wait_nodes_up(&ctl, &[n1.node_id()]).await;
    guest.wait_writing(10, BOOT);
    let mut req = node::request(guest.name(), "vda", "");
    req.required_tags = vec![tag.clone()];

    let said = cli_ok(
        &ctl,
        &[
            "pool",
            "maintenance",
            roomy.name(),
            "on",
            "--reason",
            "replacing disks",
        ],
    );
    assert!(said.contains("is in maintenance"), "{said}");

    // Placement passes over it and says why, with who, when and how to undo it.
    let mut client = ctl.client().await;
    let plan = plan_of(&ctl, &req).await;
    assert_eq!(plan.chosen_pool, other.name(), "{plan:#?}");
    let (rule, reason) = verdict(&plan, roomy.name());
    assert_eq!(rule, "maintenance", "{reason}");
    for fragment in [
        format!("pool '{}' is in maintenance since ", roomy.name()),
        ": replacing disks)".to_string(),
        format!("volmig pool maintenance {} off", roomy.name()),
    ] {
        assert!(reason.contains(&fragment), "{reason:?} lacks {fragment:?}");
    }
    let table = cli_ok(
        &ctl,
        &[
            "plan",
            "--domain",
            guest.name(),
            "--disk",
            "vda",
            "--tag",
            &tag,
        ],
    );
    assert!(
        table.contains("maintenance") && table.contains(roomy.name()),
        "{table}"
    );

    // Naming it is refused as a precondition, naming the flag, alone or as
    // one disk of a multi-disk request.
    let mut named = req.clone();
    named.destination_pool = roomy.name().to_string();
    let mut group = proto::MigrateVolumeRequest {
        disk: String::new(),
        disks: vec![proto::DiskDestination {
            disk: "vda".into(),
            destination_pool: roomy.name().to_string(),
            ..Default::default()
        }],
        ..req.clone()
    };
    group.destination_pool.clear();
    for refused in [named, group] {
        assert_refused_by_rule(&mut client, refused, "maintenance: pool").await;
    }

    let flag = listed_flag(&ctl, roomy.name());
    assert_eq!(flag["on"], true, "{flag}");
    assert_eq!(flag["reason"], "replacing disks", "{flag}");
    assert_eq!(listed_flag(&ctl, other.name()), serde_json::Value::Null);
    let table = cli_ok(&ctl, &["pools"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(roomy.name()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("on since "), "{table}");

    // The flag is in the store, not in the process.
    ctl.kill9();
    ctl.restart();
    wait_nodes_up(&ctl, &[n1.node_id()]).await;
    let plan = plan_of(&ctl, &req).await;
    assert_eq!(verdict(&plan, roomy.name()).0, "maintenance", "{plan:#?}");
    assert_eq!(listed_flag(&ctl, roomy.name())["on"], true);

    // Off again: the pool takes a migration that names it.
    cli_ok(&ctl, &["pool", "maintenance", roomy.name(), "off"]);
    assert_eq!(listed_flag(&ctl, roomy.name())["on"], false);
    let events = cli_events(&[
        "migrate",
        "--controller",
        &endpoint,
        "--domain",
        guest.name(),
        "--disk",
        "vda",
        "--to-pool",
        roomy.name(),
    ]);
    let last = events.last().expect("events");
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{last:#}");
    assert_eq!(last["result"]["destination_pool"], roomy.name(), "{last:#}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination_source");
    assert_eq!(guest.live_disk_source("vda").path, dest);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_pool_is_not_found_and_a_reason_must_be_one_line() {
    let ctl = ControllerProcess::start("mv-ctl", "heartbeat_interval_seconds = 1\n");
    let mut client = ctl.client().await;
    let err = client
        .set_pool_maintenance(proto::SetPoolMaintenanceRequest {
            pool: harness::unique_name("nowhere"),
            maintenance: true,
            reason: String::new(),
        })
        .await
        .expect_err("no such pool");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = client
        .set_pool_maintenance(proto::SetPoolMaintenanceRequest {
            pool: "p".into(),
            maintenance: true,
            reason: "two\nlines".into(),
        })
        .await
        .expect_err("a reason with a newline");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}
