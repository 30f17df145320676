//! A network partition mid-copy on simulated hosts (issue #21, `deploy/hosts.sh`): the
//! controller is cut off from the node running a migration (the host's veth on the bridge
//! goes down) while the node copies a writing guest's disk. The migration goes on and
//! completes on the node; meanwhile the controller reports the node `NODE_STATE_DOWN` and
//! a status call through it names the node unreachable. Once the link is back the
//! node registers again, a watch through the controller (its relay following the node
//! again) ends with the true end (COMPLETED, the node's destination), `status` through the
//! controller reports it from the history, the
//! controller's history and the node's journal each hold exactly one migration for the
//! request (nothing was retried), and the guest's records are complete after a cold restart.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::fleet::{migrate_args, Fleet};
use harness::hosts::SimBed;
use harness::{writing_guest_with_data, DirPool, Pool};
use serde_json::Value;

/// 64 MiB of data at 2 MiB/s: about 30 s of copy, room for the cut to land and for the
/// controller to see the node down while the node still copies.
const BANDWIDTH: &str = "2MiB";
/// Bound on the copy's end (a loaded 2-core machine is slow).
const COPY_END: Duration = Duration::from_secs(300);
const SEEN_DOWN: Duration = Duration::from_secs(60);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The phase of a `status --json` answer.
fn phase_of(status: &Value) -> &str {
    status["latest"]["phase"].as_str().unwrap_or("")
}

#[test]
fn a_partitioned_node_completes_its_migration_and_the_controller_catches_up() {
    let t0 = Instant::now();
    let bed = SimBed::up(1);
    let h1 = bed.host(1).clone();
    // Pools and guest live in host 1's libvirtd (the scope outlives them).
    let on_h1 = h1.libvirt_scope();
    let src = DirPool::new("mp-src");
    let dst = DirPool::new("mp-dst");
    let guest = writing_guest_with_data("mp-guest", &src, "qcow2");
    let fleet = Fleet::up(&bed, 1);
    let node_id = fleet.node_id(1).to_string();
    let request_id = harness::unique_name("mp-req");

    // The operator's migration, followed by its `--json` events.
    let mut cmd = fleet.cli_command(&migrate_args(
        guest.name(),
        "vda",
        dst.name(),
        &[
            "--bandwidth",
            BANDWIDTH,
            "--request-id",
            &request_id,
            "--json",
        ],
    ));
    let mut watcher = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volmig migrate");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, events) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut seen = Vec::new();
    let id = loop {
        let e = events
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("no COPYING event ({e}): {seen:?}\n{}", fleet.logs()));
        seen.push(e.clone());
        if e["phase"] == "PHASE_COPYING" {
            break e["migration_id"]
                .as_str()
                .expect("migration id")
                .to_string();
        }
    };
    assert_eq!(
        seen.last().expect("the COPYING event")["node_id"],
        node_id.as_str()
    );

    // The node itself, asked inside its host, says COPYING on both sides of the cut.
    let node_status = |what: &str| {
        let (code, out, err) = fleet.node_cli(1, &["status", &id, "--json"]);
        assert_eq!(code, 0, "node status {what}: {err}\n{out}");
        json(&out)
    };
    let before = node_status("before the cut");
    assert_eq!(phase_of(&before), "PHASE_COPYING", "{before}");
    let cut_at = Instant::now();
    bed.set_host_link(1, false);
    let after = node_status("after the cut");
    assert_eq!(
        phase_of(&after),
        "PHASE_COPYING",
        "the cut did not land mid-copy: {after}"
    );
    eprintln!("cut {:?} into the test", t0.elapsed());

    // While cut: the controller marks the node down and cannot report the live state.
    let mut nodes = Value::Null;
    let down = harness::try_wait_until(SEEN_DOWN, || {
        let (code, out, _) = fleet.cli(&["nodes", "--json"]);
        if code != 0 {
            return false;
        }
        nodes = json(&out);
        nodes["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["node_id"] == node_id.as_str() && n["state"] == "NODE_STATE_DOWN")
    });
    assert!(
        down,
        "the controller still lists the node up: {nodes}\n{}",
        fleet.logs()
    );
    eprintln!("controller saw the node down after {:?}", cut_at.elapsed());
    let (code, out, err) = fleet.cli(&["status", &id]);
    eprintln!("status through the controller while cut: code {code}\n{err}{out}");
    assert_ne!(code, 0, "status answered while the node is cut off: {out}");
    assert!(
        err.contains("unreachable") && err.contains(&node_id),
        "status does not name the node unreachable: {err}"
    );
    // Still cut while the controller answered so: the node has not lost its link.
    let mid = node_status("while cut");
    eprintln!(
        "node phase while the controller reports it down: {}",
        phase_of(&mid)
    );

    // The migration goes on and ends on the node, the controller still cut off.
    let mut last = Value::Null;
    let ended = harness::try_wait_until(COPY_END, || {
        last = node_status("waiting for the end");
        matches!(
            phase_of(&last),
            "PHASE_COMPLETED" | "PHASE_FAILED" | "PHASE_CANCELLED"
        )
    });
    assert!(ended, "no end on the node: {last}\n{}", fleet.logs());
    assert_eq!(phase_of(&last), "PHASE_COMPLETED", "{last}");
    let dest = last["latest"]["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    eprintln!("completed on the node {:?} after the cut", cut_at.elapsed());
    // The link is still down: the controller has not heard of the end.
    let (_, nodes_now, _) = fleet.cli(&["nodes", "--json"]);
    assert!(
        nodes_now.contains("NODE_STATE_DOWN"),
        "the link came back early? {nodes_now}"
    );
    // Host 1's libvirtd: live and persistent definitions on the destination.
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);

    bed.set_host_link(1, true);
    // The link is back: the node registers again, and a watch through the controller
    // (its relay following the node again) ends with the node's end.
    fleet.wait_registered();
    let mut watch = (1, String::new(), String::new());
    let watched = harness::try_wait_until(Duration::from_secs(120), || {
        watch = fleet.cli(&["watch", &id, "--json"]);
        watch.0 == 0
            && watch
                .1
                .lines()
                .last()
                .is_some_and(|l| json(l)["phase"] == "PHASE_COMPLETED")
    });
    assert!(
        watched,
        "no watch through the controller reached the end: {watch:?}\n{}",
        fleet.logs()
    );
    eprintln!(
        "watch through the controller after the link came back:\n{}",
        watch.1
    );
    let last_watched = json(watch.1.lines().last().expect("an event"));
    assert_eq!(last_watched["migration_id"], id.as_str());
    assert_eq!(
        last_watched["result"]["destination_source"],
        dest.as_str(),
        "{last_watched}"
    );
    // The history records the true end.
    let mut status = (1, String::new(), String::new());
    let caught_up = harness::try_wait_until(Duration::from_secs(120), || {
        status = fleet.cli(&["status", &id, "--json"]);
        status.0 == 0 && phase_of(&json(&status.1)) == "PHASE_COMPLETED"
    });
    assert!(
        caught_up,
        "the controller did not reach the end: {status:?}\n{}",
        fleet.logs()
    );
    let recorded = json(&status.1);
    assert_eq!(
        recorded["latest"]["result"]["destination_source"],
        dest.as_str(),
        "{recorded}"
    );

    // The operator's first `migrate` lost its stream while the node was cut off (the
    // controller tells its watchers so and keeps following); whatever it saw after the
    // cut is this migration's, and an end it saw is the same end.
    let exit = watcher.wait().expect("migrate exit");
    reader.join().expect("reader");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watcher.stderr.take().expect("stderr"), &mut stderr)
        .expect("migrate stderr");
    let rest: Vec<Value> = events.try_iter().collect();
    eprintln!(
        "first migrate exited {exit} after {} more events; stderr:\n{stderr}",
        rest.len()
    );
    for e in &rest {
        assert_eq!(e["migration_id"], id.as_str(), "{e}");
        if e["phase"] == "PHASE_FAILED" || e["phase"] == "PHASE_CANCELLED" {
            panic!("the first watch saw another end: {e}");
        }
    }
    if !rest.iter().any(|e| e["phase"] == "PHASE_COMPLETED") {
        assert!(
            !exit.success() && stderr.contains(&format!("volmig watch {id}")),
            "the first migrate ended without the end and without saying how to follow it: \
             {exit}\n{stderr}"
        );
    }

    // Exactly one migration, in the controller's history and in the node's journal.
    for (whose, (code, out, err)) in [
        (
            "controller",
            fleet.cli(&["list", "--domain", guest.name(), "--json"]),
        ),
        (
            "node",
            fleet.node_cli(1, &["list", "--domain", guest.name(), "--json"]),
        ),
    ] {
        assert_eq!(code, 0, "{whose} list: {err}");
        let list = json(&out);
        let migrations = list["migrations"].as_array().expect("migrations");
        assert_eq!(migrations.len(), 1, "{whose}: {list}");
        assert_eq!(
            migrations[0]["migration_id"],
            id.as_str(),
            "{whose}: {list}"
        );
        assert_eq!(
            phase_of(&migrations[0]),
            "PHASE_COMPLETED",
            "{whose}: {list}"
        );
    }

    guest.verify_data_after_cold_restart();

    drop(fleet);
    drop(guest);
    drop((src, dst));
    drop(on_h1);
    drop(bed);
    eprintln!("test {:?}", t0.elapsed());
}
