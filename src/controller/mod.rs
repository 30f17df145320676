//! The controller: node registry, pool inventory, placement and migration history.

pub mod group_placement;
pub mod history;
pub mod inventory;
pub mod placement;
pub mod registry;

/// Told of the controller's decisions and relays, for metrics, without the
/// controller depending on a metrics library (see `crate::metrics`). Called
/// inline on request paths: must be cheap.
pub trait Observer: Send + Sync + 'static {
    /// A placement rejected a pool for a disk by `rule`.
    fn placement_rejected(&self, rule: placement::Rule);
    /// A node's migration event reached the controller `lag` after the node
    /// stamped it (0 when the clocks disagree the other way).
    fn event_relayed(&self, lag: std::time::Duration);
}

/// Observes nothing.
impl Observer for () {
    fn placement_rejected(&self, _: placement::Rule) {}
    fn event_relayed(&self, _: std::time::Duration) {}
}

use crate::api::client::Credentials;
use crate::api::controller_service::ControllerService;
use crate::api::server::{self, Exposure, Listen};
use crate::config::ControllerConfig;

/// Runs a controller until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listen = Listen::parse(&config.listen).map_err(anyhow::Error::msg)?;
    let security = config.security();
    let exposure = Exposure::from_config(&security)?;
    let credentials = Credentials::load(exposure.tls.clone(), security.token_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    let history = history::History::open_with(
        &config.state_dir,
        history::Retention {
            max_age: std::time::Duration::from_secs(
                config.history_retention_days.saturating_mul(24 * 3600),
            ),
            max_records: config.history_retention_records,
        },
    )?;
    tracing::info!(state_dir = %config.state_dir.display(), nodes = config.nodes.len(), "controller starting");
    let service = if config.metrics_listen.is_empty() {
        ControllerService::with_credentials(config, history, credentials)
    } else {
        let listen = config.metrics_listen.clone();
        let metrics = crate::metrics::ControllerMetrics::new();
        let service = ControllerService::observed(config, history, credentials, metrics.clone());
        let nodes = service.clone();
        metrics.read_nodes_from(move || nodes.node_health());
        crate::metrics::serve(&listen, metrics.registry()).await?;
        service
    };
    server::serve_controller(service, listen, exposure, shutdown).await?;
    Ok(())
}
