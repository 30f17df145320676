//! Changing the copy bandwidth of a running migration.

use std::sync::Arc;

use super::{collect, engine, request};
use crate::fake::{FakeHypervisor, HoldGuard};
use crate::model::Phase;
use crate::Error;

#[tokio::test]
async fn set_bandwidth_keeps_the_request_so_a_retry_attaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1 << 10;
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("retry-me")).await.expect("start");
    let id = sub.migration_id().to_string();
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying && !hv.lock().jobs.is_empty() {
            break;
        }
    }
    // The copy runs: the change is made to it in place.
    engine
        .set_bandwidth(&id, 8 << 20)
        .await
        .expect("set bandwidth");
    assert_eq!(
        hv.lock().jobs.get("vda").map(|j| j.1.bandwidth),
        Some(8 << 20)
    );
    assert_eq!(hv.lock().speeds, vec![("vda".to_string(), 8 << 20)]);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 8 << 20);
    assert!(matches!(
        engine.set_bandwidth(&id, 5).await,
        Err(Error::InvalidArgument { .. })
    ));
    let again = engine.migrate(request("retry-me")).await.expect("attach");
    assert_eq!(again.migration_id(), id);
    engine.cancel(&id).await.expect("cancel");
    assert_eq!(
        collect(again).await.last().map(|e| e.phase),
        Some(Phase::Cancelled)
    );
}

/// Reads events until COPYING is announced, then until `held` is parked.
async fn until_copying_is_announced(sub: &mut crate::Subscription, held: &HoldGuard) {
    while let Some(e) = sub.next().await {
        if e.phase == Phase::Copying {
            break;
        }
    }
    held.reached().await;
}

#[tokio::test]
async fn set_bandwidth_on_the_copying_event_is_issued_with_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    // The last call before the copy is issued.
    let held = hv.hold("rbd_object_size");
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    until_copying_is_announced(&mut sub, &held).await;
    assert!(hv.lock().copies.is_empty(), "the copy is held back");
    engine
        .set_bandwidth(&id, 16 << 20)
        .await
        .expect("accepted from the COPYING event on");
    drop(held);
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
    let st = hv.lock();
    let issued: Vec<u64> = st.copies.iter().map(|c| c.1.bandwidth).collect();
    assert_eq!(
        issued,
        vec![16 << 20],
        "the copy is issued at the new bandwidth"
    );
    assert!(st.speeds.is_empty(), "{:?}", st.speeds);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 16 << 20);
}

#[tokio::test]
async fn set_bandwidth_while_the_copy_is_issued_reaches_the_running_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    // The copy is being issued with the bandwidth read before the change.
    let held = hv.hold("block_copy");
    let engine = engine(hv.clone(), dir.path()).await;
    let mut sub = engine.migrate(request("")).await.expect("start");
    let id = sub.migration_id().to_string();
    until_copying_is_announced(&mut sub, &held).await;
    engine
        .set_bandwidth(&id, 16 << 20)
        .await
        .expect("accepted from the COPYING event on");
    drop(held);
    assert_eq!(
        collect(sub).await.last().map(|e| e.phase),
        Some(Phase::Completed)
    );
    let st = hv.lock();
    let issued: Vec<u64> = st.copies.iter().map(|c| c.1.bandwidth).collect();
    assert_eq!(issued, vec![0]);
    assert_eq!(st.speeds, vec![("vda".to_string(), 16 << 20)]);
    assert_eq!(engine.get(&id).expect("record").bandwidth, 16 << 20);
}
