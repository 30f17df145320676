//! Which service a command talks to (`--node` or `--controller`), and the
//! calls that both services answer with the same messages.
//!
//! The flags are resolved by hand rather than with clap's `env` so that an
//! explicit flag always wins over the environment: an operator who exports both
//! `VOLMIG_NODE` and `VOLMIG_CONTROLLER` can still pick one with a flag, where
//! clap would call the two environment values a conflict.

use clap::Args;
use tonic::codec::Streaming;

use std::path::PathBuf;

use crate::api::client::{connect_with, AuthChannel, ClientError, Credentials, Peer};
use crate::api::tls::TlsFiles;
use crate::proto::controller_client::ControllerClient;
use crate::proto::node_client::NodeClient;
use crate::proto::{
    CancelMigrationRequest, CancelMigrationResponse, GetMigrationRequest, ListMigrationsRequest,
    ListMigrationsResponse, MigrateVolumeRequest, MigrationEvent, MigrationRecord,
    SetBandwidthRequest, SetBandwidthResponse, WatchMigrationRequest,
};

/// Where a node listens when nothing else is said: its local unix socket.
pub const DEFAULT_NODE_ENDPOINT: &str = "unix:///run/volmig/node.sock";
const NODE_ENV: &str = "VOLMIG_NODE";
const CONTROLLER_ENV: &str = "VOLMIG_CONTROLLER";
/// The bearer token itself, for callers that prefer not to write it to a file.
const TOKEN_ENV: &str = "VOLMIG_TOKEN";

/// The `--node` / `--controller` flags every operator command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Talk to this node: unix:///path, http://host:port or https://host:port
    /// [env: VOLMIG_NODE] [default: unix:///run/volmig/node.sock]
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "controller")]
    pub node: Option<String>,
    /// Talk to the controller instead of a node; several controllers sharing
    /// one etcd may be named (comma-separated or the flag repeated): each is
    /// tried in turn while the one before is unreachable or UNAVAILABLE
    /// [env: VOLMIG_CONTROLLER]
    #[arg(long, value_name = "ENDPOINT", value_delimiter = ',')]
    pub controller: Vec<String>,
    /// CA certificate (PEM) the service's certificate must chain to (https://)
    #[arg(long = "ca", value_name = "FILE", env = "VOLMIG_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the service (https://)
    #[arg(long = "cert", value_name = "FILE", env = "VOLMIG_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate
    #[arg(long = "key", value_name = "FILE", env = "VOLMIG_KEY")]
    pub key: Option<PathBuf>,
    /// File holding a bearer token to present: at least 32 characters,
    /// readable by its owner only (or set VOLMIG_TOKEN)
    #[arg(long, value_name = "FILE", env = "VOLMIG_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Which services can answer a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// A Node-only RPC (ListDisks, GetInfo).
    Node,
    /// A Controller-only RPC (ListNodes, PlanMigration).
    Controller,
    /// Both services have it, with the same messages.
    Either,
}

/// A command's target that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The command needs the controller and none was named.
    #[error("`volmig {command}` asks the controller: pass --controller ENDPOINT or set VOLMIG_CONTROLLER")]
    NeedsController {
        /// The subcommand.
        command: &'static str,
    },
    /// The command is a node RPC the controller does not have.
    #[error("`volmig {command}` asks a node; the controller has no such call: pass --node ENDPOINT or set VOLMIG_NODE")]
    NeedsNode {
        /// The subcommand.
        command: &'static str,
    },
    /// Both environment variables are set and no flag chose between them.
    #[error(
        "both VOLMIG_NODE and VOLMIG_CONTROLLER are set: pass --node or --controller to choose"
    )]
    Ambiguous,
}

/// A resolved target: which service, where, and whether a flag said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service expected at the endpoint.
    pub peer: Peer,
    /// The endpoint, as for [`connect_with`]: the first of `endpoints`.
    pub endpoint: String,
    /// Every endpoint to try, in order (several only for controllers).
    endpoints: Vec<String>,
    /// Named on the command line (rather than by the environment or default),
    /// so follow-up commands suggested to the operator must repeat it.
    from_flag: bool,
    /// TLS files and token file, as given.
    tls: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    token_file: Option<PathBuf>,
}

impl TargetArgs {
    /// Resolves the flags, then `VOLMIG_CONTROLLER` / `VOLMIG_NODE`, then the
    /// default node, for a command that `accepts` these services.
    pub fn resolve(&self, command: &'static str, accepts: Accepts) -> Result<Target, TargetError> {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        self.resolve_with(command, accepts, env(NODE_ENV), env(CONTROLLER_ENV))
    }

    fn resolve_with(
        &self,
        command: &'static str,
        accepts: Accepts,
        env_node: Option<String>,
        env_controller: Option<String>,
    ) -> Result<Target, TargetError> {
        let tls = (self.ca.clone(), self.cert.clone(), self.key.clone());
        let node = |endpoint: String, from_flag| Target {
            peer: Peer::Node,
            endpoints: vec![endpoint.clone()],
            endpoint,
            from_flag,
            tls: tls.clone(),
            token_file: self.token_file.clone(),
        };
        let controller = |endpoints: Vec<String>, from_flag| Target {
            peer: Peer::Controller,
            endpoint: endpoints.first().cloned().unwrap_or_default(),
            endpoints,
            from_flag,
            tls: tls.clone(),
            token_file: self.token_file.clone(),
        };
        let default_node = || DEFAULT_NODE_ENDPOINT.to_string();
        let flagged = endpoint_list(self.controller.iter().map(String::as_str));
        let env_controller = env_controller
            .map(|v| endpoint_list(v.split(',')))
            .filter(|l| !l.is_empty());

        let target = match (&self.node, flagged.is_empty()) {
            (_, false) => controller(flagged, true),
            (Some(endpoint), true) => node(endpoint.clone(), true),
            (None, true) => match (accepts, env_node, env_controller) {
                (Accepts::Controller, _, Some(endpoint)) => controller(endpoint, false),
                (Accepts::Controller, _, None) => {
                    return Err(TargetError::NeedsController { command })
                }
                (Accepts::Node, endpoint, _) => node(endpoint.unwrap_or_else(default_node), false),
                (Accepts::Either, Some(_), Some(_)) => return Err(TargetError::Ambiguous),
                (Accepts::Either, None, Some(endpoint)) => controller(endpoint, false),
                (Accepts::Either, endpoint, None) => {
                    node(endpoint.unwrap_or_else(default_node), false)
                }
            },
        };
        match (accepts, target.peer) {
            (Accepts::Node, Peer::Controller) => Err(TargetError::NeedsNode { command }),
            (Accepts::Controller, Peer::Node) => Err(TargetError::NeedsController { command }),
            _ => Ok(target),
        }
    }
}

/// Endpoints without blanks around or between commas.
fn endpoint_list<'a>(given: impl Iterator<Item = &'a str>) -> Vec<String> {
    given
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether another endpoint may answer where this one did not: the service
/// could not be reached, or said it cannot serve now (a controller without
/// its store, one shutting down). Any other answer is the service's word
/// on the request and is the same from every controller sharing the store.
fn try_another(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

impl Target {
    /// Opens a channel to the first endpoint that accepts a connection, with
    /// the credentials given: the TLS files, and the token from
    /// `--token-file` or `VOLMIG_TOKEN`.
    pub async fn channel(&self) -> Result<AuthChannel, ClientError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.channel_to(endpoint).await {
                Err(e @ ClientError::Connect { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidEndpoint {
            peer: self.peer,
            endpoint: String::new(),
            reason: "no endpoint given".to_string(),
        }))
    }

    /// Runs `call` on a client of the first endpoint, and on the next one
    /// while an endpoint cannot be reached or answers UNAVAILABLE: any of
    /// several controllers sharing one store serves every call. `call` must
    /// be safe to repeat on another controller: reads, cancels, watches, and
    /// a migrate whose request id is the same each time (a repeat attaches
    /// to the migration the first one started).
    pub async fn failover<T, F, Fut>(&self, mut call: F) -> Result<T, super::CliError>
    where
        F: FnMut(Service) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last: Option<super::CliError> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let more = i + 1 < self.endpoints.len();
            let service = match self.channel_to(endpoint).await {
                Ok(channel) => Service::over(self.peer, channel),
                Err(e @ ClientError::Connect { .. }) if more => {
                    tracing::debug!(%endpoint, error = %e, "trying the next endpoint");
                    last = Some(e.into());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match call(service).await {
                Err(status) if more && try_another(&status) => {
                    tracing::debug!(%endpoint, status = %status.message(), "trying the next endpoint");
                    last = Some(status.into());
                }
                other => return other.map_err(Into::into),
            }
        }
        Err(last.unwrap_or_else(|| super::CliError::Usage("no endpoint given")))
    }

    async fn channel_to(&self, endpoint: &str) -> Result<AuthChannel, ClientError> {
        let unusable = |reason: String| ClientError::Credentials {
            peer: self.peer,
            endpoint: self.endpoint.clone(),
            reason,
        };
        let (ca, cert, key) = self.tls.clone();
        let tls = TlsFiles::from_parts(ca, cert, key).map_err(|e| unusable(e.to_string()))?;
        let credentials = match &self.token_file {
            Some(_) => Credentials::load(tls, self.token_file.as_deref()),
            None => Credentials::new(tls, std::env::var(TOKEN_ENV).ok().as_deref()),
        }
        .map_err(|e| unusable(e.to_string()))?;
        connect_with(self.peer, endpoint, &credentials).await
    }

    /// The flags that make a suggested follow-up command reach the same
    /// service: empty unless the endpoint was given on the command line.
    pub fn flags(&self) -> String {
        if self.from_flag {
            format!(" --{} {}", self.peer, self.endpoints.join(","))
        } else {
            String::new()
        }
    }
}

/// A client for the calls that the Node and the Controller both serve.
pub enum Service {
    /// Talking to a node directly.
    Node(NodeClient<AuthChannel>),
    /// Talking to the controller, which routes to the right node.
    Controller(ControllerClient<AuthChannel>),
}

/// Calls `$method` on whichever client `$service` holds and unwraps the response.
macro_rules! either {
    ($service:expr, $method:ident, $request:expr) => {
        match $service {
            Service::Node(client) => client.$method($request).await,
            Service::Controller(client) => client.$method($request).await,
        }
        .map(tonic::Response::into_inner)
    };
}

impl Service {
    /// The client for `peer`'s service over `channel`.
    fn over(peer: Peer, channel: AuthChannel) -> Self {
        match peer {
            Peer::Node => Service::Node(NodeClient::new(channel)),
            Peer::Controller => Service::Controller(ControllerClient::new(channel)),
        }
    }

    /// MigrateVolume.
    pub async fn migrate(
        &mut self,
        request: MigrateVolumeRequest,
    ) -> Result<Streaming<MigrationEvent>, tonic::Status> {
        either!(self, migrate_volume, request)
    }

    /// WatchMigration.
    pub async fn watch(
        &mut self,
        migration_id: String,
    ) -> Result<Streaming<MigrationEvent>, tonic::Status> {
        either!(
            self,
            watch_migration,
            WatchMigrationRequest { migration_id }
        )
    }

    /// CancelMigration.
    pub async fn cancel(
        &mut self,
        migration_id: String,
    ) -> Result<CancelMigrationResponse, tonic::Status> {
        either!(
            self,
            cancel_migration,
            CancelMigrationRequest { migration_id }
        )
    }

    /// GetMigration.
    pub async fn get(&mut self, migration_id: String) -> Result<MigrationRecord, tonic::Status> {
        either!(self, get_migration, GetMigrationRequest { migration_id })
    }

    /// ListMigrations.
    pub async fn list(
        &mut self,
        request: ListMigrationsRequest,
    ) -> Result<ListMigrationsResponse, tonic::Status> {
        either!(self, list_migrations, request)
    }

    /// ListNodes (the controller's only).
    pub async fn list_nodes(&mut self) -> Result<crate::proto::ListNodesResponse, tonic::Status> {
        match self {
            Service::Controller(client) => client
                .list_nodes(crate::proto::ListNodesRequest {})
                .await
                .map(tonic::Response::into_inner),
            Service::Node(_) => Err(tonic::Status::unimplemented("a node lists no nodes")),
        }
    }

    /// ListPools of the controller (every node's pools, shared ones merged).
    pub async fn cluster_pools(
        &mut self,
    ) -> Result<crate::proto::ListClusterPoolsResponse, tonic::Status> {
        match self {
            Service::Controller(client) => client
                .list_pools(crate::proto::ListClusterPoolsRequest {})
                .await
                .map(tonic::Response::into_inner),
            Service::Node(_) => Err(tonic::Status::unimplemented("a node lists its own pools")),
        }
    }

    /// PlanMigration (the controller's only).
    pub async fn plan(
        &mut self,
        request: MigrateVolumeRequest,
    ) -> Result<crate::proto::PlanMigrationResponse, tonic::Status> {
        match self {
            Service::Controller(client) => client
                .plan_migration(request)
                .await
                .map(tonic::Response::into_inner),
            Service::Node(_) => Err(tonic::Status::unimplemented("a node makes no plans")),
        }
    }

    /// SetBandwidth.
    pub async fn set_bandwidth(
        &mut self,
        migration_id: String,
        bytes_per_sec: u64,
    ) -> Result<SetBandwidthResponse, tonic::Status> {
        either!(
            self,
            set_bandwidth,
            SetBandwidthRequest {
                migration_id,
                bytes_per_sec
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(node: Option<&str>, controller: Option<&str>) -> TargetArgs {
        TargetArgs {
            node: node.map(str::to_string),
            controller: controller.map(str::to_string).into_iter().collect(),
            ..TargetArgs::default()
        }
    }

    fn resolve(
        a: &TargetArgs,
        accepts: Accepts,
        env_node: Option<&str>,
        env_controller: Option<&str>,
    ) -> Result<Target, TargetError> {
        a.resolve_with(
            "test",
            accepts,
            env_node.map(str::to_string),
            env_controller.map(str::to_string),
        )
    }

    #[test]
    fn nothing_given_means_the_local_node() {
        let t = resolve(&args(None, None), Accepts::Either, None, None).expect("target");
        assert_eq!(
            (t.peer, t.endpoint.as_str()),
            (Peer::Node, DEFAULT_NODE_ENDPOINT)
        );
        assert_eq!(t.flags(), "");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let t = resolve(
            &args(Some("http://n2:7400"), None),
            Accepts::Either,
            None,
            Some("http://c:1"),
        )
        .expect("target");
        assert_eq!(
            (t.peer, t.endpoint.as_str()),
            (Peer::Node, "http://n2:7400")
        );
        assert_eq!(t.flags(), " --node http://n2:7400");
    }

    #[test]
    fn controller_from_the_environment_is_used_when_no_flag_is_given() {
        let t =
            resolve(&args(None, None), Accepts::Either, None, Some("http://c:1")).expect("target");
        assert_eq!(t.peer, Peer::Controller);
        assert_eq!(t.flags(), "");
    }

    #[test]
    fn both_environment_variables_need_a_flag_to_choose() {
        assert_eq!(
            resolve(
                &args(None, None),
                Accepts::Either,
                Some("unix:///n.sock"),
                Some("http://c:1")
            ),
            Err(TargetError::Ambiguous)
        );
        let t = resolve(
            &args(None, None),
            Accepts::Controller,
            Some("unix:///n.sock"),
            Some("http://c:1"),
        )
        .expect("target");
        assert_eq!(t.peer, Peer::Controller);
        let t = resolve(
            &args(None, None),
            Accepts::Node,
            Some("unix:///n.sock"),
            Some("http://c:1"),
        )
        .expect("target");
        assert_eq!(
            (t.peer, t.endpoint.as_str()),
            (Peer::Node, "unix:///n.sock")
        );
    }

    #[test]
    fn controller_only_commands_refuse_a_node() {
        assert_eq!(
            resolve(&args(None, None), Accepts::Controller, None, None),
            Err(TargetError::NeedsController { command: "test" })
        );
        assert_eq!(
            resolve(
                &args(Some("unix:///n.sock"), None),
                Accepts::Controller,
                None,
                Some("http://c:1")
            ),
            Err(TargetError::NeedsController { command: "test" })
        );
    }

    #[test]
    fn node_only_commands_refuse_the_controller() {
        assert_eq!(
            resolve(&args(None, Some("http://c:1")), Accepts::Node, None, None),
            Err(TargetError::NeedsNode { command: "test" })
        );
    }

    #[test]
    fn several_controllers_by_commas_repeated_flags_or_the_environment() {
        let a = TargetArgs {
            controller: vec!["https://a:7450".into(), " https://b:7450".into()],
            ..TargetArgs::default()
        };
        let t = resolve(&a, Accepts::Controller, None, None).expect("target");
        assert_eq!(t.endpoints, ["https://a:7450", "https://b:7450"]);
        assert_eq!(t.endpoint, "https://a:7450");
        assert_eq!(t.flags(), " --controller https://a:7450,https://b:7450");
        let t = resolve(
            &args(None, None),
            Accepts::Either,
            None,
            Some("https://a:7450,,https://b:7450"),
        )
        .expect("target");
        assert_eq!(
            (t.peer, t.endpoints.as_slice()),
            (
                Peer::Controller,
                &["https://a:7450".to_string(), "https://b:7450".to_string()][..]
            )
        );
    }

    #[test]
    fn only_unavailable_tries_another_controller() {
        assert!(try_another(&tonic::Status::unavailable("down")));
        assert!(!try_another(&tonic::Status::not_found("no such migration")));
        assert!(!try_another(&tonic::Status::failed_precondition("busy")));
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_passed_over_for_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = format!("unix://{}/c1.sock", dir.path().display());
        let second = format!("unix://{}/c2.sock", dir.path().display());
        let a = TargetArgs {
            controller: vec![first.clone(), second.clone()],
            ..TargetArgs::default()
        };
        let t = resolve(&a, Accepts::Controller, None, None).expect("target");
        let mut tried = 0;
        let err = t
            .failover(|_s: Service| {
                tried += 1;
                async { Ok::<(), tonic::Status>(()) }
            })
            .await
            .expect_err("nothing listens");
        // Neither connected, so the call never ran; the error is the last one's.
        assert_eq!(tried, 0);
        assert!(err.to_string().contains(&second), "{err}");
        let err = t.channel().await.expect_err("nothing listens");
        assert!(err.to_string().contains(&second), "{err}");
    }
}
