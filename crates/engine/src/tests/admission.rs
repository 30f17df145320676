//! Which requests start a migration, attach to one, or are refused.

use std::sync::Arc;

use super::{collect, engine, request};
use crate::fake::FakeHypervisor;
use crate::model::Phase;
use crate::Error;

#[tokio::test]
async fn same_request_id_attaches_and_a_second_disk_migration_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = Arc::new(FakeHypervisor::new());
    hv.lock().step = 1;
    let engine = engine(hv.clone(), dir.path()).await;
    let first = engine.migrate(request("same")).await.expect("start");
    let again = engine.migrate(request("same")).await.expect("attach");
    assert_eq!(first.migration_id(), again.migration_id());
    let mut changed = request("same");
    changed.destination_pool = "a".into();
    assert!(matches!(
        engine.migrate(changed).await,
        Err(Error::RequestIdReused(_))
    ));
    assert!(matches!(
        engine.migrate(request("other")).await,
        Err(Error::AlreadyMigrating { .. })
    ));
    engine.cancel(first.migration_id()).await.expect("cancel");
    assert_eq!(
        collect(first).await.last().map(|e| e.phase),
        Some(Phase::Cancelled)
    );
}
