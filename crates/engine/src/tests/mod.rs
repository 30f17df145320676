//! State-machine tests of the engine against the in-memory hypervisor, by
//! topic, and the helpers every engine test shares.

mod admission;
mod bandwidth;
mod destination;
mod lifecycle;
mod offline;
mod pool_volumes;

use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeHypervisor;
use super::journal::Journal;
use super::model::{DiskChoice, DiskSelection, GroupRequest, MigrationRequest, Options};
use super::{Engine, EngineConfig};
use crate::hypervisor::DiskSource;

/// Fast polls and a short libvirt grace, for tests.
pub(super) fn config() -> EngineConfig {
    EngineConfig {
        node_id: "n1".into(),
        max_concurrent: 2,
        poll_interval: Duration::from_millis(5),
        progress_interval: Duration::from_millis(1),
        libvirt_grace: Duration::from_millis(100),
        synchronized_hold: Duration::ZERO,
        max_watchers: 64,
        retention: Default::default(),
    }
}

pub(super) async fn engine(hv: Arc<FakeHypervisor>, dir: &std::path::Path) -> Engine {
    Engine::start(hv, Journal::open(dir).expect("journal"), config())
        .await
        .expect("engine")
}

pub(super) fn request(id: &str) -> MigrationRequest {
    MigrationRequest {
        request_id: id.into(),
        domain: "g".into(),
        disk: "vda".into(),
        destination_pool: "b".into(),
        destination_volume: None,
        destination_format: None,
        options: Options::default(),
    }
}

pub(super) async fn collect(mut sub: super::Subscription) -> Vec<super::model::Event> {
    let mut events = Vec::new();
    while let Some(e) = sub.next().await {
        events.push(e);
    }
    events
}

pub(super) fn source() -> DiskSource {
    DiskSource::File {
        path: "/p/a/root.qcow2".into(),
    }
}

/// `disks` of `g` to pool `b`, in one request.
pub(crate) fn group_of(id: &str, disks: &[&str]) -> GroupRequest {
    GroupRequest {
        request_id: id.into(),
        domain: "g".into(),
        disks: DiskSelection::Listed(
            disks
                .iter()
                .map(|d| DiskChoice {
                    disk: (*d).into(),
                    destination_pool: None,
                    destination_volume: None,
                    destination_format: None,
                    source_users_elsewhere: Vec::new(),
                })
                .collect(),
        ),
        destination_pool: "b".into(),
        destination_format: None,
        options: Options::default(),
        max_parallel_copies: 0,
    }
}
