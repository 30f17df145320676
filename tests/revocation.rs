//! End-to-end: revocation and CA rotation reach connections that are already
//! open, and trust files that other users could change are refused, with a
//! real `volmig node` over mutual TLS:
//! - a certificate revoked by rewriting `tls_crl` is refused on its open
//!   channel (UNAUTHENTICATED, no restart) and at its next handshake, while
//!   another certificate keeps working;
//! - after the CA file is replaced by another CA, a client still connected
//!   with the old CA's certificate is refused on its open channel;
//! - a client whose CRL revokes the server's certificate does not connect;
//! - a key readable by others or a CA file writable by others stops the start
//!   (naming the file and its mode), and a CA file made writable by others
//!   after the start is not reloaded: a CA appended to it is not trusted.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::certs::{free_port, Leaf, LeafSpec, TestCa};
use harness::node::NodeProcess;
use harness::scratch::Scratch;
use volmig::api::client::{self, AuthChannel as Channel, Credentials, Peer};
use volmig::api::tls::TlsFiles;
use volmig::proto;
use volmig::proto::node_client::NodeClient;

const OPERATOR: &str = "operator.volmig.test";
const OPERATOR2: &str = "operator2.volmig.test";

/// How long a change of the trust files may take to reach open connections
/// (the node looks at the files about once a second).
const TAKES_EFFECT: Duration = Duration::from_secs(10);

fn server_leaf(ca: &TestCa, stem: &str) -> Leaf {
    ca.leaf(LeafSpec::new(stem, stem, &["localhost", "127.0.0.1"]))
}

/// A node config giving both operator certificates the operator role, plus `extra`.
fn node_config(scratch: &Scratch, extra: &str) -> PathBuf {
    scratch.file(
        "node.toml",
        &format!(
            "{extra}\n[[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n\n\
             [[identities]]\ndns = \"{OPERATOR2}\"\nrole = \"operator\"\n"
        ),
    )
}

/// A node serving mTLS with `server`'s files and the config file `config`;
/// returns it and its `https://localhost:PORT` endpoint.
fn start_node(purpose: &str, server: &Leaf, config: &Path) -> (NodeProcess, String) {
    let port = free_port();
    let flags = [
        server.flags(),
        vec!["--config".into(), config.display().to_string()],
    ]
    .concat();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = NodeProcess::start_tcp(purpose, &format!("127.0.0.1:{port}"), &flags);
    (node, format!("https://localhost:{port}"))
}

/// A channel (one connection, kept open) to `endpoint` with `leaf`'s certificate.
async fn channel(endpoint: &str, leaf: &Leaf) -> Result<Channel, String> {
    let creds = Credentials::new(Some(leaf.files()), None).map_err(|e| e.to_string())?;
    client::connect_with(Peer::Node, endpoint, &creds)
        .await
        .map_err(|e| e.to_string())
}

/// GetInfo on `channel`: the node id, or the status code and message.
async fn info(channel: &Channel) -> Result<String, (tonic::Code, String)> {
    NodeClient::new(channel.clone())
        .get_info(proto::GetInfoRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// GetInfo over a new connection with `leaf`.
async fn info_new(endpoint: &str, leaf: &Leaf) -> Result<String, String> {
    let channel = channel(endpoint, leaf).await?;
    info(&channel)
        .await
        .map_err(|(code, message)| format!("{code:?}: {message}"))
}

/// Calls GetInfo on `channel` until it is refused (up to [`TAKES_EFFECT`]);
/// returns the refusal and how long it took.
async fn refused_within(channel: &Channel, node: &NodeProcess) -> (tonic::Code, String, Duration) {
    let started = Instant::now();
    loop {
        match info(channel).await {
            Ok(_) => {
                assert!(
                    started.elapsed() < TAKES_EFFECT,
                    "still answered {TAKES_EFFECT:?} after the change:\n{}",
                    node.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((code, message)) => return (code, message, started.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_revoked_in_the_crl_is_refused_on_its_open_connection_and_at_its_next_handshake(
) {
    let scratch = Scratch::new("crl-revoke");
    let ca = TestCa::new(scratch.path(), "main");
    let server = server_leaf(&ca, "node-server");
    let revoked = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    let kept = ca.leaf(LeafSpec::new("operator2", OPERATOR2, &[OPERATOR2]));
    let crl = scratch.path().join("ca.crl");
    ca.write_crl(&crl, &[]);
    let config = node_config(&scratch, &format!("tls_crl = \"{}\"", crl.display()));
    let (node, https) = start_node("crl-revoke", &server, &config);

    let open = channel(&https, &revoked).await.expect("connect");
    let kept_open = channel(&https, &kept).await.expect("connect");
    assert_eq!(info(&open).await.as_deref(), Ok(node.node_id()));
    assert_eq!(info(&kept_open).await.as_deref(), Ok(node.node_id()));

    ca.write_crl(&crl, &[&revoked]);
    let (code, message, took) = refused_within(&open, &node).await;
    eprintln!("revoked certificate refused on its open connection {took:?} after the CRL changed");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("revoked"), "{message}");
    let refusal = |log: &str| {
        log.lines()
            .find(|l| l.contains("refused a request on an established connection"))
            .map(str::to_string)
    };
    let log = node.wait_for_log(|l| refusal(l).is_some());
    let line = refusal(&log).unwrap_or_default();
    assert!(
        line.contains(OPERATOR) && line.contains("127.0.0.1"),
        "the refusal is logged with the peer and its certificate's names:\n{log}"
    );

    // A new connection with the revoked certificate fails its handshake.
    let again = info_new(&https, &revoked).await;
    assert!(again.is_err(), "a revoked certificate connected: {again:?}");
    let log = node.wait_for_log(|l| l.contains("TLS handshake failed") && l.contains("Revoked"));
    assert!(
        log.contains("TLS handshake failed") && log.contains("Revoked"),
        "the handshake is refused for revocation:\n{log}"
    );

    // The other certificate keeps working, open and new.
    assert_eq!(info(&kept_open).await.as_deref(), Ok(node.node_id()));
    assert_eq!(info_new(&https, &kept).await.as_deref(), Ok(node.node_id()));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_ca_file_is_replaced_an_old_ca_certificate_is_refused_on_its_open_connection() {
    let scratch = Scratch::new("ca-rotate");
    let old = TestCa::new(scratch.path(), "old");
    let new = TestCa::new(scratch.path(), "new");
    let server = server_leaf(&old, "node-server");
    // The node's own copy of its CA file, which the rotation replaces.
    let node_ca = scratch.path().join("node-ca.pem");
    std::fs::copy(&old.ca_file, &node_ca).expect("copy CA");
    let server = Leaf {
        ca: node_ca.clone(),
        ..server
    };
    let old_client = old.leaf(LeafSpec::new("operator-old", OPERATOR, &[OPERATOR]));
    let new_client = new.leaf(LeafSpec::new("operator-new", OPERATOR2, &[OPERATOR2]));
    let config = node_config(&scratch, "");
    let (node, https) = start_node("ca-rotate", &server, &config);

    let open = channel(&https, &old_client).await.expect("connect");
    assert_eq!(info(&open).await.as_deref(), Ok(node.node_id()));

    // The rotation: the new CA's server certificate, then the new CA alone.
    let rotated = server_leaf(&new, "node-server-new");
    replace(&rotated.key, &server.key);
    replace(&rotated.cert, &server.cert);
    replace(&new.ca_file, &node_ca);

    let (code, message, took) = refused_within(&open, &node).await;
    eprintln!("old CA's certificate refused on its open connection {took:?} after the CA changed");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("no longer chains"), "{message}");
    assert_eq!(
        info_new(&https, &new_client).await.as_deref(),
        Ok(node.node_id()),
        "the new CA's certificate works"
    );
}

/// Replaces `dst` by a copy of `src` atomically (as a careful rotation would).
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).expect("copy");
    std::fs::rename(&tmp, dst).expect("rename");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Starts `volmig node` on a free port with `flags`, expecting it to exit
/// with an error before it listens; returns what it printed.
fn refused_start(dir: &Path, flags: &[String]) -> String {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .arg("node")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-id",
            "refused",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(flags)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start volmig node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "volmig node started:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert!(!status.success(), "volmig node exited successfully");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_files_others_can_change_or_read_are_refused_at_start_and_at_reload() {
    let scratch = Scratch::new("trust-modes");
    let ca = TestCa::new(scratch.path(), "main");
    let other = TestCa::new(scratch.path(), "other");
    // The node's own copy of the CA file (its clients keep theirs).
    let node_ca = scratch.path().join("node-ca.pem");
    std::fs::copy(&ca.ca_file, &node_ca).expect("copy CA");
    let server = Leaf {
        ca: node_ca.clone(),
        ..server_leaf(&ca, "node-server")
    };
    let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    let config = node_config(&scratch, "");
    let flags = [
        server.flags(),
        vec!["--config".into(), config.display().to_string()],
    ]
    .concat();

    chmod(&server.key, 0o644);
    let out = refused_start(scratch.path(), &flags);
    assert!(
        out.contains(&server.key.display().to_string()) && out.contains("0644"),
        "a key others can read is refused, naming it and its mode:\n{out}"
    );
    chmod(&server.key, 0o600);

    chmod(&node_ca, 0o666);
    let out = refused_start(scratch.path(), &flags);
    assert!(
        out.contains(&node_ca.display().to_string()) && out.contains("0666"),
        "a CA file others can change is refused, naming it and its mode:\n{out}"
    );
    chmod(&node_ca, 0o644);

    let (node, https) = start_node("trust-modes", &server, &config);
    assert_eq!(
        info_new(&https, &operator).await.as_deref(),
        Ok(node.node_id())
    );
    // What a local user could do with a CA file left writable: add their CA.
    chmod(&node_ca, 0o666);
    let main_ca = std::fs::read_to_string(&node_ca).expect("CA");
    let other_ca = std::fs::read_to_string(&other.ca_file).expect("other CA");
    std::fs::write(&node_ca, format!("{main_ca}{other_ca}")).expect("append CA");
    // Their certificate would work if the CA file were reloaded.
    let intruder = Leaf {
        ca: ca.ca_file.clone(),
        ..other.leaf(LeafSpec::new("intruder", OPERATOR, &[OPERATOR]))
    };

    let refused = info_new(&https, &intruder).await;
    assert!(
        refused.is_err(),
        "a CA added to a CA file others can change was trusted: {refused:?}"
    );
    let log = node.wait_for_log(|l| l.contains("cannot reload TLS material") && l.contains("0666"));
    assert!(
        log.contains("cannot reload TLS material")
            && log.contains(&node_ca.display().to_string())
            && log.contains("0666"),
        "the reload is refused with a warning naming the file and its mode:\n{log}"
    );
    // The trust loaded before is still in use.
    assert_eq!(
        info_new(&https, &operator).await.as_deref(),
        Ok(node.node_id())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_refuses_a_server_whose_certificate_its_crl_revokes() {
    let scratch = Scratch::new("crl-server");
    let ca = TestCa::new(scratch.path(), "main");
    let server = server_leaf(&ca, "node-server");
    let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    let config = node_config(&scratch, "");
    let (node, https) = start_node("crl-server", &server, &config);
    let crl = scratch.path().join("client.crl");
    let with_crl = |leaf: &Leaf| TlsFiles {
        crl: Some(crl.clone()),
        ..leaf.files()
    };
    let info_checked = |files: TlsFiles| {
        let https = https.clone();
        async move {
            let creds = Credentials::new(Some(files), None).map_err(|e| e.to_string())?;
            let channel = client::connect_with(Peer::Node, &https, &creds)
                .await
                .map_err(|e| e.to_string())?;
            info(&channel)
                .await
                .map_err(|(code, message)| format!("{code:?}: {message}"))
        }
    };

    ca.write_crl(&crl, &[]);
    assert_eq!(
        info_checked(with_crl(&operator)).await.as_deref(),
        Ok(node.node_id())
    );
    ca.write_crl(&crl, &[&server]);
    let refused = info_checked(with_crl(&operator)).await;
    let err = refused.expect_err("a revoked server certificate was accepted");
    assert!(err.contains("Revoked"), "{err}");
}
