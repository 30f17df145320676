//! End-to-end: connections are bounded before authentication. A flood of
//! raw TCP connections that never speak (reopened as soon as they are
//! closed) against a real node's mutual-TLS listener and its plaintext
//! health listener locks out neither an operator's call nor a probe; a
//! connection that authenticated with a role-less certificate and then
//! does nothing is closed after `idle_timeout_seconds`; a connection is
//! closed at `max_age_seconds` when it has no call in progress, and after
//! `max_age_grace_seconds` more under a call that does not end.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::certs::{free_port, Leaf, LeafSpec, TestCa};
use harness::node::NodeProcess;
use harness::scratch::Scratch;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use volmig::api::client::{self, Credentials, Peer};
use volmig::proto;
use volmig::proto::node_client::NodeClient;

const OPERATOR: &str = "operator.volmig.test";
/// How long an operator's call or a probe may take under the flood.
const WITHIN: Duration = Duration::from_secs(2);
/// Silent connections the flood keeps open (or reopens) per listener.
const FLOOD: usize = 1_100;
/// How long the flood lasts: beyond two handshake deadlines (5 s).
const FLOOD_FOR: Duration = Duration::from_secs(14);
/// The flood's source address; the operator and the probe come from 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";

/// A node on mutual TLS at a free port, with `connections` as its
/// `[connections]` table and a plaintext health listener; returns it, its
/// TLS address, its health address, and the operator's and a role-less
/// client's certificates.
struct Served {
    node: NodeProcess,
    tls: SocketAddr,
    health: SocketAddr,
    operator: Leaf,
    roleless: Leaf,
    _scratch: Scratch,
}

fn serve(purpose: &str, connections: &str) -> Served {
    let scratch = Scratch::new(purpose);
    let ca = TestCa::new(scratch.path(), "main");
    let server = ca.leaf(LeafSpec::new("node", "node", &["localhost", "127.0.0.1"]));
    let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    let roleless = ca.leaf(LeafSpec::new(
        "nobody",
        "nobody.volmig.test",
        &["nobody.volmig.test"],
    ));
    let health: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = scratch.write(
        "node.toml",
        &format!(
            "health_listen = \"{health}\"\n[[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n[connections]\n{connections}"
        ),
    );
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let flags = [server.flags(), vec!["--config".into(), config]].concat();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = NodeProcess::start_tcp(purpose, &tls.to_string(), &flags);
    Served {
        node,
        tls,
        health,
        operator,
        roleless,
        _scratch: scratch,
    }
}

/// GetInfo over a new mutual-TLS connection with `leaf`.
async fn get_info(addr: SocketAddr, leaf: &Leaf) -> Result<proto::NodeInfo, String> {
    let creds = Credentials::new(Some(leaf.files()), None).map_err(|e| e.to_string())?;
    let endpoint = format!("https://localhost:{}", addr.port());
    let channel = client::connect_with(Peer::Node, &endpoint, &creds)
        .await
        .map_err(|e| e.to_string())?;
    NodeClient::new(channel)
        .get_info(proto::GetInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A grpc.health Check over a new plaintext connection.
async fn probe(addr: SocketAddr) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("source address"))?;
    socket.connect(addr).await
}

/// Keeps `FLOOD` silent connections from `ATTACKER` to `addr`, reopening
/// each as soon as the server closes it, until `stop`; returns how many
/// connections it opened in all.
async fn flood(addr: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let opened = AtomicUsize::new(0);
    let mut conns: Vec<Option<TcpStream>> = (0..FLOOD).map(|_| None).collect();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        for slot in conns.iter_mut() {
            let open = match slot {
                // Anything read (a server's first frames) is ignored; an end
                // of file or an error means the server closed it.
                Some(conn) => match conn.try_read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                },
                None => false,
            };
            if !open {
                *slot =
                    tokio::time::timeout(Duration::from_millis(200), connect_from(ATTACKER, addr))
                        .await
                        .ok()
                        .and_then(Result::ok);
                opened.fetch_add(1, Ordering::Relaxed);
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    opened.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_silent_connections_locks_out_neither_operators_nor_probes() {
    let served = serve("flood", "");
    // Before the flood: both answer.
    get_info(served.tls, &served.operator)
        .await
        .unwrap_or_else(|e| panic!("mTLS call: {e}\n{}", served.node.log()));
    probe(served.health).await.expect("probe");

    let stop = Arc::new(AtomicBool::new(false));
    let floods = [served.tls, served.health].map(|addr| tokio::spawn(flood(addr, stop.clone())));
    // Let the flood fill what it can (on a listener without per-peer
    // bounds: every place) before calling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < FLOOD_FOR - Duration::from_secs(3) {
        let t = Instant::now();
        let info = tokio::time::timeout(WITHIN, get_info(served.tls, &served.operator)).await;
        let info_took = t.elapsed();
        let t = Instant::now();
        let health = tokio::time::timeout(WITHIN, probe(served.health)).await;
        let health_took = t.elapsed();
        if !matches!(info, Ok(Ok(_))) || !matches!(health, Ok(Ok(1))) {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "under the flood: GetInfo {info:?} after {info_took:?}, health {health:?} after {health_took:?}\n{}",
                harness::tail(&served.node.log(), 20)
            );
        }
        eprintln!("under the flood: GetInfo in {info_took:?}, health Check in {health_took:?}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut opened = 0;
    for f in floods {
        opened += f.await.expect("flood task");
    }
    eprintln!("{calls} rounds of calls under a flood that opened {opened} connections");
    assert!(calls >= 5, "only {calls} rounds");
    // The flood really was one: both listeners were sent at least FLOOD.
    assert!(opened >= 2 * FLOOD, "{opened}");
}

/// A mutual-TLS connection with `leaf` (handshake done, nothing sent).
async fn handshake(addr: SocketAddr, leaf: &Leaf) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = leaf.tls_connector();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("handshake")
}

/// Reads (and drops) whatever the server sends until it closes the
/// connection; how long that took, or `None` after `limit`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    mut conn: S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_connection_without_calls_is_closed_when_idle() {
    let served = serve("idle", "idle_timeout_seconds = 2\nmax_age_seconds = 0\n");
    let conn = handshake(served.tls, &served.roleless).await;
    let took = closed_after(conn, Duration::from_secs(15)).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "a role-less client's idle connection was still open after 15 s\n{}",
            served.node.log()
        )
    });
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "closed after {took:?} (idle_timeout_seconds = 2)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_is_closed_at_its_maximum_age_and_its_calls_after_the_grace() {
    let served = serve(
        "max-age",
        "idle_timeout_seconds = 0\nmax_age_seconds = 3\nmax_age_grace_seconds = 3\n",
    );
    // No call in progress: closed at the maximum age.
    let conn = handshake(served.tls, &served.roleless).await;
    let took = closed_after(conn, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still open after 15 s\n{}", served.node.log()));
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "closed after {took:?} (max_age_seconds = 3)"
    );

    // A call that never ends (a health Watch) holds it through the grace
    // period, not beyond.
    let creds = Credentials::new(Some(served.operator.files()), None).expect("credentials");
    let endpoint = format!("https://localhost:{}", served.tls.port());
    let channel = client::connect_with(Peer::Node, &endpoint, &creds)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    let ended = tokio::time::timeout(Duration::from_secs(20), watch.message()).await;
    let took = started.elapsed();
    assert!(
        matches!(ended, Ok(Err(_) | Ok(None))),
        "the watch outlived max_age + grace: {ended:?}\n{}",
        served.node.log()
    );
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(10),
        "the watch ended after {took:?} (max_age_seconds = 3, max_age_grace_seconds = 3)"
    );
}
