//! Component configuration: a TOML file per component, and defaults that work
//! on a single host with no file at all. Some keys can also be given as a flag
//! or an environment variable (the flag wins over the variable, which wins
//! over the file); the README's configuration table names them key by key,
//! and every other key is read from the file only.

pub mod commented_toml;
mod connections;
mod controller;
mod file;
mod node;
mod security;
mod telemetry;

pub use connections::ConnectionConfig;
pub use controller::{
    ControllerConfig, EtcdConfig, PoolOverride, PoolSettings, StaticNode, StoreKind,
};
pub use file::{load, to_commented_toml, ConfigError, ConfigFile};
pub use node::NodeConfig;
pub use security::{
    GrantConfig, Role, SecurityConfig, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST,
    DEFAULT_MAX_STREAMS, DEFAULT_MAX_WATCHERS, DEFAULT_SOCKET_MODE,
};
pub use telemetry::{LogFormat, TelemetryConfig};
