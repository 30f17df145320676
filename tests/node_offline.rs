//! End-to-end: `volmig node` moves a shut-off guest's disk offline between
//! real libvirt dir pools (`--offline-if-stopped`), and a guest started during
//! its offline copy is left on its source with nothing lost.

mod harness;

use std::time::Duration;

use harness::node::{self, NodeProcess};
use harness::{volmig, wait_until, DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// Powers the guest off after it acknowledged some records.
fn written_then_stopped(guest: &Guest) {
    guest.wait_writing(30, BOOT);
    guest.destroy();
    wait_until(Duration::from_secs(30), "the guest is shut off", || {
        guest.state() == "shut off"
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_guests_disk_moves_offline_and_boots_from_the_destination() {
    let src = DirPool::new("off-src");
    let dst = DirPool::new("off-dst");
    let guest = Guest::start("off", &src, "qcow2", 64 * MIB);
    let node = NodeProcess::start("off", &[]);
    written_then_stopped(&guest);
    let source_path = guest.persistent_disk_source("vda").path;

    let (code, out, err) = volmig(
        &[
            "migrate",
            "--node",
            &node.endpoint(),
            "--domain",
            guest.name(),
            "--disk",
            "vda",
            "--to-pool",
            dst.name(),
            "--offline-if-stopped",
            "--delete-source",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "migrate failed: {err}\n{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    for p in [
        "PHASE_ACCEPTED",
        "PHASE_PREPARING_DESTINATION",
        "PHASE_COPYING",
        "PHASE_PIVOTING",
        "PHASE_VERIFYING",
        "PHASE_CLEANING_UP",
    ] {
        assert!(phases.contains(&p), "{p} missing from {phases:?}");
    }
    assert!(!phases.contains(&"PHASE_SYNCHRONIZED"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"PHASE_COMPLETED"), "{out}");
    let result = &events.last().expect("events")["result"];
    let dest = result["destination_source"]
        .as_str()
        .expect("result")
        .to_string();
    assert_eq!(result["destination_pool"].as_str(), Some(dst.name()));
    assert_eq!(result["source_pool"].as_str(), Some(src.name()));
    assert_eq!(result["source_deleted"].as_bool(), Some(true), "{result}");
    assert!(
        !std::path::Path::new(&source_path).exists(),
        "source deleted"
    );

    // Still shut off, and both definitions (libvirt's "live" one of a
    // stopped domain is its persistent one) name the destination.
    assert_eq!(guest.state(), "shut off");
    assert_eq!(guest.persistent_disk_source("vda").path, dest);
    assert_eq!(guest.live_disk_source("vda").path, dest);

    guest.boot();
    guest.wait_writing(20, BOOT);
    assert_eq!(guest.live_disk_source("vda").path, dest);
    guest.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_started_during_its_offline_copy_stays_on_its_source() {
    let src = DirPool::new("offs-src");
    let dst = DirPool::new("offs-dst");
    // 64 MiB of data at 4 MiB/s: a copy of about 16 s to start the guest in.
    let guest = Guest::builder("offs", &src)
        .format("raw")
        .disk_bytes(128 * MIB)
        .prewritten(64 * MIB)
        .start();
    let node = NodeProcess::start("offs", &[]);
    written_then_stopped(&guest);
    let source_path = guest.persistent_disk_source("vda").path;

    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vda", dst.name());
    req.options = Some(proto::MigrationOptions {
        offline_if_stopped: true,
        bandwidth_bytes_per_sec: 4 * MIB,
        source_policy: proto::SourcePolicy::Delete as i32,
        ..Default::default()
    });
    let mut stream = client
        .migrate_volume(req)
        .await
        .expect("MigrateVolume")
        .into_inner();
    let mut events = Vec::new();
    let mut started = false;
    while let Some(e) = stream.message().await.expect("stream") {
        if !started && e.phase() == proto::Phase::Copying {
            started = true;
            guest.boot();
        }
        events.push(e);
    }
    assert!(started, "the copy never began: {events:#?}");
    node::assert_terminal(&events, proto::Phase::Failed);
    let error = events.last().and_then(|e| e.error.clone()).expect("error");
    assert_eq!(error.code, tonic::Code::Aborted as i32, "{error:?}");
    assert_eq!(error.phase(), proto::Phase::Copying, "{error:?}");
    assert!(
        error.message.contains(&format!(
            "domain '{}' was started during its offline move; it stays on its source; move it live",
            guest.name()
        )),
        "{error:?}"
    );
    // The destination is gone, the guest runs on its source and says so in
    // both definitions, and nothing it wrote is lost.
    let left = harness::pools::volume_names(dst.name()).expect("dst volumes");
    assert!(left.is_empty(), "destination left behind: {left:?}");
    assert!(std::path::Path::new(&source_path).exists());
    assert_eq!(guest.live_disk_source("vda").path, source_path);
    assert_eq!(guest.persistent_disk_source("vda").path, source_path);
    guest.wait_writing(20, BOOT);
    guest.verify_data_after_cold_restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_guests_backing_chain_is_flattened_into_its_offline_copy() {
    let src = DirPool::new("offc-src");
    let dst = DirPool::new("offc-dst");
    let guest = Guest::builder("offc", &src)
        .backing_file(500)
        .disk_bytes(64 * MIB)
        .start();
    let node = NodeProcess::start("offc", &[]);
    written_then_stopped(&guest);
    // A shut-off domain's XML lists no backing chain: ask the image.
    let source_info = harness::run_ok(
        "qemu-img",
        &[
            "info",
            "-U",
            "--output=json",
            &guest.persistent_disk_source("vda").path,
        ],
    );
    assert!(
        source_info.contains("backing-filename"),
        "the source has a backing file: {source_info}"
    );

    let mut client = node.client().await;
    let mut req = node::request(guest.name(), "vda", dst.name());
    req.options = Some(proto::MigrationOptions {
        offline_if_stopped: true,
        ..Default::default()
    });
    let events = node::migrate(&mut client, req)
        .await
        .unwrap_or_else(|s| panic!("MigrateVolume refused: {s:?}"));
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("result");
    let persistent = guest.persistent_disk_source("vda");
    assert_eq!(persistent.path, result.destination_source);
    assert!(persistent.backing.is_empty(), "{persistent:?}");
    let info = harness::run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", &result.destination_source],
    );
    assert!(
        !info.contains("backing-filename"),
        "destination still has a backing file: {info}"
    );

    guest.boot();
    guest.wait_writing(20, BOOT);
    // Records 1..=500 only ever lived in the template.
    guest.verify_data();
    assert!(guest.last_ack() > 500);
}
