//! Wiring of the `volmig node` component: config → libvirt host → engine → server.

use std::sync::Arc;

use crate::api::auth::reload;
use crate::api::client::{self, Credentials, Peer};
use crate::api::server::{self, Exposure};
use crate::config::NodeConfig;
use crate::libvirt::LibvirtHost;
use crate::metrics::{self, NodeMetrics};
use crate::migration::journal::Journal;
use crate::migration::{Engine, EngineConfig, Retention};

/// Runs a node until `shutdown` resolves; its identities and tokens are
/// re-read from `config_file` (when there is one) as it changes or on SIGHUP.
pub async fn run(
    config: NodeConfig,
    config_file: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (listen, exposure, credentials) =
        Exposure::for_component(&config.listen, &config.security())?;
    let controllers = config.controller_endpoints();
    if credentials.token().is_some() {
        if let Some(plain) = controllers.iter().find(|c| !client::encrypted_or_local(c)) {
            anyhow::bail!(
                "controller {plain:?} is plaintext TCP, and the node sends the token of token_file only over https:// or unix://: \
                 use the controller's https:// address (with tls_ca, tls_cert, tls_key) or its unix socket, or remove token_file"
            );
        }
    }
    if let Some(path) = config_file {
        let grants: reload::Grants<NodeConfig> = |c| (&c.identities, &c.tokens);
        tokio::spawn(reload::watch(path, exposure.policy.clone(), grants));
    }
    let node_id = if config.node_id.is_empty() {
        hostname()
    } else {
        config.node_id.clone()
    };
    let mut journal = Journal::open(&config.state_dir).map_err(anyhow::Error::msg)?;
    let mut host = LibvirtHost::new(config.libvirt_uri.clone())
        .with_ceph_keyring_dir(config.ceph_keyring_dir.clone())
        .with_shared_pools(config.shared_pools.clone());
    let observer: Arc<dyn crate::migration::Observer> = if config.metrics_listen.is_empty() {
        Arc::new(())
    } else {
        let metrics = NodeMetrics::new();
        metrics::serve(&config.metrics_listen, metrics.registry()).await?;
        host = host.with_call_observer(metrics.clone());
        journal = journal.observed(metrics.clone());
        metrics
    };
    let engine = Engine::start_observed(
        Arc::new(host),
        journal,
        EngineConfig {
            node_id: node_id.clone(),
            max_concurrent: config.max_concurrent_migrations.max(1),
            synchronized_hold: std::time::Duration::from_millis(config.synchronized_hold_ms),
            libvirt_grace: std::time::Duration::from_secs(config.libvirt_grace_seconds),
            max_watchers: config.max_watchers_per_migration.max(1),
            retention: Retention {
                max_age: std::time::Duration::from_secs(
                    config.journal_retention_days.saturating_mul(24 * 3600),
                ),
                max_records: config.journal_retention_records,
            },
            ..EngineConfig::default()
        },
        observer,
        Arc::new(OtelTraces),
    )
    .await?;
    tracing::info!(%node_id, uri = %config.libvirt_uri, state_dir = %config.state_dir.display(), "node starting");
    if !config.shared_pools.is_empty() {
        tokio::spawn(warn_unknown_shared_pools(
            engine.clone(),
            config.shared_pools.keys().cloned().collect(),
        ));
    }
    let advertise = if config.advertise.is_empty() {
        config.listen.clone()
    } else {
        config.advertise.clone()
    };
    // One loop per controller: each waits on its own controller only, so a
    // controller that is down or hangs delays no heartbeat to the others.
    for controller in controllers {
        tokio::spawn(heartbeat(
            engine.clone(),
            controller,
            advertise.clone(),
            credentials.clone(),
        ));
    }
    server::serve_node(engine, listen, exposure, shutdown).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Warns, once, of `[shared_pools]` entries naming no pool of this host: a
/// misspelt name would otherwise leave a shared pool treated as local, whose
/// sources are deleted without asking the other hosts.
async fn warn_unknown_shared_pools(engine: Engine, named: Vec<String>) {
    match engine.pools().await {
        Ok(pools) => {
            for name in named
                .iter()
                .filter(|n| !pools.iter().any(|p| &p.name == *n))
            {
                tracing::warn!(pool = %name.escape_debug(), "shared_pools names a pool this host does not have; the setting does nothing until such a pool is defined");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the pools to check the names in shared_pools");
        }
    }
}

/// How long one registration may take.
const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Registers with `controller` and repeats it as a heartbeat, for as long as
/// the node runs; a controller that is down is retried quietly. The
/// registration lands in the controllers' shared store, so every controller
/// sharing it knows the node while any one of them receives the heartbeats.
async fn heartbeat(
    engine: Engine,
    controller: String,
    advertise: String,
    credentials: Credentials,
) {
    use crate::api::convert;
    use crate::proto::controller_client::ControllerClient;
    let mut interval = std::time::Duration::from_secs(5);
    let mut warned = false;
    loop {
        let sent = async {
            let host = engine.host_info().await.map_err(|e| e.to_string())?;
            let info =
                convert::node_info_to_proto(engine.node_id(), &host, engine.max_concurrent());
            let channel = client::connect_with(Peer::Controller, &controller, &credentials)
                .await
                .map_err(|e| e.to_string())?;
            let mut registrar = ControllerClient::new(channel);
            let call = registrar.register_node(crate::proto::RegisterNodeRequest {
                node_id: engine.node_id().to_string(),
                endpoint: advertise.clone(),
                info: Some(info),
            });
            // A controller that accepts the connection but never answers
            // must not stop the heartbeats.
            let reply = tokio::time::timeout(REGISTER_TIMEOUT, call)
                .await
                .map_err(|_| "the controller did not answer in time".to_string())?
                .map_err(|s| s.message().to_string())?;
            Ok::<u32, String>(reply.into_inner().heartbeat_interval_seconds)
        };
        match sent.await {
            Ok(secs) => {
                warned = false;
                interval = std::time::Duration::from_secs(u64::from(secs.max(1)));
            }
            Err(e) if !warned => {
                tracing::warn!(%controller, error = %e.escape_debug(), "cannot register with the controller; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
    }
}

/// The engine's trace port, served by OpenTelemetry.
struct OtelTraces;

impl volmig_engine::TraceContext for OtelTraces {
    fn current_trace_id(&self) -> Option<String> {
        crate::telemetry::export::current_trace_id()
    }
    fn continue_trace(&self, span: &tracing::Span, trace_id: &str) {
        crate::telemetry::export::continue_trace(span, trace_id)
    }
}
