//! Wiring of the `volmig node` component: config → libvirt host → engine → server.

use std::sync::Arc;

use crate::api::server::{self, Listen};
use crate::config::NodeConfig;
use crate::libvirt::LibvirtHost;
use crate::migration::journal::Journal;
use crate::migration::{Engine, EngineConfig};

/// Runs a node until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listen = Listen::parse(&config.listen).map_err(anyhow::Error::msg)?;
    let node_id = if config.node_id.is_empty() {
        hostname()
    } else {
        config.node_id.clone()
    };
    let journal = Journal::open(&config.state_dir).map_err(anyhow::Error::msg)?;
    let host = Arc::new(LibvirtHost::new(config.libvirt_uri.clone()));
    let engine = Engine::start(
        host,
        journal,
        EngineConfig {
            node_id: node_id.clone(),
            max_concurrent: config.max_concurrent_migrations.max(1),
            synchronized_hold: std::time::Duration::from_millis(config.synchronized_hold_ms),
            ..EngineConfig::default()
        },
    )
    .await?;
    tracing::info!(%node_id, uri = %config.libvirt_uri, state_dir = %config.state_dir.display(), "node starting");
    server::serve_node(engine, listen, shutdown).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}
