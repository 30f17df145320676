//! `pools`, `disks`, `volumes`, `info` and `nodes`: what a node or the
//! cluster has to migrate with, each one call and a table or a `key  value` block.

use clap::Args;

use super::target::{Accepts, Service};
use super::{json, print, report, CliError, OutputArgs};
use crate::api::client::Peer;
use crate::proto::node_client::NodeClient;
use crate::proto::{GetInfoRequest, ListDisksRequest, ListPoolVolumesRequest, ListPoolsRequest};

/// Arguments of `disks`.
#[derive(Debug, Clone, Args)]
pub struct DisksArgs {
    /// Domain name or UUID
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `volumes`.
#[derive(Debug, Clone, Args)]
pub struct VolumesArgs {
    /// The pool's name on the node
    #[arg(value_name = "POOL")]
    pool: String,
    #[command(flatten)]
    output: OutputArgs,
}

pub(super) async fn pools(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("pools", Accepts::Either)?;
    match target.peer {
        Peer::Node => {
            let reply = NodeClient::new(target.channel().await?)
                .list_pools(ListPoolsRequest {})
                .await?
                .into_inner();
            print(
                args.json,
                || json::pools(&reply.pools),
                || report::pools(&reply.pools),
            )
        }
        Peer::Controller => {
            let reply = target
                .failover(|mut s: Service| async move { s.cluster_pools().await })
                .await?;
            print(
                args.json,
                || json::cluster_pools(&reply.pools),
                || report::cluster_pools(&reply.pools),
            )
        }
    }
}

pub(super) async fn disks(args: DisksArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("disks", Accepts::Node)?;
    let reply = NodeClient::new(target.channel().await?)
        .list_disks(ListDisksRequest {
            domain: args.domain,
        })
        .await?
        .into_inner();
    print(
        args.output.json,
        || json::disks(&reply),
        || report::disks(&reply),
    )
}

pub(super) async fn volumes(args: VolumesArgs) -> Result<i32, CliError> {
    let target = args.output.target.resolve("volumes", Accepts::Node)?;
    let reply = NodeClient::new(target.channel().await?)
        .list_pool_volumes(ListPoolVolumesRequest { pool: args.pool })
        .await?
        .into_inner();
    print(
        args.output.json,
        || json::pool_volumes(&reply),
        || report::pool_volumes(&reply),
    )
}

pub(super) async fn info(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("info", Accepts::Node)?;
    let reply = NodeClient::new(target.channel().await?)
        .get_info(GetInfoRequest {})
        .await?
        .into_inner();
    print(
        args.json,
        || json::node_info(&reply),
        || report::node_info(&reply),
    )
}

pub(super) async fn nodes(args: OutputArgs) -> Result<i32, CliError> {
    let target = args.target.resolve("nodes", Accepts::Controller)?;
    let reply = target
        .failover(|mut s: Service| async move { s.list_nodes().await })
        .await?;
    print(
        args.json,
        || json::nodes(&reply.nodes),
        || report::nodes(&reply.nodes),
    )
}

#[cfg(test)]
mod tests {
    use crate::cli::execute;
    use crate::cli::tests::parse;

    #[tokio::test]
    async fn unreachable_node_is_reported_as_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = format!("unix://{}/node.sock", dir.path().display());
        let cmd = parse(&["pools", "--node", &endpoint]).expect("parses");
        let err = execute(cmd).await.expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!("UNAVAILABLE: cannot connect to node at {endpoint}: No such file or directory — is `volmig node` running?")
        );
    }
}
