//! Wiring of the `volmig controller` component: config → store → controller
//! → server.

use std::sync::Arc;

use crate::api::auth::reload;
use crate::api::controller_service::ControllerService;
use crate::api::server::{self, Exposure};
use crate::config::{ControllerConfig, StoreKind};
#[cfg(feature = "etcd")]
use crate::controller::store::etcd::EtcdStore;
use crate::controller::store::file::FileStore;
use crate::controller::store::Store;

/// Runs a controller until `shutdown` resolves; its identities and tokens
/// are re-read from `config_file` (when there is one) as it changes or on
/// SIGHUP.
pub async fn run(
    config: ControllerConfig,
    config_file: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (listen, exposure, credentials) =
        Exposure::for_component(&config.listen, &config.security())?;
    crate::api::node_client::check_token_reach(&config.nodes, &credentials)?;
    if let Some(path) = config_file {
        let grants: reload::Grants<ControllerConfig> = |c| (&c.identities, &c.tokens);
        tokio::spawn(reload::watch(path, exposure.policy.clone(), grants));
    }
    let store = open_store(&config).await?;
    crate::api::controller_service::legacy::import(&config, store.clone()).await?;
    tracing::info!(state_dir = %config.state_dir.display(), store = ?config.store, nodes = config.nodes.len(), "controller starting");
    let service = if config.metrics_listen.is_empty() {
        ControllerService::start(config, store, credentials, Arc::new(())).await?
    } else {
        let listen = config.metrics_listen.clone();
        let metrics = crate::metrics::ControllerMetrics::new();
        let service = ControllerService::start(config, store, credentials, metrics.clone()).await?;
        let nodes = service.clone();
        metrics.read_nodes_from(move || nodes.node_health());
        crate::metrics::serve(&listen, metrics.registry()).await?;
        service
    };
    server::serve_controller(service, listen, exposure, shutdown).await?;
    Ok(())
}

/// The configured store: the state dir's file, or etcd.
pub async fn open_store(config: &ControllerConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.store {
        StoreKind::File => Arc::new(FileStore::open(&config.state_dir)?),
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => Arc::new(EtcdStore::connect(&config.etcd).await?),
        #[cfg(not(feature = "etcd"))]
        StoreKind::Etcd => anyhow::bail!(
            "store = \"etcd\" but this volmig was built without the etcd store (cargo feature `etcd`): use store = \"file\" or install a build that has it"
        ),
    })
}
