//! What every [`Store`] must do, as one suite that the file store's unit
//! tests and the etcd tests (`tests/etcd_store.rs`) run against their store.
//! Panics on the first difference. Keys live under a prefix of their own so
//! that a shared store can run it. It waits on tokio's clock, so a store whose
//! leases do too (the file store) runs it with paused time.

use std::time::Duration;

use super::{update, Compare, Store, Write};
use crate::maintenance::{self, PoolMaintenance};

/// Runs the suite against `store`.
pub async fn run(store: &dyn Store) {
    let p = format!("suite-{}/", uuid::Uuid::new_v4().simple());
    let k = |name: &str| format!("{p}{name}");

    // Reads, writes, listing by prefix in key order.
    assert_eq!(store.get(&k("a")).await.expect("get"), None);
    store.put(&k("b"), b"2".to_vec()).await.expect("put");
    store.put(&k("a"), b"1".to_vec()).await.expect("put");
    store
        .put(&format!("{p}x"), b"other".to_vec())
        .await
        .expect("put");
    let listed: Vec<(String, Vec<u8>)> = store
        .list(&k("a"))
        .await
        .expect("list")
        .into_iter()
        .map(|(key, v)| (key, v.value))
        .collect();
    assert_eq!(listed, [(k("a"), b"1".to_vec())]);
    let all = store.list(&p).await.expect("list");
    assert_eq!(
        all.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(),
        [k("a"), k("b"), k("x")]
    );

    // Transactions compare revisions: a stale revision loses, nothing is written.
    let a = store.get(&k("a")).await.expect("get").expect("a");
    assert!(store
        .commit(
            vec![Compare::At(k("a"), a.revision)],
            vec![Write::Put(k("a"), b"1b".to_vec()), Write::Delete(k("b"))],
        )
        .await
        .expect("commit"));
    let a2 = store.get(&k("a")).await.expect("get").expect("a");
    assert!(a2.revision > a.revision);
    assert_eq!(store.get(&k("b")).await.expect("get"), None);
    assert!(!store
        .commit(
            vec![Compare::At(k("a"), a.revision)],
            vec![Write::Put(k("c"), b"lost".to_vec())],
        )
        .await
        .expect("commit"));
    assert!(!store
        .commit(
            vec![Compare::Absent(k("a"))],
            vec![Write::Put(k("c"), b"lost".to_vec())],
        )
        .await
        .expect("commit"));
    assert_eq!(store.get(&k("c")).await.expect("get"), None);
    assert!(store
        .commit(
            vec![Compare::Absent(k("c"))],
            vec![Write::Put(k("c"), b"3".to_vec())],
        )
        .await
        .expect("commit"));

    // Leased keys lapse unless written again.
    store
        .put_leased(&k("lease"), b"up".to_vec(), Duration::from_secs(2))
        .await
        .expect("leased");
    assert!(store.get(&k("lease")).await.expect("get").is_some());
    let lapsed = async {
        loop {
            if store.get(&k("lease")).await.expect("get").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(8), lapsed)
        .await
        .expect("a leased key lapses after its ttl");

    // Concurrent compare-and-swap updates: none is lost.
    let counter = k("counter");
    let bump = || async {
        update::<()>(store, &counter, |v| {
            let n = v
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            Ok(Some((n + 1).to_string().into_bytes()))
        })
        .await
        .expect("store")
        .expect("not refused");
    };
    let tasks: Vec<_> = (0..8).map(|_| bump()).collect();
    futures_join(tasks).await;
    assert_eq!(
        store.get(&counter).await.expect("get").map(|v| v.value),
        Some(b"8".to_vec())
    );

    // Relaxed listings may lag a moment, but follow puts and deletes.
    let relaxed = k("relaxed/");
    store
        .put(&k("relaxed/1"), b"1".to_vec())
        .await
        .expect("put");
    assert_eq!(relaxed_keys(store, &relaxed).await, [k("relaxed/1")]);
    store
        .put(&k("relaxed/2"), b"2".to_vec())
        .await
        .expect("put");
    store.delete(&k("relaxed/1")).await.expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relaxed_keys(store, &relaxed).await != [k("relaxed/2")] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a relaxed listing still shows {:?} 5 s after the writes",
            relaxed_keys(store, &relaxed).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (key, _) in store.list(&p).await.expect("list") {
        store.delete(&key).await.expect("delete");
    }
    assert!(store.list(&p).await.expect("list").is_empty());

    maintenance_flags(store).await;
}

/// Pool maintenance flags (`crate::maintenance`) read back as written, by
/// storage id, on and then off.
pub async fn maintenance_flags(store: &dyn Store) {
    let id = format!("dir:/suite/{}", uuid::Uuid::new_v4().simple());
    let flag = PoolMaintenance::sample;
    let read = || async { maintenance::all(store).await.expect("list").remove(&id) };
    assert_eq!(read().await, None);
    maintenance::set(store, &id, &flag(true))
        .await
        .expect("set");
    assert_eq!(read().await, Some(flag(true)));
    maintenance::set(store, &id, &flag(false))
        .await
        .expect("set");
    assert_eq!(read().await, Some(flag(false)));
    store.delete(&maintenance::key(&id)).await.expect("delete");
}

async fn relaxed_keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store
        .list_relaxed(prefix)
        .await
        .expect("list_relaxed")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Runs the futures concurrently on this task.
async fn futures_join<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
