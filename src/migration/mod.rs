//! The migration engine: validation, the per-disk job state machine, progress,
//! the journal and crash recovery. Free of gRPC and libvirt types: it talks to
//! the host through [`crate::hypervisor::Hypervisor`].

mod chain;
mod convergence;
mod engine;
pub mod error;
mod group;
mod job;
pub mod journal;
pub mod model;
pub mod observer;
mod plan;
mod recovery;
mod tuning;
pub mod validate;

pub use engine::{
    DiskView, DomainDisks, Engine, EngineConfig, GroupView, LayerView, ListFilter, Retention,
    Subscription,
};
pub use error::Error;
pub use observer::Observer;

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
