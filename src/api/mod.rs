//! The gRPC edge: proto conversions, the single error-to-status map, the
//! service shims over the engine, and the server/client transports.

pub mod audit;
pub mod auth;
pub mod client;
pub mod controller_service;
pub mod convert;
pub mod file_stamp;
pub mod fleet_service;
pub mod identity_service;
pub mod listener;
pub mod node_client;
pub mod node_service;
pub mod peer_check;
pub mod secret_files;
pub mod server;
pub mod status;
pub mod tls;
pub mod unix_socket;
