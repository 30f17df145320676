//! Component configuration: a TOML file per component, and defaults that work
//! on a single host with no file at all. Every key of the file can also be
//! given in the environment and as a flag (the flag wins over the variable,
//! which wins over the file): see [`layers`](load_layered).

pub mod commented_toml;
mod connections;
mod controller;
mod error;
mod file;
mod keys;
mod layers;
mod node;
mod security;
mod shared_pools;
mod telemetry;

pub use connections::ConnectionConfig;
pub use controller::{
    ControllerConfig, EtcdConfig, PoolOverride, PoolSettings, StaticNode, StoreKind,
};
pub use error::ConfigError;
pub use file::{load, to_commented_toml, ConfigFile};
pub use keys::keys;
pub use layers::{env_name, from_env, load_layered, Setting, Source};
pub use node::NodeConfig;
pub use security::{
    GrantConfig, Role, SecurityConfig, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST,
    DEFAULT_MAX_STREAMS, DEFAULT_MAX_WATCHERS, DEFAULT_SOCKET_MODE,
};
pub use telemetry::{LogFormat, TelemetryConfig};
