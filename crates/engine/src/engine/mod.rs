//! The node's migration engine: accepts requests, owns one task per disk
//! migration, and lets any number of watchers follow each one.
//!
//! Invariants: at most one active migration per (domain UUID, disk target); at
//! most `max_concurrent` active migrations; every phase change is journaled
//! before it is published; every subscription ends with exactly one terminal event.

mod admission;
mod config;
mod control;
pub(crate) mod group;
mod host;
mod inner;
pub(crate) mod job;
mod job_handle;
mod migrate;
mod migrate_group;
mod pool_volumes;
mod registry;
mod start;
mod subscription;
mod views;

use std::sync::Arc;

use migrate::{new_migration_id, new_record};

pub use config::{EngineConfig, Retention};
pub(crate) use inner::Inner;
pub(crate) use job_handle::{Command, Job, Publisher, TaskEnd};
pub use migrate_group::GroupView;
pub use pool_volumes::{PoolVolume, VolumeUse, MAX_POOL_VOLUMES};
use registry::Registry;
use subscription::Source;
pub use subscription::Subscription;
pub use views::{DiskView, DomainDisks, LayerView, ListFilter};

use crate::engine::group::Group;
use crate::error::Error;
use crate::hypervisor::HvError;

/// The migration engine of one node.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn unavailable_or(what: &'static str) -> impl Fn(HvError) -> Error {
    move |e| match e {
        HvError::Unreachable { .. } => Error::Unavailable(e.to_string()),
        other => Error::hv(what)(other),
    }
}

/// Runs blocking work off the async runtime in the caller's span (a blocking
/// thread has none of its own), so its spans and logs stay in the caller's trace.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f)).await
}
