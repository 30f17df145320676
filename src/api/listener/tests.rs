use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio_stream::StreamExt;

use super::*;

/// Bound on waiting for what must happen at once, so a regression fails
/// instead of hanging.
const FAILSAFE: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits::new(16, &ConnectionConfig::default())
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    (listener, addr)
}

/// A connection to `addr` from the loopback address `source` (all of
/// 127.0.0.0/8 is local on Linux), so tests can be several peers.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closed `stream` (end of file or reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(FAILSAFE, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// `volmig_connections_closed_total` for `reason`, as a node would serve it.
fn closed_total(reason: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(
        &mut text,
        &crate::metrics::NodeMetrics::new().registry(),
    )
    .expect("encode");
    let series = format!("volmig_connections_closed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

/// Whether `stream` is still open (nothing to read, no end of file).
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

// Paused: the 300 ms in which nothing may be accepted pass virtually; the
// third connection already waits in the kernel's backlog, so an accept over
// the limit would return at once, before time moves.
#[tokio::test(start_paused = true)]
async fn a_connection_beyond_the_limit_waits_until_one_closes() {
    let (listener, addr) = listen().await;
    let mut accepted = tcp(
        listener,
        Limits {
            max_connections: 2,
            ..limits()
        },
    );
    let _a = TcpStream::connect(addr).await.expect("connect");
    let _b = TcpStream::connect(addr).await.expect("connect");
    let _c = TcpStream::connect(addr).await.expect("connect");
    let first = accepted.next().await.expect("first").expect("ok");
    let _second = accepted.next().await.expect("second").expect("ok");
    let third = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
    assert!(
        third.is_err(),
        "a third connection was accepted over a limit of 2"
    );
    drop(first);
    let third = tokio::time::timeout(FAILSAFE, accepted.next()).await;
    assert!(
        matches!(third, Ok(Some(Ok(_)))),
        "the third connection was not accepted after one closed"
    );
}

#[tokio::test]
async fn connections_over_a_peers_share_are_closed_at_once_and_others_served() {
    let (listener, addr) = listen().await;
    let mut accepted = tcp(
        listener,
        Limits {
            max_connections_per_peer: 2,
            ..limits()
        },
    );
    let a = connect_from("127.0.0.2", addr).await;
    let b = connect_from("127.0.0.2", addr).await;
    let mut c = connect_from("127.0.0.2", addr).await;
    assert!(closed_by_server(&mut c).await, "a third from one address");
    assert!(still_open(&a) && still_open(&b));
    let _other = connect_from("127.0.0.3", addr).await;
    for _ in 0..3 {
        let conn = tokio::time::timeout(FAILSAFE, accepted.next()).await;
        assert!(matches!(conn, Ok(Some(Ok(_)))), "not accepted");
    }
}

/// A TLS server configuration for `localhost` (no client certificate), and
/// a client configuration trusting it.
fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

async fn tls_connect(
    client: &Arc<rustls::ClientConfig>,
    source: &str,
    addr: SocketAddr,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(source, addr).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn handshakes_in_progress_do_not_take_the_places_of_established_connections() {
    let (server, client) = tls_configs();
    let (listener, addr) = listen().await;
    let mut accepted = tls(
        listener,
        server,
        Limits {
            max_connections: 1,
            ..limits()
        },
    );
    // Five peers that connect and never speak: handshakes in progress, not
    // connections.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(connect_from("127.0.0.2", addr).await);
    }
    let _first = tls_connect(&client, "127.0.0.1", addr)
        .await
        .expect("handshake");
    let conn = tokio::time::timeout(FAILSAFE, accepted.next()).await;
    assert!(
        matches!(conn, Ok(Some(Ok(_)))),
        "a completed handshake got no place behind silent ones"
    );
    // The one place is taken now: a second completed handshake is closed.
    let mut second = tls_connect(&client, "127.0.0.3", addr)
        .await
        .expect("handshake");
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(FAILSAFE, second.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a connection over max_connections was kept: {read:?}"
    );
    assert!(silent.iter().all(still_open));
}

#[tokio::test]
async fn handshakes_over_a_peers_share_are_closed_at_once() {
    let (server, _) = tls_configs();
    let (listener, addr) = listen().await;
    let _accepted = tls(
        listener,
        server,
        Limits {
            max_handshakes_per_peer: 2,
            ..limits()
        },
    );
    // Process-wide counter: other tests may count too, so compare.
    let before = closed_total("handshakes_per_peer");
    let a = connect_from("127.0.0.2", addr).await;
    let b = connect_from("127.0.0.2", addr).await;
    let mut c = connect_from("127.0.0.2", addr).await;
    assert!(
        closed_by_server(&mut c).await,
        "a third handshake from one address"
    );
    assert!(still_open(&a) && still_open(&b));
    assert!(closed_total("handshakes_per_peer") > before, "not counted");
}

#[tokio::test(start_paused = true)]
async fn a_handshake_not_finished_in_time_is_dropped_at_its_deadline() {
    let (server, _) = tls_configs();
    let (listener, addr) = listen().await;
    let _accepted = tls(listener, server, limits());
    let started = tokio::time::Instant::now();
    let mut silent = connect_from("127.0.0.2", addr).await;
    let mut buf = [0u8; 8];
    // Time is paused: it jumps to the next timer when nothing else can run.
    let read = silent.read(&mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(ConnectionConfig::default().handshake_timeout_seconds)
    );
}

#[test]
fn the_health_listener_closes_quiet_connections_at_the_handshake_deadline() {
    let config = ConnectionConfig::default();
    let health = Limits::health(&config);
    assert_eq!(
        health.lifetimes.lifetime().idle,
        Some(Duration::from_secs(config.handshake_timeout_seconds))
    );
    assert_eq!(
        health.max_connections_per_peer,
        config.max_handshakes_per_peer
    );
    assert!(health.max_connections_per_peer < health.max_connections);
}
