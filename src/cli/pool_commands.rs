//! `pool …`: operator actions on one cluster pool, through the controller.
//! For now `pool maintenance POOL on|off`; draining a pool is to come.

use std::io::{self, Write};

use clap::{Args, Subcommand, ValueEnum};

use super::target::{Accepts, TargetArgs};
use super::{json, print, CliError};
use crate::proto::controller_client::ControllerClient;
use crate::proto::SetPoolMaintenanceRequest;

/// The `pool` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum PoolCommand {
    /// Put a pool in maintenance (placement never chooses it) or take it out
    Maintenance(MaintenanceArgs),
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Put the pool in maintenance
    On,
    /// Take the pool out of maintenance
    Off,
}

/// Arguments of `pool maintenance`.
#[derive(Debug, Clone, Args)]
pub struct MaintenanceArgs {
    /// Pool name, or storage id when the name is several pools'
    pool: String,
    /// on or off
    #[arg(value_enum)]
    switch: Switch,
    /// Why, shown in every plan that judges the pool
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON instead of a sentence
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: PoolCommand) -> Result<i32, CliError> {
    match cmd {
        PoolCommand::Maintenance(args) => maintenance(args).await,
    }
}

async fn maintenance(args: MaintenanceArgs) -> Result<i32, CliError> {
    let target = args
        .target
        .resolve("pool maintenance", Accepts::Controller)?;
    let on = args.switch == Switch::On;
    let reply = ControllerClient::new(target.channel().await?)
        .set_pool_maintenance(SetPoolMaintenanceRequest {
            pool: args.pool,
            maintenance: on,
            reason: args.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if args.json {
        return print(true, || json::pool_maintenance_set(&reply), String::new);
    }
    let what = if on {
        "is in maintenance: placement will not choose it; migrations already on it or copying to it are not touched"
    } else {
        "is out of maintenance: placement may choose it again"
    };
    writeln!(
        io::stdout().lock(),
        "pool '{}' (storage {}) {what}",
        reply.pool,
        reply.storage_id
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use crate::cli::tests::parse;
    use crate::cli::OperatorCommand;

    #[test]
    fn maintenance_takes_a_pool_a_switch_and_a_reason() {
        let cmd = parse(&[
            "pool",
            "maintenance",
            "fast",
            "on",
            "--reason",
            "new disks",
            "--controller",
            "unix:///c.sock",
        ])
        .expect("parses");
        let OperatorCommand::Pool(super::PoolCommand::Maintenance(args)) = cmd else {
            panic!("not pool maintenance: {cmd:?}");
        };
        assert_eq!(
            (args.pool.as_str(), args.switch, args.reason.as_deref()),
            ("fast", super::Switch::On, Some("new disks"))
        );
        let err = parse(&["pool", "maintenance", "fast", "maybe"]).expect_err("on or off");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
