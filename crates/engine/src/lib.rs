//! The migration engine: validation, the per-disk job state machine, progress,
//! the journal and crash recovery. Free of gRPC, libvirt and OpenTelemetry: it
//! talks to the host through the [`hypervisor::Hypervisor`] port, reports to an
//! [`Observer`] and carries traces through a [`TraceContext`].

mod chain;
mod convergence;
mod engine;
pub mod error;
pub mod hypervisor;
pub mod journal;
pub mod model;
pub mod observer;
mod offline;
mod plan;
mod tuning;

pub use engine::{
    DiskView, DomainDisks, Engine, EngineConfig, GroupView, LayerView, ListFilter, PoolVolume,
    Retention, Subscription, VolumeUse, MAX_POOL_VOLUMES,
};
pub use error::Error;
pub use observer::{Observer, TraceContext};
pub use volmig_types::validate;

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod fault_injection;
#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod space_tests;
#[cfg(test)]
mod tests;
