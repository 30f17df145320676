//! End-to-end: the node bounds what a caller can grow. 10,000 WatchMigration
//! streams attempted against one running migration: the first 64 are served,
//! the rest refused RESOURCE_EXHAUSTED, the node's memory stays small and it
//! keeps answering.

mod harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::node::{self, NodeProcess};
use harness::writing_guest_with_data;
use harness::{DirPool, Pool};
use tonic::Code;
use volmig::proto;
use volmig::proto::node_client::NodeClient;

const MIB: u64 = 1 << 20;
const ATTEMPTS: usize = 10_000;
const CONNECTIONS: usize = 20;
const WATCHER_LIMIT: usize = 64;

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_watchers_of_one_migration_are_bounded() {
    let src = DirPool::new("lim-src");
    let dst = DirPool::new("lim-dst");
    let guest = writing_guest_with_data("lim-guest", &src, "qcow2");
    let node = NodeProcess::start("lim-node", &[]);
    let mut client = node.client().await;
    let mut stream = client
        .migrate_volume(node::limited(guest.name(), "vda", dst.name(), MIB))
        .await
        .expect("migrate")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("event");
    let id = first.migration_id.clone();
    // The caller's own stream is one of the subscribers; drop it so the
    // count below is the watchers' only.
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib(node.pid());

    let served = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (keep_tx, mut keep_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut peak = rss_before;
    for c in 0..CONNECTIONS {
        // One channel (HTTP/2 connection) per group of watchers.
        let channel = volmig::api::client::connect(&node.endpoint())
            .await
            .expect("connect");
        for _ in 0..ATTEMPTS / CONNECTIONS {
            let mut client = NodeClient::new(channel.clone());
            let id = id.clone();
            let (served, exhausted, other, keep) = (
                served.clone(),
                exhausted.clone(),
                other.clone(),
                keep_tx.clone(),
            );
            tasks.spawn(async move {
                let answer = client
                    .watch_migration(proto::WatchMigrationRequest { migration_id: id })
                    .await;
                match answer {
                    Ok(resp) => {
                        let mut s = resp.into_inner();
                        match s.message().await {
                            Ok(Some(_)) => {
                                served.fetch_add(1, Ordering::Relaxed);
                                // Held open until the end of the test.
                                let _ = keep.send(s);
                            }
                            Ok(None) => other.lock().expect("lock").push("empty".into()),
                            Err(st) if st.code() == Code::ResourceExhausted => {
                                exhausted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(st) => other.lock().expect("lock").push(format!("{st:?}")),
                        }
                    }
                    Err(st) if st.code() == Code::ResourceExhausted => {
                        exhausted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(st) => other.lock().expect("lock").push(format!("{st:?}")),
                }
            });
        }
        peak = peak.max(rss_kib(node.pid()));
        let _ = c;
    }
    while tasks.join_next().await.is_some() {
        peak = peak.max(rss_kib(node.pid()));
    }
    let elapsed = started.elapsed();
    peak = peak.max(rss_kib(node.pid()));
    let served = served.load(Ordering::Relaxed);
    let exhausted = exhausted.load(Ordering::Relaxed);
    let other = other.lock().expect("lock").clone();
    eprintln!(
        "{ATTEMPTS} watch attempts on {CONNECTIONS} connections in {elapsed:?}: {served} served, \
         {exhausted} RESOURCE_EXHAUSTED, {} other; node RSS {} KiB before, peak {} KiB",
        other.len(),
        rss_before,
        peak
    );
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(served, WATCHER_LIMIT, "watchers served");
    assert_eq!(served + exhausted, ATTEMPTS);
    assert!(peak < 100 * 1024, "node RSS peaked at {peak} KiB");

    // The node keeps serving: other calls, and the held watchers get events.
    let info = client
        .get_info(proto::GetInfoRequest {})
        .await
        .expect("node still answers")
        .into_inner();
    assert_eq!(info.node_id, node.node_id());
    drop(keep_tx);
    let mut held = Vec::new();
    while let Ok(s) = keep_rx.try_recv() {
        held.push(s);
    }
    assert_eq!(held.len(), WATCHER_LIMIT);
    let next = tokio::time::timeout(Duration::from_secs(10), held[0].message())
        .await
        .expect("a held watcher gets progress")
        .expect("stream");
    assert!(next.is_some());
    // Watchers leaving free their places at once.
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = client
        .watch_migration(proto::WatchMigrationRequest {
            migration_id: id.clone(),
        })
        .await
        .expect("a place is free again")
        .into_inner()
        .message()
        .await
        .expect("event");
    assert!(again.is_some());
    client
        .cancel_migration(proto::CancelMigrationRequest { migration_id: id })
        .await
        .expect("cancel");
}
