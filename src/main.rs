//! The `volmig` binary: wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::Instrument;

use volmig::config::{self, LogFormat};
use volmig::serve::args::{ControllerArgs, NodeArgs};
use volmig::serve::layers::{controller_config, node_config};

#[derive(Parser)]
#[command(
    name = "volmig",
    version,
    about = "Live migration of a running KVM guest's disk between storage pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node service on this KVM host.
    Node(NodeArgs),
    /// Run the controller service.
    Controller(ControllerArgs),
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (volmig.1 and one per subcommand) into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    #[command(flatten)]
    Operator(volmig::cli::OperatorCommand),
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<i32> {
    match cli.command {
        Command::Node(args) => {
            let layered = node_config(&args, &Cli::command(), matches, std::env::vars_os())?;
            if args.print.print(&layered.config)? {
                return Ok(0);
            }
            let cfg = &layered.config;
            // Logging (and trace export if configured) in the chosen format.
            let _traces = volmig::telemetry::init(cfg.log_format, "volmig-node", &cfg.telemetry)?;
            layered.warn_if_unwatched();
            #[cfg(feature = "node")]
            volmig::serve::node::run(layered.config, layered.grants_file, shutdown_signal())
                .await?;
            #[cfg(not(feature = "node"))]
            anyhow::bail!(
                "this volmig was built without the node service (cargo feature `node`, which links libvirt): install the full build on KVM hosts"
            );
            #[cfg(feature = "node")]
            Ok(0)
        }
        Command::Controller(args) => {
            let layered = controller_config(&args, &Cli::command(), matches, std::env::vars_os())?;
            if args.print.print(&layered.config)? {
                return Ok(0);
            }
            let cfg = &layered.config;
            let _traces =
                volmig::telemetry::init(cfg.log_format, "volmig-controller", &cfg.telemetry)?;
            layered.warn_if_unwatched();
            volmig::serve::controller::run(layered.config, layered.grants_file, shutdown_signal())
                .await?;
            Ok(0)
        }
        Command::Completions { shell } => {
            volmig::cli::generate::completions(Cli::command(), shell, &mut std::io::stdout())?;
            Ok(0)
        }
        Command::Man { dir } => {
            volmig::cli::generate::man_pages(Cli::command(), &dir)?;
            Ok(0)
        }
        Command::Operator(cmd) => {
            let _traces = volmig::telemetry::init(
                LogFormat::Text,
                "volmig-cli",
                &config::TelemetryConfig::default(),
            )?;
            // The root of the trace the controller and the node continue.
            volmig::cli::run(cmd)
                .instrument(tracing::info_span!("volmig.cli"))
                .await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The matches, not only the parsed values, tell whether a named setting
    // came from its flag or its variable, which decides its layer.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, &matches).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
