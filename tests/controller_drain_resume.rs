//! End-to-end: a drain outlives its controller. Two writing guests holding
//! data are drained within a small bandwidth budget; the controller is
//! `kill -9`ed while a guest is being copied and started again on the same
//! store. The drain resumes, re-attaches to the running migration (same
//! migration id, no second attempt), completes, and each guest was migrated
//! exactly once according to the node's own journal; both definitions name
//! the destination and no record is lost after a cold restart.

mod harness;

use std::time::Duration;

use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::drain::{assert_moved, cli, drain_both_at_once, item_of, json_lines};
use harness::guest::writing_guest_with_data;
use harness::node::NodeProcess;
use harness::{volmig, DirPool, Pool};

/// `drain status ID --json`.
fn status(ctl: &ControllerProcess, id: &str) -> serde_json::Value {
    let (code, out) = cli(ctl, &["drain", "status", id, "--json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The request ids the node's journal holds for `domain` (a multi-disk request
/// is one record with its request id, and one per disk without).
fn requests_on_node(node: &NodeProcess, domain: &str) -> std::collections::BTreeSet<String> {
    node_migrations(node, domain)
        .iter()
        .filter_map(|m| m["request"]["request_id"].as_str().map(str::to_string))
        .filter(|r| !r.is_empty())
        .collect()
}

/// The node's own migrations of `domain`, from its journal.
fn node_migrations(node: &NodeProcess, domain: &str) -> Vec<serde_json::Value> {
    let endpoint = node.endpoint();
    let (code, out, err) = volmig(
        &["list", "--node", &endpoint, "--domain", domain, "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("list json");
    listed["migrations"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_killed_mid_drain_resumes_it_without_migrating_a_guest_twice() {
    let src = DirPool::new("drr-src");
    let dst = DirPool::new("drr-dst");
    let guests = [
        writing_guest_with_data("drr-a", &src, "qcow2"),
        writing_guest_with_data("drr-b", &src, "qcow2"),
    ];
    let mut ctl = ControllerProcess::start("drr-ctl", "");
    let node = NodeProcess::start("drr-n1", &["--controller", &ctl.endpoint()]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;

    // 64 MiB of data per guest at 8 MiB/s shared: the copies take seconds.
    let (code, out) = cli(
        &ctl,
        &drain_both_at_once(src.name(), dst.name(), "8MiB", &["--detach"]),
    );
    assert_eq!(code, 0, "{out}");
    let started: serde_json::Value = serde_json::from_str(&out).expect("drain json");
    let id = started["drain_id"].as_str().expect("drain_id").to_string();

    // Wait until a guest is being copied (its migration id recorded), then kill.
    let mut running = None;
    harness::wait_until(Duration::from_secs(60), "an item running", || {
        let now = status(&ctl, &id);
        running = now["plan"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| {
                i["state"] == "DRAIN_ITEM_STATE_RUNNING"
                    && !i["migration_id"].as_str().unwrap_or_default().is_empty()
            })
            .cloned();
        running.is_some()
    });
    let running = running.expect("a running item");
    let domain = running["domain"].as_str().expect("domain").to_string();
    let migration_id = running["migration_id"].as_str().expect("id").to_string();
    harness::wait_until(Duration::from_secs(60), "the node copying", || {
        node_migrations(&node, &domain)
            .first()
            .is_some_and(|m| m["latest"]["phase"] == "PHASE_COPYING")
    });
    ctl.kill9();
    // The fault landed mid-copy: the node still copies that guest.
    let on_node = node_migrations(&node, &domain);
    let drain_record = on_node
        .iter()
        .find(|m| m["migration_id"] == migration_id.as_str())
        .unwrap_or_else(|| panic!("{migration_id} not on the node: {on_node:#?}"));
    assert_eq!(
        drain_record["latest"]["phase"], "PHASE_COPYING",
        "the kill did not land mid-copy: {on_node:#?}"
    );

    ctl.restart();
    let (code, out) = cli(&ctl, &["drain", "watch", &id, "--json"]);
    let events = json_lines(&out);
    let last = events.last().expect("drain events");
    assert_eq!(code, 0, "{last:#}");
    assert_eq!(last["state"], "DRAIN_STATE_SUCCEEDED", "{last:#}");
    let items = &last["plan"]["items"];
    let resumed = item_of(items, &domain);
    assert_eq!(
        resumed["migration_id"],
        migration_id.as_str(),
        "{resumed:#}"
    );
    for guest in &guests {
        let item = item_of(items, guest.name());
        assert_moved(guest, item, &["vda"], &dst);
        let requests = requests_on_node(&node, guest.name());
        assert_eq!(
            requests.len(),
            1,
            "{} was asked to migrate more than once: {requests:?}",
            guest.name()
        );
        assert!(
            requests
                .iter()
                .all(|r| r.starts_with(&id) && r.ends_with("-a1")),
            "{requests:?}"
        );
    }
    for guest in &guests {
        guest.verify_data_after_cold_restart();
    }
}
