//! End-to-end: how `volmig node` treats the requests of a running migration of a
//! writing guest's disk (`vda`, with real data on it): the bandwidth limit is
//! honoured and changed live, a second request for the same disk is refused, and a
//! retry with the same request id attaches to the migration it started, also after
//! SetBandwidth changed the migration's bandwidth; SetBandwidth is accepted from the
//! COPYING event on, before the copy is issued.

mod harness;

use std::time::{Duration, Instant};

use harness::checks::assert_on_destination;
use harness::node::{self, NodeProcess};
use harness::{virsh_ok, writing_guest_with_data, DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;

/// Copy rate in bytes/s over the progress events, timed by the node's own
/// event timestamps (ms), not by arrival, so a busy machine delaying delivery
/// does not skew it. QEMU advances its cursor a whole 16 MiB buffer at a time,
/// so the rate is taken between the first and the last moment the cursor moved
/// (a window ending between two steps would count a partial step as idle time).
fn measured_rate(events: &[(u64, u64)]) -> f64 {
    let moves: Vec<&(u64, u64)> = events
        .windows(2)
        .filter(|w| w[1].1 > w[0].1)
        .map(|w| &w[1])
        .collect();
    assert!(moves.len() >= 2, "too few cursor moves: {events:?}");
    let (t0, b0) = moves[0];
    let (t1, b1) = moves[moves.len() - 1];
    (b1 - b0) as f64 / ((t1 - t0) as f64 / 1000.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limit_is_honoured_and_changed_live() {
    let src = DirPool::new("f-bw-src");
    let dst = DirPool::new("f-bw-dst");
    // 128 MiB of data in [64 MiB, 192 MiB): about 5 s at 8 MiB/s, then 16 MiB/s.
    let guest = Guest::builder("f-bw", &src)
        .format("qcow2")
        .disk_bytes(192 * MIB)
        .prewritten(128 * MIB)
        .pause_ms(20)
        .start();
    guest.wait_writing(10, Duration::from_secs(120));
    let node = NodeProcess::start("f-bw", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 8 * MIB))
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
                e.timestamp_unix_ms,
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
                e.timestamp_unix_ms,
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
    assert_on_destination(&guest, "vda", &node::result_of(&rest));
    guest.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_already_migrating_is_refused_and_the_same_request_id_attaches() {
    let src = DirPool::new("f-dup-src");
    let dst = DirPool::new("f-dup-dst");
    let guest = writing_guest_with_data("f-dup", &src, "qcow2");
    let node = NodeProcess::start("f-dup", &[]);
    let mut client = node.client().await;
    let mut req = node::limited(guest.name(), "vda", dst.name(), 16 * MIB);
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
    assert_on_destination(&guest, "vda", &node::result_of(&rest));
    guest.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn set_bandwidth_then_retry_with_same_request_id_attaches() {
    let src = DirPool::new("f-bwretry-src");
    let dst = DirPool::new("f-bwretry-dst");
    let guest = writing_guest_with_data("f-bwretry", &src, "qcow2");
    let node = NodeProcess::start("f-bwretry", &[]);
    let mut client = node.client().await;
    let mut req = node::limited(guest.name(), "vda", dst.name(), 8 * MIB);
    req.request_id = harness::unique_name("bw-retry");
    let mut first = client
        .migrate_volume(req.clone())
        .await
        .expect("start")
        .into_inner();
    let seen = node::read_until(&mut first, node::mid_copy).await;
    let id = seen[0].migration_id.clone();
    client
        .set_bandwidth(proto::SetBandwidthRequest {
            migration_id: id.clone(),
            bytes_per_sec: 16 * MIB,
        })
        .await
        .expect("SetBandwidth");
    // The client lost its stream and retries the request it sent, unchanged: SetBandwidth
    // changed the migration, not the request, so this is the same request.
    let attached = node::migrate(&mut client, req).await.unwrap_or_else(|s| {
        panic!("the identical retry after SetBandwidth must attach to {id}: {s:?}")
    });
    assert!(
        attached.iter().all(|e| e.migration_id == id),
        "attached to another migration: {attached:#?}"
    );
    node::assert_terminal(&attached, proto::Phase::Completed);
    let rest = node::collect(first).await.expect("first stream");
    node::assert_terminal(&rest, proto::Phase::Completed);
    assert_on_destination(&guest, "vda", &node::result_of(&rest));
    guest.verify_data();
}

#[tokio::test(flavor = "multi_thread")]
async fn set_bandwidth_on_the_copying_event_is_accepted_and_applied() {
    let src = DirPool::new("f-bwearly-src");
    let dst = DirPool::new("f-bwearly-dst");
    let guest = writing_guest_with_data("f-bwearly", &src, "qcow2");
    let node = NodeProcess::start("f-bwearly", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), 8 * MIB))
        .await
        .expect("start")
        .into_inner();
    // COPYING is announced before the block copy is issued: sent at once, this
    // reaches the node while the copy is being set up.
    let seen = node::read_to_phase(&mut stream, proto::Phase::Copying).await;
    let id = seen[0].migration_id.clone();
    client
        .set_bandwidth(proto::SetBandwidthRequest {
            migration_id: id.clone(),
            bytes_per_sec: 16 * MIB,
        })
        .await
        .expect("SetBandwidth on the COPYING event");
    node::read_until(&mut stream, node::copying_with_progress).await;
    let info = virsh_ok(&["blockjob", guest.name(), "vda", "--info", "--bytes"]);
    assert!(
        info.contains(&format!("{} bytes/s", 16 * MIB)),
        "the running copy does not have the new limit: {info}"
    );
    let rest = node::collect(stream).await.expect("stream");
    node::assert_terminal(&rest, proto::Phase::Completed);
    assert_on_destination(&guest, "vda", &node::result_of(&rest));
    guest.verify_data();
}
