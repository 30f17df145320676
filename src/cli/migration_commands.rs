//! `watch`, `cancel`, `status`, `list` and `set-bandwidth`: the commands on
//! migrations that already exist, by id or by filter.

use std::io::{self, Write};

use clap::Args;

use super::progress::{self, Detach};
use super::quantities::{human_rate, parse_bandwidth};
use super::target::{Accepts, Service, Target, TargetArgs};
use super::{json, print, report, style, CliError, OutputArgs};
use crate::proto::ListMigrationsRequest;

/// Arguments of `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `cancel`.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    target: TargetArgs,
}

/// Arguments of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Migration id
    id: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only migrations of this domain
    #[arg(long)]
    domain: Option<String>,
    /// Only migrations that have not ended
    #[arg(long)]
    active: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `set-bandwidth`.
#[derive(Debug, Clone, Args)]
pub struct SetBandwidthArgs {
    /// Migration id
    id: String,
    /// New limit per second, e.g. 50MiB; 0 removes the limit
    #[arg(value_name = "SIZE", value_parser = parse_bandwidth)]
    bandwidth: u64,
    #[command(flatten)]
    target: TargetArgs,
}

pub(super) async fn watch(args: WatchArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("watch", Accepts::Either)?;
    let stream = target
        .failover(|mut s: Service| {
            let id = args.id.clone();
            async move { s.watch(id).await }
        })
        .await?;
    let detach = Detach {
        target_flags: target.flags(),
        migration_id: Some(args.id.clone()),
        request: None,
    };
    let reattach = |id: Option<String>| {
        let id = id.unwrap_or_else(|| args.id.clone());
        watch_through(&target, id)
    };
    Ok(progress::follow(stream, style(args.output.json), &detach, reattach).await?)
}

/// A new stream of migration `id`'s events from any of the target's
/// endpoints, after the one followed broke; `None` if none answers.
pub(super) async fn watch_through(
    target: &Target,
    id: String,
) -> Option<tonic::codec::Streaming<crate::proto::MigrationEvent>> {
    target
        .failover(|mut s: Service| {
            let id = id.clone();
            async move { s.watch(id).await }
        })
        .await
        .ok()
}

pub(super) async fn cancel(args: IdArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("cancel", Accepts::Either)?;
    let reply = target
        .failover(|mut s: Service| {
            let id = args.id.clone();
            async move { s.cancel(id).await }
        })
        .await?;
    let was = reply
        .latest
        .map(|ev| format!(" (it was {})", progress::phase_name(ev.phase())))
        .unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "cancelling migration {id}{was}: the guest stays on its source and the destination volume is deleted\n  \
         follow it: volmig watch {id}{flags}",
        id = args.id,
        flags = target.flags()
    )?;
    Ok(0)
}

pub(super) async fn status(args: StatusArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("status", Accepts::Either)?;
    let record = target
        .failover(|mut s: Service| {
            let id = args.id.clone();
            async move { s.get(id).await }
        })
        .await?;
    print(
        args.output.json,
        || json::record(&record),
        || report::record(&record),
    )
}

pub(super) async fn list(args: ListArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("list", Accepts::Either)?;
    let request = ListMigrationsRequest {
        domain: args.domain.unwrap_or_default(),
        active_only: args.active,
        ..Default::default()
    };
    let reply = target
        .failover(|mut s: Service| {
            let request = request.clone();
            async move { s.list(request).await }
        })
        .await?;
    print(
        args.output.json,
        || json::records(&reply.migrations),
        || report::migrations(&reply.migrations),
    )
}

pub(super) async fn set_bandwidth(args: SetBandwidthArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("set-bandwidth", Accepts::Either)?;
    target
        .failover(|mut s: Service| {
            let id = args.id.clone();
            async move { s.set_bandwidth(id, args.bandwidth).await }
        })
        .await?;
    let limit = if args.bandwidth == 0 {
        "limit removed".to_string()
    } else {
        format!("limit set to {}", human_rate(args.bandwidth))
    };
    writeln!(
        io::stdout().lock(),
        "migration {}: copy bandwidth {limit}",
        args.id
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use crate::cli::tests::parse;

    #[test]
    fn bad_bandwidth_is_a_usage_error() {
        let err = parse(&["set-bandwidth", "m1", "fast"]).expect_err("not a size");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
