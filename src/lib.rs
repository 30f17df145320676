//! volmig: live migration of a running KVM guest's disk between storage pools.
//!
//! This package is the gRPC edge and the binary: [`proto`] and [`api`] (the
//! wire types, their conversions, the one error→Status map, the services and
//! transports), the operator [`cli`], the Prometheus [`metrics`], and the
//! wiring of `volmig node` and `volmig controller` ([`serve`]). What must not
//! know about gRPC lives in the crates under `crates/`, re-exported here under
//! the names the code uses:
//! [`migration`] (the engine and its [`hypervisor`] port), [`libvirt`] (the
//! only code that talks to libvirt; feature `node`), [`controller`] (placement,
//! registry, history; etcd behind feature `etcd`), [`config`] and
//! [`telemetry`]. See docs/architecture.md.

pub mod api;
pub mod cli;
pub mod metrics;
pub mod serve;

pub use volmig_config as config;
pub use volmig_config::commented_toml;
pub use volmig_controller as controller;
pub use volmig_engine as migration;
pub use volmig_engine::hypervisor;
#[cfg(feature = "node")]
pub use volmig_libvirt as libvirt;
pub use volmig_telemetry as telemetry;
pub use volmig_types::units;

pub mod proto {
    //! Generated gRPC types for `volmig.v1`.
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    tonic::include_proto!("volmig.v1");
    /// Encoded descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("volmig_descriptor");
}
