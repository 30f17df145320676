//! End-to-end: bandwidth, cancel, crash and failure paths of `volmig node`
//! against real libvirt and a writing guest. Every path must end in a clean,
//! reported state: no stray destination volume, no leftover block job, and the
//! guest's data intact.

mod harness;

use std::time::{Duration, Instant};

use harness::guest::guest_with_full_data_disk;
use harness::node::{self, NodeProcess};
use harness::{DirPool, DiskPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

/// No block job on the disk and no volume left in the destination pool.
fn assert_clean(guest: &Guest, disk: &str, dst: &dyn Pool, src_path: &str) {
    let info = harness::virsh_ok(&["blockjob", guest.name(), disk, "--info"]);
    assert!(
        info.contains("No current block job"),
        "a block job is left on {disk}: {info}"
    );
    let left = harness::pools::volume_names(dst.name()).expect("vol-list");
    assert!(left.is_empty(), "stray volumes in {}: {left:?}", dst.name());
    assert_eq!(guest.live_disk_source(disk).path, src_path);
    assert_eq!(guest.persistent_disk_source(disk).path, src_path);
}

/// Copy rate in bytes/s over the progress events after the first second of copying.
fn measured_rate(events: &[(Instant, u64)]) -> f64 {
    let start = events[0].0 + Duration::from_secs(1);
    let window: Vec<_> = events.iter().filter(|(t, _)| *t >= start).collect();
    assert!(window.len() >= 2, "too few progress events: {events:?}");
    let (t0, b0) = window[0];
    let (t1, b1) = window[window.len() - 1];
    (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limit_is_honoured_and_changed_live() {
    let src = DirPool::new("f-bw-src");
    let dst = DirPool::new("f-bw-dst");
    let guest = guest_with_full_data_disk("f-bw", &src, 128 * MIB);
    let node = NodeProcess::start("f-bw", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vdb", dst.name(), 8 * MIB))
        .await
        .expect("start")
        .into_inner();
    let mut slow = Vec::new();
    let mut id = String::new();
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(5) {
        let e = stream.message().await.expect("stream").expect("event");
        id = e.migration_id.clone();
        if node::phase(&e) == proto::Phase::Copying {
            slow.push((
                Instant::now(),
                e.progress.map(|p| p.bytes_done).unwrap_or(0),
            ));
        }
    }
    let rate = measured_rate(&slow);
    assert!(
        (rate - 8.0 * MIB as f64).abs() <= 0.2 * 8.0 * MIB as f64,
        "rate {rate:.0} B/s is not within 20 % of 8 MiB/s"
    );
    client
        .set_bandwidth(proto::SetBandwidthRequest {
            migration_id: id.clone(),
            bytes_per_sec: 16 * MIB,
        })
        .await
        .expect("SetBandwidth");
    let mut fast = Vec::new();
    let mut rest = Vec::new();
    let changed = Instant::now();
    while let Some(e) = stream.message().await.expect("stream") {
        if node::phase(&e) == proto::Phase::Copying
            && changed.elapsed() > Duration::from_millis(500)
        {
            fast.push((
                Instant::now(),
                e.progress.map(|p| p.bytes_done).unwrap_or(0),
            ));
        }
        rest.push(e);
    }
    node::assert_terminal(&rest, proto::Phase::Completed);
    eprintln!("progress after SetBandwidth: {fast:?}");
    let rate = measured_rate(&fast);
    assert!(
        (rate - 16.0 * MIB as f64).abs() <= 0.2 * 16.0 * MIB as f64,
        "rate {rate:.0} B/s after SetBandwidth is not within 20 % of 16 MiB/s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_copying_keeps_the_guest_on_its_source() {
    let src = DirPool::new("f-cc-src");
    let dst = DirPool::new("f-cc-dst");
    let guest = guest_with_full_data_disk("f-cc", &src, 64 * MIB);
    let src_path = guest.live_disk_source("vdb").path;
    let node = NodeProcess::start("f-cc", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vdb", dst.name(), 4 * MIB))
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut stream, node::copying_with_progress).await;
    let id = seen[0].migration_id.clone();
    client
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: id.clone(),
        })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    let error = rest.last().and_then(|e| e.error.clone()).expect("error");
    assert_eq!(error.code, tonic::Code::Cancelled as i32);
    assert_eq!(error.phase, proto::Phase::Copying as i32);
    assert!(
        error.disk_state.contains("stays on its source"),
        "{error:?}"
    );
    assert_clean(&guest, "vdb", &dst, &src_path);
    // A second cancel is refused with the reason.
    let again = client
        .cancel_migration(proto::CancelMigrationRequest { migration_id: id })
        .await
        .expect_err("already ended");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_synchronized_keeps_the_guest_on_its_source() {
    let src = DirPool::new("f-cs-src");
    let dst = DirPool::new("f-cs-dst");
    let guest = Guest::builder("f-cs", &src).format("qcow2").start();
    guest.wait_writing(20, BOOT);
    let src_path = guest.live_disk_source("vda").path;
    // Hold SYNCHRONIZED long enough to cancel there, with the guest writing.
    let node = NodeProcess::start("f-cs", &["--synchronized-hold-ms", "20000"]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::request(guest.name(), "vda", dst.name()))
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut stream, |e| {
        node::phase(e) == proto::Phase::Synchronized
    })
    .await;
    let id = seen[0].migration_id.clone();
    let synced_at = guest.last_ack();
    guest.wait_writing(synced_at + 20, BOOT);
    client
        .cancel_migration(proto::CancelMigrationRequest { migration_id: id })
        .await
        .expect("cancel");
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Cancelled);
    let error = rest.last().and_then(|e| e.error.clone()).expect("error");
    assert_eq!(error.phase, proto::Phase::Synchronized as i32);
    assert_clean(&guest, "vda", &dst, &src_path);
    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn node_killed_mid_copy_finishes_the_migration_after_restart() {
    let src = DirPool::new("f-kill-src");
    let dst = DirPool::new("f-kill-dst");
    let guest = guest_with_full_data_disk("f-kill", &src, 48 * MIB);
    let mut node = NodeProcess::start("f-kill", &[]);
    let id = {
        let mut client = node.client().await;
        let mut stream = client
            .migrate_volume(node::limited(guest.name(), "vdb", dst.name(), 8 * MIB))
            .await
            .expect("start")
            .into_inner();
        let seen = node::read_until(&mut stream, node::copying_with_progress).await;
        seen[0].migration_id.clone()
    };
    node.kill9();
    // The copy goes on inside QEMU while the node is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.restart();
    let mut client = node.client().await;
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
        .get_migration(proto::GetMigrationRequest { migration_id: id })
        .await
        .expect("get")
        .into_inner();
    let result = record
        .latest
        .and_then(|e| e.result)
        .expect("completed record");
    assert_eq!(
        guest.live_disk_source("vdb").path,
        result.destination_source
    );
    assert_eq!(
        guest.persistent_disk_source("vdb").path,
        result.destination_source
    );
    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_destroyed_mid_copy_fails_cleanly() {
    let src = DirPool::new("f-gone-src");
    let dst = DirPool::new("f-gone-dst");
    let guest = guest_with_full_data_disk("f-gone", &src, 64 * MIB);
    let src_path = guest.live_disk_source("vdb").path;
    let node = NodeProcess::start("f-gone", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vdb", dst.name(), 4 * MIB))
        .await
        .expect("start")
        .into_inner();
    node::read_until(&mut stream, node::copying_with_progress).await;
    guest.destroy();
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Failed);
    let error = rest.last().and_then(|e| e.error.clone()).expect("error");
    assert_eq!(
        error.code,
        tonic::Code::FailedPrecondition as i32,
        "{error:?}"
    );
    let left = harness::pools::volume_names(dst.name()).expect("vol-list");
    assert!(left.is_empty(), "stray volumes: {left:?}");
    assert_eq!(guest.persistent_disk_source("vdb").path, src_path);
    guest.boot();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_pool_too_small_is_resource_exhausted_before_copying() {
    let src = DirPool::new("f-full-src");
    let small = DiskPool::new("f-full-blk", 16 * MIB);
    let guest = Guest::start("f-full", &src, "raw", 64 * MIB);
    guest.wait_writing(10, BOOT);
    let node = NodeProcess::start("f-full", &[]);
    let mut client = node.client().await;
    let status = node::migrate(
        &mut client,
        node::request(guest.name(), "vda", small.name()),
    )
    .await
    .expect_err("must be refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(small.name()),
        "{}",
        status.message()
    );
    let left = harness::pools::volume_names(small.name()).expect("vol-list");
    assert!(left.is_empty(), "stray volumes: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_already_migrating_is_refused_and_the_same_request_id_attaches() {
    let src = DirPool::new("f-dup-src");
    let dst = DirPool::new("f-dup-dst");
    let guest = guest_with_full_data_disk("f-dup", &src, 32 * MIB);
    let node = NodeProcess::start("f-dup", &[]);
    let mut client = node.client().await;
    let mut req = node::limited(guest.name(), "vdb", dst.name(), 8 * MIB);
    req.request_id = "dup-test-1".into();
    let mut first = client
        .migrate_volume(req.clone())
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut first, |_| true).await;
    let id = seen[0].migration_id.clone();

    let mut other = req.clone();
    other.request_id = "dup-test-2".into();
    let status = node::migrate(&mut client, other)
        .await
        .expect_err("busy disk");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&id), "{}", status.message());

    let attached = node::migrate(&mut client, req).await.expect("attach");
    assert!(attached.iter().all(|e| e.migration_id == id));
    node::assert_terminal(&attached, proto::Phase::Completed);
    let rest = node::collect(first).await.expect("first stream");
    node::assert_terminal(&rest, proto::Phase::Completed);
}
