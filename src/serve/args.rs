//! The flags of `volmig node` and `volmig controller`: the config file, the
//! printing of it, `--set`, and the named flags of some keys (with their
//! environment variables), which [`super::layers`] turns into settings.

// clap turns doc comments into help text, so the structs and their flattened
// groups go without: this module's doc says what they are.
#![allow(missing_docs)]

use std::path::PathBuf;

use crate::commented_toml::Style;
use crate::config::{self, ConfigFile, LogFormat};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// TOML config file.
    #[arg(long, env = "VOLMIG_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub print: PrintArgs,
    #[command(flatten)]
    pub layer: SetArgs,
    /// Node id (default: host name).
    #[arg(long, env = "VOLMIG_NODE_ID")]
    pub node_id: Option<String>,
    /// unix:///path or host:port.
    #[arg(long, env = "VOLMIG_NODE_LISTEN")]
    pub listen: Option<String>,
    /// libvirt URI.
    #[arg(long, env = "VOLMIG_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// Directory for the journal.
    #[arg(long, env = "VOLMIG_NODE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Most migrations at once.
    #[arg(long, env = "VOLMIG_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Milliseconds to stay SYNCHRONIZED before pivoting.
    #[arg(long, env = "VOLMIG_SYNCHRONIZED_HOLD_MS")]
    pub synchronized_hold_ms: Option<u64>,
    /// Controller to register with (heartbeats), e.g. https://10.0.0.1:7450;
    /// several sharing one etcd separated by commas: the node registers with each.
    #[arg(long = "controller", env = "VOLMIG_REGISTER_WITH")]
    pub register_with: Option<String>,
    /// Endpoint the controller should use to reach this node (default: --listen).
    #[arg(long, env = "VOLMIG_NODE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory of ceph.client.<user>.keyring files (for private libvirt secrets).
    #[arg(long, env = "VOLMIG_CEPH_KEYRING_DIR")]
    pub ceph_keyring_dir: Option<PathBuf>,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// TOML config file.
    #[arg(long, env = "VOLMIG_CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub print: PrintArgs,
    #[command(flatten)]
    pub layer: SetArgs,
    /// host:port or unix:///path.
    #[arg(long, env = "VOLMIG_CONTROLLER_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the migration history.
    #[arg(long, env = "VOLMIG_CONTROLLER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

#[derive(clap::Args)]
pub struct SetArgs {
    /// Set any key of the file, dotted for a table's (`telemetry.otlp_endpoint=…`);
    /// VALUE is TOML (`5`, `true`, `["a"]`), else taken as text. Repeatable;
    /// wins over the environment (`VOLMIG_NODE__KEY`, `VOLMIG_CONTROLLER__KEY`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(clap::Args)]
pub struct PrintArgs {
    /// Print the effective configuration (file, environment and flags) as
    /// commented TOML and exit.
    #[arg(long, conflicts_with = "example_config")]
    pub print_config: bool,
    /// Print every key commented out at its default (the packaged
    /// /etc/volmig file) and exit.
    #[arg(long)]
    pub example_config: bool,
}

impl PrintArgs {
    /// Prints the configuration when asked to; whether it did.
    pub fn print<T: ConfigFile>(&self, cfg: &T) -> anyhow::Result<bool> {
        let text = if self.print_config {
            config::to_commented_toml(cfg, Style::Active)?
        } else if self.example_config {
            config::to_commented_toml(&T::default(), Style::CommentedOut)?
        } else {
            return Ok(false);
        };
        print!("{text}");
        Ok(true)
    }
}

#[derive(clap::Args)]
pub struct ObservabilityArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9450; off by default).
    #[arg(long, env = "VOLMIG_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, env = "VOLMIG_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
pub struct SecurityArgs {
    /// CA certificate (PEM) that clients' and peers' certificates must chain to.
    #[arg(long = "ca", env = "VOLMIG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This service's certificate chain (PEM); re-read when the file changes.
    #[arg(long = "cert", env = "VOLMIG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This service's private key (PEM); re-read when the file changes.
    #[arg(long = "key", env = "VOLMIG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext TCP on a non-loopback address (insecure; logged at every start).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// File holding the bearer token presented to the services this one calls.
    #[arg(long, env = "VOLMIG_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}
