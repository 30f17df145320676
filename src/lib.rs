//! volmig: live migration of a running KVM guest's disk between storage pools.
//!
//! Layout: [`proto`] and [`api`] are the gRPC edge; [`migration`] is the engine
//! (no tonic, no libvirt types); [`hypervisor`] is what the engine needs from a
//! host; [`libvirt`] is the only module that talks to libvirt.

pub mod api;
pub mod cli;
pub mod commented_toml;
pub mod config;
pub mod controller;
pub mod controller_main;
pub mod hypervisor;
pub mod libvirt;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod telemetry;
pub mod tracing_export;
pub mod units;

pub mod proto {
    //! Generated gRPC types for `volmig.v1`.
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    tonic::include_proto!("volmig.v1");
    /// Encoded descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("volmig_descriptor");
}
