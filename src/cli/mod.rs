//! The operator commands of the `volmig` binary (`migrate`, `watch`, `pools`, …):
//! clap arguments, one gRPC call or stream each, and their output.
//!
//! Every command talks to a node (`--node`, the default being the local unix
//! socket) or to the controller (`--controller`); see [`target`]. Output is
//! for people unless `--json` is given, in which case stdout holds only JSON.
//! Failures are one `error: CODE: message` line on stderr and exit code 1;
//! nothing from outside the process can make this module panic.
//!
//! This file holds the command enum, the arguments and helpers every command
//! shares, and the dispatch; each group of commands lives in its own module:
//! [`request_commands`] (`migrate`, `plan`), [`migration_commands`] (`watch`,
//! `cancel`, `status`, `list`, `set-bandwidth`), [`inventory_commands`]
//! (`pools`, `disks`, `volumes`, `info`, `nodes`) and [`pool_commands`] (`pool maintenance`).

mod drain_commands;
mod drain_json;
pub mod generate;
mod inventory_commands;
mod json;
mod migration_commands;
mod pool_commands;
mod progress;
pub mod quantities;
mod report;
mod request_commands;
mod table;
mod target;

use std::io::{self, IsTerminal, Write};

use clap::{Args, Subcommand};

use crate::api::client::{code_name, status_message, ClientError};
pub use inventory_commands::{DisksArgs, VolumesArgs};
pub use migration_commands::{IdArgs, ListArgs, SetBandwidthArgs, StatusArgs, WatchArgs};
pub use pool_commands::{MaintenanceArgs, PoolCommand};
use progress::Style;
pub use request_commands::{
    FormatArg, MigrateArgs, NoConvergenceArg, PlanArgs, RequestArgs, VerifyArg,
};
use target::{TargetArgs, TargetError};

/// The operator subcommands; the binary's own subcommand enum flattens this in.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Move a disk of a running domain to another storage pool and follow it
    Migrate(MigrateArgs),
    /// Show where the controller would place a migration, without starting it
    Plan(PlanArgs),
    /// Follow a migration until it ends (Ctrl-C only stops watching)
    Watch(WatchArgs),
    /// Stop a migration before it pivots; the guest stays on its source
    Cancel(IdArgs),
    /// Show one migration
    Status(StatusArgs),
    /// List migrations, newest first
    List(ListArgs),
    /// Change the copy bandwidth of a running migration
    SetBandwidth(SetBandwidthArgs),
    /// List storage pools (with --controller: every node's, shared ones merged)
    Pools(OutputArgs),
    /// List the disks of a domain
    Disks(DisksArgs),
    /// List the volumes of a node's pool and the disks of its domains that use each
    Volumes(VolumesArgs),
    /// Show what a node is and what it can migrate
    Info(OutputArgs),
    /// List the controller's nodes
    Nodes(OutputArgs),
    /// Act on one of the controller's pools (maintenance)
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Empty a storage pool: move every guest's disks on it elsewhere, live, within budgets
    Drain(drain_commands::DrainArgs),
}

/// `--json`, for commands that have nothing else to say.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON instead of a table (one object; for migrate and watch, one per event)
    #[arg(long)]
    json: bool,
}

/// Why a command failed. All but [`CliError::Output`] are the operator's to
/// fix or the server's to report, and end the command with exit code 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{code}: {0}", code = code_name(.0.code()))]
    Connect(#[from] ClientError),
    #[error("{}", status_message(.0))]
    Rpc(#[from] tonic::Status),
    #[error("INVALID_ARGUMENT: {0}")]
    Target(#[from] TargetError),
    #[error("INVALID_ARGUMENT: {0}")]
    Usage(&'static str),
    #[error("cannot write output")]
    Output(#[from] io::Error),
}

/// Runs one operator command and returns the process exit code: 0 on success,
/// 1 on any failure (already reported on stderr), 130 when a followed
/// migration was detached with Ctrl-C (it goes on in the node). An `Err`
/// means the output itself could not be written (e.g. stdout closed).
pub async fn run(cmd: OperatorCommand) -> anyhow::Result<i32> {
    match execute(cmd).await {
        Ok(code) => Ok(code),
        Err(CliError::Output(err)) => Err(anyhow::Error::new(err).context("cannot write output")),
        Err(err) => {
            writeln!(io::stderr(), "error: {err}")
                .map_err(|e| anyhow::Error::new(e).context("cannot write to stderr"))?;
            Ok(1)
        }
    }
}

async fn execute(cmd: OperatorCommand) -> Result<i32, CliError> {
    match cmd {
        OperatorCommand::Migrate(args) => request_commands::migrate(args).await,
        OperatorCommand::Plan(args) => request_commands::plan(args).await,
        OperatorCommand::Watch(args) => migration_commands::watch(args).await,
        OperatorCommand::Cancel(args) => migration_commands::cancel(args).await,
        OperatorCommand::Status(args) => migration_commands::status(args).await,
        OperatorCommand::List(args) => migration_commands::list(args).await,
        OperatorCommand::SetBandwidth(args) => migration_commands::set_bandwidth(args).await,
        OperatorCommand::Pools(args) => inventory_commands::pools(args).await,
        OperatorCommand::Disks(args) => inventory_commands::disks(args).await,
        OperatorCommand::Volumes(args) => inventory_commands::volumes(args).await,
        OperatorCommand::Info(args) => inventory_commands::info(args).await,
        OperatorCommand::Nodes(args) => inventory_commands::nodes(args).await,
        OperatorCommand::Drain(args) => drain_commands::run(args).await,
        OperatorCommand::Pool(cmd) => pool_commands::run(cmd).await,
    }
}

fn style(json: bool) -> Style {
    if json {
        Style::Json
    } else if io::stderr().is_terminal() {
        Style::Live
    } else {
        Style::Plain
    }
}

/// Writes a command's whole output to stdout: a JSON value on one line, or text.
fn print(
    json: bool,
    value: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<i32, CliError> {
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", value())?;
    } else {
        write!(out, "{}", text())?;
    }
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: OperatorCommand,
    }

    /// Parses an operator command line as the binary would; the command
    /// modules' tests use it too.
    pub(super) fn parse(args: &[&str]) -> Result<OperatorCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("volmig").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

    #[test]
    fn command_definitions_are_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn node_and_controller_flags_are_exclusive() {
        let err = parse(&[
            "list",
            "--node",
            "unix:///n.sock",
            "--controller",
            "http://c:1",
        ])
        .expect_err("both targets");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
