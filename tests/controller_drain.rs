//! End-to-end: draining a pool through the real binary — a controller, a node
//! and writing guests on this host's libvirtd. On the pool: a single-disk and
//! a two-disk guest, both writing all the time and holding data before the
//! drain starts, a guest that wrote and was then stopped, and a volume no
//! guest uses. `volmig drain --dry-run` lists all four with what happens to
//! each (the stopped guest stays unless stopped guests are asked for); the
//! real drain with `--include-stopped`, two at a time within a shared
//! bandwidth budget, moves both running guests live (the two-disk one in one
//! request) and the stopped one offline, reports where each volume went and
//! leaves the unused volume; both definitions of each running guest name the
//! destination and no record is lost after a cold restart, and the stopped
//! guest boots from its new disk with all its records.

mod harness;

use std::time::Duration;

use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::drain::{assert_moved, cli, drain_both_at_once, item_of, json_lines, left_reason};
use harness::guest::writing_guest_with_data;
use harness::node::NodeProcess;
use harness::{virsh_ok, DirPool, Guest, Pool};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_moves_every_running_guest_off_the_pool_and_reports_what_stays() {
    let src = DirPool::new("dr-src");
    let dst = DirPool::new("dr-dst");
    let single = writing_guest_with_data("dr-one", &src, "qcow2");
    let double = Guest::builder("dr-two", &src)
        .format("qcow2")
        .disk_bytes(128 * MIB)
        .prewritten(64 * MIB)
        .data_disk_prewritten(32 * MIB, "qcow2")
        .pause_ms(20)
        .start();
    double.wait_writing(10, Duration::from_secs(120));
    // A guest that wrote its records and was then stopped.
    let stopped = writing_guest_with_data("dr-off", &src, "qcow2");
    stopped.destroy();
    let orphan = harness::unique_name("dr-orphan");
    virsh_ok(&[
        "vol-create-as",
        src.name(),
        &orphan,
        "8M",
        "--format",
        "raw",
    ]);

    let ctl = ControllerProcess::start("dr-ctl", "");
    let node = NodeProcess::start("dr-n1", &["--controller", &ctl.endpoint()]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;

    // The dry run: both running guests planned onto dst, the rest left with reasons.
    let (code, out) = cli(
        &ctl,
        &[
            "drain",
            src.name(),
            "--to-pool",
            dst.name(),
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan json");
    assert_eq!(plan["items"].as_array().map(Vec::len), Some(2), "{plan:#}");
    let planned_two = item_of(&plan["items"], double.name());
    assert_eq!(
        planned_two["disks"].as_array().map(Vec::len),
        Some(2),
        "{plan:#}"
    );
    assert_eq!(
        left_reason(&plan["left"], stopped.name()),
        "stopped",
        "{plan:#}"
    );
    assert_eq!(left_reason(&plan["left"], &orphan), "no_user", "{plan:#}");
    let destinations = plan["destinations"].as_array().expect("destinations");
    assert_eq!(destinations.len(), 1, "{plan:#}");
    assert_eq!(destinations[0]["pool"], dst.name());
    let before: Vec<u64> = [&single, &double].iter().map(|g| g.last_ack()).collect();

    // The drain, followed to its end: one JSON object per change.
    let (code, out) = cli(
        &ctl,
        &drain_both_at_once(src.name(), dst.name(), "48MiB", &["--include-stopped"]),
    );
    let events = json_lines(&out);
    let last = events.last().expect("drain events");
    assert_eq!(code, 0, "{last:#}");
    assert_eq!(last["state"], "DRAIN_STATE_SUCCEEDED", "{last:#}");
    assert!(
        events
            .iter()
            .any(|e| e["counts"]["running"].as_u64() > Some(0)),
        "no event showed a running item: {out}"
    );
    let items = &last["plan"]["items"];
    assert_moved(&single, item_of(items, single.name()), &["vda"], &dst);
    assert_moved(
        &double,
        item_of(items, double.name()),
        &["vda", "vdb"],
        &dst,
    );
    // The stopped guest moved offline: its persistent definition names the copy.
    let off = item_of(items, stopped.name());
    assert_eq!(off["state"], "DRAIN_ITEM_STATE_DONE", "{off:#}");
    let new_source = off["moves"][0]["new_source"].as_str().expect("new_source");
    assert!(
        new_source.starts_with(&dst.path().display().to_string()),
        "{off:#}"
    );
    assert_eq!(stopped.persistent_disk_source("vda").path, new_source);
    assert_eq!(
        last["plan"]["left"].as_array().map(Vec::len),
        Some(1),
        "only the unused volume stays: {last:#}"
    );
    // The guests wrote while they moved.
    for (guest, acked) in [&single, &double].iter().zip(before) {
        assert!(guest.last_ack() > acked, "{} stopped writing", guest.name());
    }

    // The drain is recorded: status and list answer from the store.
    let id = last["drain_id"].as_str().expect("drain_id");
    let (code, out) = cli(&ctl, &["drain", "status", id, "--json"]);
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(status["state"], "DRAIN_STATE_SUCCEEDED", "{status:#}");
    let (code, out) = cli(&ctl, &["drain", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(id), "{out}");

    single.verify_data_after_cold_restart();
    double.verify_data_after_cold_restart();
    // The stopped guest boots from its new disk with every record it wrote.
    stopped.boot();
    stopped.wait_writing(10, Duration::from_secs(120));
    stopped.verify_data();
}
