//! Host loss (issue #21): host 2 "loses power" while a migration of its guest's disk is
//! COPYING through the controller — its libvirtd, virtlogd, the guest's QEMU and its
//! `volmig node` are SIGKILLed at once (`harness::power`). The controller must report the
//! node down and keep the migration unfinished while the host is off. Then the host
//! "boots": an empty `/run/libvirt`, virtlogd and libvirtd again (the pools autostart), the
//! node again on the same journal, and the guest from its persistent definition. Whatever
//! the node then reports (it rolls the copy back: the guest's QEMU, and with it the block
//! job, died), the node's record, the controller's history and both of libvirt's
//! definitions must agree; no volume volmig did not create is gone; no block job is left;
//! and after a cold restart every record the guest acknowledged before the cut is on the
//! disk its persistent definition names.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::checks::{assert_no_block_job, volumes_in};
use harness::fleet::{migrate_args, CliAnswer, Fleet};
use harness::hosts::SimBed;
use harness::power::{power_off, power_on};
use harness::{try_wait_until, writing_guest_with_data, DirPool, Pool};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);
/// Bound on reaching the middle of the copy (guest boot, placement, volume creation).
const TO_COPYING: Duration = Duration::from_secs(300);
/// Bound on the migration's end once the node runs again.
const SETTLE: Duration = Duration::from_secs(300);
/// The copy's rate: 64 MiB of pre-written data take ≥ 16 s, so the cut lands mid-copy.
const BANDWIDTH: &str = "4MiB";

fn phase(v: &Value) -> &str {
    v["phase"].as_str().unwrap_or("")
}

fn is_terminal(phase: &str) -> bool {
    matches!(
        phase,
        "PHASE_COMPLETED" | "PHASE_FAILED" | "PHASE_CANCELLED"
    )
}

fn parse(what: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// Polls `status` (a `status ID --json` call) until the migration's latest event is
/// terminal; returns that record. Panics with the fleet's logs after [`SETTLE`].
fn wait_terminal(fleet: &Fleet, who: &str, id: &str, status: impl Fn() -> CliAnswer) -> Value {
    let mut record = Value::Null;
    let ended = try_wait_until(SETTLE, || {
        let (code, out, _) = status();
        if code != 0 {
            return false;
        }
        record = parse(who, &out);
        is_terminal(phase(&record["latest"]))
    });
    assert!(
        ended,
        "{who}: {id} did not reach a terminal state within {SETTLE:?}: {record:#}\n{}",
        fleet.logs()
    );
    record
}

/// docs/api.md ("Crash and restart"): anything before the pivot that cannot continue after
/// a restart is rolled back and reported FAILED with `ABORTED`, "the node restarted while
/// copying and the block copy was no longer running". After a power loss the guest is shut
/// off, which the node's recovery must read as "no block copy" (it once failed on it with
/// FAILED_PRECONDITION "looking for the block copy: … domain is not running").
#[test]
fn host_power_loss_mid_copy_ends_with_journal_definitions_and_history_in_agreement() {
    let node_latest = host_power_loss_mid_copy();
    let error = &node_latest["error"];
    assert_eq!(error["code_name"], "ABORTED", "{node_latest:#}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("the node restarted while copying")),
        "{node_latest:#}"
    );
}

/// The scenario of this file with every check of its header; returns the terminal event
/// the node reports after the power-on.
fn host_power_loss_mid_copy() -> Value {
    let t0 = Instant::now();
    let bed = SimBed::up(2);
    let h2 = bed.host(2).clone();

    // Pools and guest live in host 2's libvirtd (scope declared first: Drop goes there).
    let on_h2 = h2.libvirt_scope();
    let src = DirPool::new("pw-src");
    let dst = DirPool::new("pw-dst");
    // A real host's pools come back with it.
    for pool in [src.name(), dst.name()] {
        h2.virsh(&["pool-autostart", pool])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let guest = writing_guest_with_data("pw-guest", &src, "qcow2");
    let src_path = guest.live_disk_source("vda").path;
    let src_vols_before = volumes_in(&src);

    let mut fleet = Fleet::up(&bed, 2);
    let node2 = fleet.node_id(2).to_string();
    eprintln!("bed, guest and fleet up in {:?}", t0.elapsed());

    // The operator's migration, followed as it runs (one JSON event a line).
    let mut migrate = fleet
        .cli_command(&migrate_args(
            guest.name(),
            "vda",
            dst.name(),
            &["--bandwidth", BANDWIDTH, "--json"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volmig migrate");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = migrate.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + TO_COPYING;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "no mid-copy event within {TO_COPYING:?} ({e}): {seen:#?}\n{}",
                fleet.logs()
            )
        });
        let event = parse("migrate event", &line);
        let mid_copy = phase(&event) == "PHASE_COPYING"
            && event["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0;
        assert!(
            !is_terminal(phase(&event)),
            "ended before the cut: {event:#}\n{}",
            fleet.logs()
        );
        seen.push(event);
        if mid_copy {
            break;
        }
    }
    let id = seen[0]["migration_id"]
        .as_str()
        .expect("migration id")
        .to_string();
    let acked_before_cut = guest.last_ack();

    // ---- power cut ----
    let killed = power_off(&h2);
    eprintln!(
        "host 2 off at {:?}, {} processes killed: {killed:#?}",
        t0.elapsed(),
        killed.len()
    );
    for what in ["libvirtd", "virtlogd", "qemu", "volmig"] {
        assert!(
            killed.iter().any(|k| k.contains(what)),
            "no {what} among the killed: {killed:#?}"
        );
    }
    // The node's journal at the cut: copying, the destination mirrored to.
    let journal_path = bed
        .dir()
        .join("node2-state/migrations")
        .join(format!("{id}.json"));
    let journal = parse(
        "journal",
        &std::fs::read_to_string(&journal_path)
            .unwrap_or_else(|e| panic!("{}: {e}", journal_path.display())),
    );
    assert_eq!(
        journal["latest"]["phase"], "Copying",
        "journal at the cut: {journal:#}"
    );
    assert!(
        journal["stage"].get("Mirroring").is_some(),
        "journal stage at the cut: {:#}",
        journal["stage"]
    );
    // The operator's CLI loses the stream; the last event it printed was COPYING.
    let exited = try_wait_until(Duration::from_secs(120), || {
        matches!(migrate.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = migrate.kill();
    }
    let status = migrate.wait().expect("migrate status");
    reader.join().expect("reader");
    seen.extend(rx.try_iter().map(|l| parse("migrate event", &l)));
    let mut stderr = String::new();
    if let Some(mut e) = migrate.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    eprintln!("migrate CLI after the cut: {status} (exited by itself: {exited}): {stderr}");
    let last_seen = seen.last().expect("events");
    assert_eq!(
        phase(last_seen),
        "PHASE_COPYING",
        "the last event the operator saw: {last_seen:#}"
    );

    // The controller: host 2's node is down, the migration unfinished.
    let mut nodes = Value::Null;
    let down = try_wait_until(Duration::from_secs(120), || {
        let (code, out, _) = fleet.cli(&["nodes", "--json"]);
        if code != 0 {
            return false;
        }
        nodes = parse("nodes", &out);
        nodes["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["node_id"] == node2.as_str() && n["state"] == "NODE_STATE_DOWN")
        })
    });
    assert!(
        down,
        "the controller does not report {node2} down: {nodes:#}\n{}",
        fleet.logs()
    );
    // Asked for an unfinished migration, the controller asks its node (whose record is
    // the truth while it runs): it answers UNAVAILABLE naming the node, not a guess.
    let (code, out, err) = fleet.cli(&["status", &id, "--json"]);
    assert!(
        code != 0 && err.contains("UNAVAILABLE") && err.contains(node2.as_str()),
        "status while host 2 is off: {code} {err}\n{out}"
    );
    // Its history still holds the migration, unfinished, at the last event relayed.
    let (code, out, err) = fleet.cli(&["list", "--domain", guest.name(), "--json"]);
    assert_eq!(code, 0, "list while host 2 is off: {err}\n{out}");
    let listed = parse("list", &out);
    let entry = listed["migrations"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["migration_id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not in the history: {listed:#}"));
    assert_eq!(
        phase(&entry["latest"]),
        "PHASE_COPYING",
        "the history while host 2 is off: {entry:#}"
    );

    // ---- power on: daemons, pools, then the node on the same journal ----
    power_on(&h2, &bed.dir().join("h2-power-on.log"));
    eprintln!("host 2 on at {:?}", t0.elapsed());
    assert_eq!(guest.state(), "shut off", "after the boot");
    fleet.restart_node(2);
    fleet.wait_registered();

    // The node's own answer, then the controller's history: the same terminal phase.
    let node_record = wait_terminal(&fleet, "the node", &id, || {
        fleet.node_cli(2, &["status", &id, "--json"])
    });
    let node_latest = node_record["latest"].clone();
    eprintln!(
        "node after power-on: {} — {} {} (at {:?})",
        phase(&node_latest),
        node_latest["message"],
        node_latest["error"],
        t0.elapsed()
    );
    let history = wait_terminal(&fleet, "the controller's history", &id, || {
        fleet.cli(&["status", &id, "--json"])
    });
    assert_eq!(
        phase(&history["latest"]),
        phase(&node_latest),
        "controller: {history:#}\nnode: {node_record:#}"
    );
    assert_eq!(history["node_id"], node2.as_str(), "{history:#}");

    // The guest boots from its persistent definition; everything agrees with the node.
    guest.boot();
    guest.wait_writing(10, BOOT);
    assert_no_block_job(&guest, "vda");
    let live = guest.live_disk_source("vda").path;
    let persistent = guest.persistent_disk_source("vda").path;
    let src_vols_after = volumes_in(&src);
    let dst_vols = volumes_in(&dst);
    match phase(&node_latest) {
        "PHASE_COMPLETED" => {
            let result = &node_latest["result"];
            let dest = result["destination_source"].as_str().expect("destination");
            assert_eq!(live, dest, "live XML after a completed migration");
            assert_eq!(
                persistent, dest,
                "persistent XML after a completed migration"
            );
            let dest_volume = result["destination_volume"].as_str().unwrap_or("");
            assert!(
                dst_vols.iter().any(|v| v == dest_volume),
                "{dest_volume} not in {}: {dst_vols:?}",
                dst.name()
            );
            let deleted = result["source_deleted"].as_bool().unwrap_or(false);
            assert!(!deleted, "the source was deleted without --delete-source");
            assert_eq!(src_vols_after, src_vols_before, "source pool");
        }
        "PHASE_FAILED" => {
            let error = &node_latest["error"];
            assert!(
                error["disk_state"]
                    .as_str()
                    .is_some_and(|s| s.contains("stays on its source")),
                "a failure must say where the disk is: {error:#}"
            );
            assert_eq!(live, src_path, "live XML after a rollback");
            assert_eq!(persistent, src_path, "persistent XML after a rollback");
            // The node deleted what it created, and only that.
            assert!(
                dst_vols.is_empty(),
                "stray volumes in {}: {dst_vols:?}",
                dst.name()
            );
            assert_eq!(src_vols_after, src_vols_before, "source pool");
        }
        other => panic!("nobody cancelled, yet the node reports {other}: {node_record:#}"),
    }
    assert!(
        std::path::Path::new(&src_path).exists(),
        "the source image {src_path} is gone"
    );

    // Nothing the guest acknowledged before the cut is lost (nor since).
    let after_boot = guest.last_ack();
    assert!(after_boot >= acked_before_cut, "acks went backwards");
    guest.verify_data_after_cold_restart();
    eprintln!("test took {:?}", t0.elapsed());

    drop(fleet);
    drop(guest);
    drop((src, dst));
    drop(on_h2);
    drop(bed);
    node_latest
}
