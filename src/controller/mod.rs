//! The controller: node registry, pool inventory, placement and migration history.

pub mod group_placement;
pub mod history;
pub mod inventory;
pub mod placement;
pub mod registry;

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
    let service = ControllerService::with_credentials(config, history, credentials);
    server::serve_controller(service, listen, exposure, shutdown).await?;
    Ok(())
}
