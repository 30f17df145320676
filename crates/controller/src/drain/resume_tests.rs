//! A drain survives its leader: a new controller over the same store
//! resumes it, re-attaching to what runs.

use std::sync::Arc;
use std::time::Duration;

use volmig_types::phase::Phase;

use super::exec_tests::{controller, setup, spec, starts, until};
use super::job_store;
use super::model::ItemState;
use super::view::DrainView;
use crate::store::file::FileStore;
use crate::store::{Compare, Leadership, Store, StoreError, Versioned, Write};

/// A file store whose leadership the test can take away, as if its
/// controller died: it never leads again.
struct Deposable {
    inner: Arc<FileStore>,
    lost: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl Store for Deposable {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, when: Vec<Compare>, then: Vec<Write>) -> Result<bool, StoreError> {
        self.inner.commit(when, then).await
    }
    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_leased(key, value, ttl).await
    }
    async fn lead(&self) -> Result<Leadership, StoreError> {
        if *self.lost.borrow() {
            std::future::pending::<()>().await;
        }
        Ok(Leadership::new(self.lost.subscribe()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_resumes_a_drain_without_starting_an_item_twice() {
    let (_dir, store, nodes) = setup(true);
    let first = Arc::new(Deposable {
        inner: store.clone(),
        lost: tokio::sync::watch::channel(false).0,
    });
    let a = controller(first.clone(), nodes.clone()).await;
    let id = a.start_drain(None, spec()).await.expect("start").job.id;
    let recorded = |v: &DrainView| {
        v.job
            .items
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    ItemState::Running {
                        migration_id: Some(_),
                        ..
                    }
                )
            })
            .count()
            == 2
    };
    until(&a, &id, recorded).await;
    // The first controller dies; vm1's migration id was not recorded yet
    // (it died between asking the node and writing the answer).
    first.lost.send_replace(true);
    tokio::time::sleep(Duration::from_millis(1)).await;
    job_store::update(store.as_ref(), &id, |job| {
        if let Some(ItemState::Running { migration_id, .. }) = job.items.get_mut(0) {
            *migration_id = None;
        }
        Ok(())
    })
    .await
    .expect("forget vm1's migration id");

    let b = controller(store.clone(), nodes.clone()).await;
    let attached = until(&b, &id, |v| {
        v.running.len() == 2 && v.running.iter().all(|r| !r.migration_id.is_empty())
    })
    .await;
    let mut ids: Vec<&str> = attached
        .running
        .iter()
        .map(|r| r.migration_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1-m1", "n2-m2"], "the same migrations, re-attached");
    assert_eq!(nodes.started().len(), 2, "nothing started again");
    nodes.finish("vm1", Phase::Completed);
    nodes.finish("vm3", Phase::Completed);
    until(&b, &id, |v| v.counts.running == 1 && v.counts.done == 2).await;
    nodes.finish("vm2", Phase::Completed);
    let done = until(&b, &id, |v| v.job.is_finished()).await;
    assert_eq!(done.counts.done, 3);
    for vm in ["vm1", "vm2", "vm3"] {
        assert_eq!(starts(&nodes, vm), 1, "{vm} started once");
    }
}
