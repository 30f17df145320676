//! End-to-end: what a node's registration can make the controller do, and
//! where the controller's credentials go. A real `volmig controller` with
//! mutual TLS and a token file; fake nodes in this process (tonic Node
//! servers, over TLS with certificates from the test CA, or plaintext) that
//! record the metadata of every call they receive.
//!
//! Proves: a registration advertising `http://` to a TLS controller, or a
//! host its certificate does not name, or a host outside `advertise_allow`,
//! is refused and the endpoint never called; an accepted registered node is
//! called with the controller's certificate and no token; a node from the
//! controller's own configuration over `https://` does get the token. Also:
//! lapsed registrations free their places under `max_nodes`, and the token
//! file rules stop a component or the CLI at start.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::certs::{free_port, Leaf, LeafSpec, TestCa};
use harness::controller::ControllerProcess;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use volmig::api::client::{self, Credentials, Peer};
use volmig::proto;
use volmig::proto::node_server::{Node, NodeServer};

/// What a fake node saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    /// The `authorization` header, if any.
    authorization: Option<String>,
    /// Whether the caller presented a client certificate.
    client_certificate: bool,
}

/// Every call a fake node received.
#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Seen>>>);

impl Record {
    fn calls(&self) -> Vec<Seen> {
        self.0.lock().expect("record").clone()
    }

    /// Waits (real time, generous) until at least `n` calls arrived.
    async fn wait_calls(&self, n: usize, what: &str, ctl: &ControllerProcess) -> Vec<Seen> {
        for _ in 0..200 {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what} received no call in 20 s:\n{}", ctl.log());
    }
}

/// A node that answers GetInfo and ListPools (empty) and nothing else.
struct FakeNode;

fn fake() -> Status {
    Status::unimplemented("fake node")
}

type Events = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::MigrationEvent, Status>> + Send>,
>;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn get_info(
        &self,
        _: Request<proto::GetInfoRequest>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        Ok(Response::new(proto::NodeInfo::default()))
    }
    async fn list_pools(
        &self,
        _: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        Ok(Response::new(proto::ListPoolsResponse::default()))
    }
    async fn list_disks(
        &self,
        _: Request<proto::ListDisksRequest>,
    ) -> Result<Response<proto::ListDisksResponse>, Status> {
        Err(fake())
    }
    type MigrateVolumeStream = Events;
    async fn migrate_volume(
        &self,
        _: Request<proto::MigrateVolumeRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(fake())
    }
    type WatchMigrationStream = Events;
    async fn watch_migration(
        &self,
        _: Request<proto::WatchMigrationRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(fake())
    }
    async fn cancel_migration(
        &self,
        _: Request<proto::CancelMigrationRequest>,
    ) -> Result<Response<proto::CancelMigrationResponse>, Status> {
        Err(fake())
    }
    async fn get_migration(
        &self,
        _: Request<proto::GetMigrationRequest>,
    ) -> Result<Response<proto::MigrationRecord>, Status> {
        Err(fake())
    }
    async fn list_migrations(
        &self,
        _: Request<proto::ListMigrationsRequest>,
    ) -> Result<Response<proto::ListMigrationsResponse>, Status> {
        Err(fake())
    }
    async fn set_bandwidth(
        &self,
        _: Request<proto::SetBandwidthRequest>,
    ) -> Result<Response<proto::SetBandwidthResponse>, Status> {
        Err(fake())
    }
    async fn find_volume_users(
        &self,
        _: Request<proto::FindVolumeUsersRequest>,
    ) -> Result<Response<proto::FindVolumeUsersResponse>, Status> {
        Err(fake())
    }
    async fn list_pool_volumes(
        &self,
        _: Request<proto::ListPoolVolumesRequest>,
    ) -> Result<Response<proto::ListPoolVolumesResponse>, Status> {
        Err(fake())
    }
}

/// Serves a fake node on 127.0.0.1: over mutual TLS with `tls` as its
/// server certificate (clients must chain to the same CA), or plaintext.
/// Its port and what it records.
async fn serve_fake(tls: Option<&Leaf>) -> (u16, Record) {
    let record = Record::default();
    let seen = record.clone();
    let service = NodeServer::with_interceptor(FakeNode, move |req: Request<()>| {
        seen.0.lock().expect("record").push(Seen {
            authorization: req
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("(not ASCII)").to_string()),
            client_certificate: req.peer_certs().is_some_and(|c| !c.is_empty()),
        });
        Ok(req)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut builder = Server::builder();
    if let Some(leaf) = tls {
        let read = |p: &Path| std::fs::read(p).expect("read PEM");
        builder = builder
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(read(&leaf.cert), read(&leaf.key)))
                    .client_ca_root(Certificate::from_pem(read(&leaf.ca))),
            )
            .expect("server TLS");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(builder.add_service(service).serve_with_incoming(incoming));
    (port, record)
}

/// A registration of `node_id` at `endpoint`, sent over mutual TLS with `leaf`.
async fn register(ctl: &str, leaf: &Leaf, node_id: &str, endpoint: &str) -> Result<(), Status> {
    let creds = Credentials::new(Some(leaf.files()), None).expect("credentials");
    let channel = client::connect_with(Peer::Controller, ctl, &creds)
        .await
        .unwrap_or_else(|e| panic!("connect to the controller: {e}"));
    proto::controller_client::ControllerClient::new(channel)
        .register_node(proto::RegisterNodeRequest {
            node_id: node_id.into(),
            endpoint: endpoint.into(),
            info: None,
        })
        .await
        .map(|_| ())
}

/// A 64-character token in an owner-only file.
fn token_file(dir: &Path, name: &str, token: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn node_identity(id: &str) -> String {
    format!(
        "[[identities]]\nuri = \"spiffe://volmig.test/node/{id}\"\nrole = \"node\"\nnode_id = \"{id}\"\n"
    )
}

fn node_leaf(ca: &TestCa, id: &str, names: &[&str]) -> Leaf {
    let uri = format!("spiffe://volmig.test/node/{id}");
    ca.leaf(LeafSpec {
        uri: Some(&uri),
        ..LeafSpec::new(id, &format!("{id}.volmig.test"), names)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_cannot_send_the_controller_or_its_token_where_a_node_chooses() {
    let dir = harness::make_dir(&harness::unique_name("regsec"));
    let ca = TestCa::new(&dir, "regsec");
    let controller_leaf = ca.leaf(LeafSpec::new(
        "controller",
        "controller.volmig.test",
        &["localhost", "127.0.0.1"],
    ));
    // Server certificates of the fake nodes: each names the host it is
    // reached at, so only the registration rules can keep the controller away.
    let serves_loopback = ca.leaf(LeafSpec::new("fake-ip", "fake", &["127.0.0.1"]));
    let serves_localhost = ca.leaf(LeafSpec::new("fake-name", "fake", &["localhost"]));
    let (static_port, static_node) = serve_fake(Some(&serves_loopback)).await;
    let (plain_port, plain_node) = serve_fake(None).await;
    let (unnamed_port, unnamed_node) = serve_fake(Some(&serves_loopback)).await;
    let (outside_port, outside_node) = serve_fake(Some(&serves_localhost)).await;
    let (good_port, good_node) = serve_fake(Some(&serves_loopback)).await;

    // Registering nodes' client certificates.
    let good = node_leaf(&ca, "good", &["127.0.0.1", "localhost"]);
    let elsewhere = node_leaf(&ca, "elsewhere", &["kvm7.volmig.test", "10.9.9.9"]);

    let token = token_file(&dir, "controller.token", TOKEN, 0o600);
    let ctl_addr = format!("127.0.0.1:{}", free_port());
    let ctl_https = format!(
        "https://localhost:{}",
        ctl_addr.rsplit(':').next().expect("port")
    );
    let config = format!(
        "heartbeat_interval_seconds = 1\ndown_after_seconds = 5\n\
         token_file = \"{}\"\nadvertise_allow = [\"127.0.0.0/8\"]\n{}\
         [[nodes]]\nid = \"static\"\nendpoint = \"https://127.0.0.1:{static_port}\"\n\
         {}{}",
        token.display(),
        controller_leaf.toml(),
        node_identity("good"),
        node_identity("elsewhere"),
    );
    let ctl = ControllerProcess::start_tcp("regsec-ctl", &ctl_addr, &config, &[]);

    // (a) Plaintext to a TLS controller: refused, saying what to set.
    let err = register(
        &ctl_https,
        &good,
        "good",
        &format!("http://127.0.0.1:{plain_port}"),
    )
    .await
    .expect_err("http:// registration");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("https://") && err.message().contains("advertise"),
        "{}",
        err.message()
    );
    // (b) A host the certificate does not name: refused, naming both.
    let err = register(
        &ctl_https,
        &elsewhere,
        "elsewhere",
        &format!("https://127.0.0.1:{unnamed_port}"),
    )
    .await
    .expect_err("host not in the certificate");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for part in ["127.0.0.1", "kvm7.volmig.test", "10.9.9.9"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
    // (e) A host the certificate names but advertise_allow does not.
    let err = register(
        &ctl_https,
        &good,
        "good",
        &format!("https://localhost:{outside_port}"),
    )
    .await
    .expect_err("outside advertise_allow");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("advertise_allow"),
        "{}",
        err.message()
    );
    // (c) Named and allowed: accepted, and called with the controller's
    // certificate and no token.
    register(
        &ctl_https,
        &good,
        "good",
        &format!("https://127.0.0.1:{good_port}"),
    )
    .await
    .expect("a registration its certificate vouches for");
    good_node.wait_calls(1, "the registered node", &ctl).await;
    // (d) The configured node over https:// gets the token.
    static_node.wait_calls(2, "the configured node", &ctl).await;
    // Several refresh rounds (one a second) for anything else to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let registered = good_node.calls();
    let configured = static_node.calls();
    let refused = [
        ("plaintext", plain_node.calls()),
        ("unnamed host", unnamed_node.calls()),
        ("host outside advertise_allow", outside_node.calls()),
    ];
    let log = ctl.log();
    drop(ctl);
    harness::remove_dir_noisy(&dir);

    for (what, calls) in refused {
        assert!(
            calls.is_empty(),
            "the {what} endpoint was called: {calls:?}"
        );
    }
    assert!(
        registered
            .iter()
            .all(|c| c.authorization.is_none() && c.client_certificate),
        "a registered node got a token or no certificate: {registered:?}\n{log}"
    );
    assert!(
        configured.iter().all(|c| c.authorization.as_deref()
            == Some(&format!("Bearer {TOKEN}")[..])
            && c.client_certificate),
        "the configured node did not get the token: {configured:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lapsed_registrations_free_their_places_under_max_nodes() {
    let ctl = ControllerProcess::start(
        "regsec-reclaim",
        "max_nodes = 2\nheartbeat_interval_seconds = 1\ndown_after_seconds = 1\n\
         forget_lapsed_nodes_after_seconds = 1\n",
    );
    let mut client = ctl.client().await;
    let register = |id: &str| {
        let request = proto::RegisterNodeRequest {
            node_id: id.into(),
            endpoint: "unix:///nonexistent/volmig-flood.sock".into(),
            info: None,
        };
        let mut client = client.clone();
        async move { client.register_node(request).await.map(|_| ()) }
    };
    register("flood-1").await.expect("room");
    register("flood-2").await.expect("room");
    let err = register("real").await.expect_err("full");
    assert_eq!(err.code(), Code::ResourceExhausted);
    // The flood stops; after the lapse the real node gets in.
    let mut last = Err(err);
    for _ in 0..100 {
        last = register("real").await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_ok(), "{last:?}\n{}", ctl.log());
    let nodes = client
        .list_nodes(proto::ListNodesRequest {})
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["real"], "the lapsed nodes are forgotten");
}

/// Starts `volmig COMPONENT --config CONFIG` and expects it to stop at once
/// with a message containing every one of `parts`.
fn refused_at_start(dir: &Path, component: &str, config: &str, parts: &[&str]) {
    let file = dir.join(format!("{component}.toml"));
    std::fs::write(&file, config).expect("config");
    let listen = format!("unix://{}/{component}.sock", dir.display());
    let state = dir.join(format!("{component}-state"));
    let out = harness::run_with_timeout(
        env!("CARGO_BIN_EXE_volmig"),
        &[
            component,
            "--config",
            &file.to_string_lossy(),
            "--listen",
            &listen,
            "--state-dir",
            &state.to_string_lossy(),
        ],
        Duration::from_secs(20),
    )
    .expect_err("refused at start");
    assert!(!out.contains("timed out"), "it started: {out}");
    for part in parts {
        assert!(out.contains(part), "{part:?} missing: {out}");
    }
}

#[test]
fn token_files_that_are_weak_open_or_headed_for_plaintext_stop_the_start() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("regsec-token"));
    let short = token_file(&dir, "short.token", "tooshort", 0o600);
    let open = token_file(&dir, "open.token", TOKEN, 0o644);
    let good = token_file(&dir, "good.token", TOKEN, 0o600);
    let line = |p: &Path| format!("token_file = \"{}\"\n", p.display());

    refused_at_start(
        &dir,
        "controller",
        &line(&short),
        &["8-character token", "openssl rand -hex 32", "short.token"],
    );
    refused_at_start(&dir, "controller", &line(&open), &["0644", "chmod go-rwx"]);
    refused_at_start(
        &dir,
        "controller",
        &format!(
            "{}[[nodes]]\nid = \"kvm1\"\nendpoint = \"http://127.0.0.1:7451\"\n",
            line(&good)
        ),
        &["static node 'kvm1'", "only over https:// or unix://"],
    );
    refused_at_start(
        &dir,
        "node",
        &format!("{}controller = \"http://127.0.0.1:7450\"\n", line(&good)),
        &["plaintext", "only over https:// or unix://"],
    );
    // The operator's own token file, for the CLI: the same rules.
    let (code, _, err) = harness::volmig(
        &["info", "--node", "http://127.0.0.1:9", "--token-file"]
            .into_iter()
            .chain([short.to_str().expect("path")])
            .collect::<Vec<_>>(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("openssl rand -hex 32"), "{err}");
    // And off this host it never goes in plaintext, even from the CLI.
    let (code, _, err) = harness::volmig(
        &["info", "--node", "http://192.0.2.1:9"],
        &[("VOLMIG_TOKEN", TOKEN)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("in plaintext"), "{err}");
    harness::remove_dir_noisy(&dir);
}
