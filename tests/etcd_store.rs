//! The controller's store on a real etcd (one member on loopback): the same
//! suite the file store passes (pool maintenance flags included), a flag
//! written through one controller's store read through another's,
//! reservations from two controllers' stores at once never overfilling a
//! pool, and leadership passing to the next controller when the leader's
//! lease ends.

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::etcd::EtcdCluster;
use volmig::config::EtcdConfig;
use volmig::controller::maintenance::{self, PoolMaintenance};
use volmig::controller::reservations::Reservations;
use volmig::controller::store::etcd::EtcdStore;
use volmig::controller::store::{suite, Store};

async fn store(cluster: &EtcdCluster, prefix: &str) -> Arc<dyn Store> {
    let settings = EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: prefix.to_string(),
        lease_ttl_seconds: 2,
        ..Default::default()
    };
    Arc::new(EtcdStore::connect(&settings).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_passes_the_suite_reserves_atomically_and_hands_over_leadership() {
    let cluster = EtcdCluster::start("etcd-store", 1);
    let prefix = format!("/{}/", harness::unique_name("store"));
    let a = store(&cluster, &prefix).await;
    let b = store(&cluster, &prefix).await;

    suite::run(a.as_ref()).await;

    // A pool maintenance flag set through one controller's store is what the
    // other's next read sees (placement reads it on every plan).
    let flag = PoolMaintenance::sample(true);
    maintenance::set(a.as_ref(), "dir:/shared/pool", &flag)
        .await
        .expect("set");
    let seen = maintenance::all(b.as_ref()).await.expect("read");
    assert_eq!(seen.get("dir:/shared/pool"), Some(&flag));

    // Two controllers' stores reserve the same pool at once: exactly its limit wins.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let r = Reservations::new(if i % 2 == 0 { a.clone() } else { b.clone() });
        tasks.spawn(async move { r.reserve(&[("pool-x".into(), Some(2))]).await });
    }
    let mut won = 0;
    while let Some(res) = tasks.join_next().await {
        if res.expect("join").expect("store").is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, 2, "a pool with max_in_flight 2 got {won} reservations");
    let counts = Reservations::new(b.clone()).counts().await.expect("counts");
    assert_eq!(counts.get("pool-x"), Some(&2));

    // Leadership: one at a time; the next takes over once the first ends.
    let mut first = a.lead().await.expect("lead");
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let l = b.lead().await.expect("lead");
            (Instant::now(), l)
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "two leaders at once");
    let lost = tokio::time::timeout(Duration::from_millis(100), first.lost()).await;
    assert!(lost.is_err(), "the leader lost its lease while alive");
    let released = Instant::now();
    drop(first);
    let (took_over, _second) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the next controller leads within the TTL")
        .expect("join");
    eprintln!("takeover after release: {:?}", took_over - released);
}
