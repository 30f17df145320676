//! End-to-end: mutual TLS on the node's and the controller's TCP listeners,
//! with real processes and certificates made here (rcgen): what is refused
//! (plaintext, another CA, an expired certificate, plaintext on a
//! non-loopback address), rotation of the server certificate without a
//! restart, and CLI → controller → node over mTLS migrating a writing guest
//! with no lost record.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::certs::{free_port, Leaf, LeafSpec, TestCa};
use harness::controller::ControllerProcess;
use harness::node::NodeProcess;
use harness::scratch::Scratch;
use harness::{DirPool, Guest, Pool};
use volmig::api::client::{self, Credentials, Peer};
use volmig::proto;
use volmig::proto::node_client::NodeClient;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);
const OPERATOR: &str = "operator.volmig.test";

fn volmig(args: &[&str]) -> (i32, String, String) {
    harness::volmig(args, &[])
}

fn server_leaf(ca: &TestCa, stem: &str) -> Leaf {
    ca.leaf(LeafSpec::new(stem, stem, &["localhost", "127.0.0.1"]))
}

async fn info_with(endpoint: &str, leaf: Option<&Leaf>) -> Result<proto::NodeInfo, String> {
    let creds = Credentials::new(leaf.map(Leaf::files), None).map_err(|e| e.to_string())?;
    let channel = client::connect_with(Peer::Node, endpoint, &creds)
        .await
        .map_err(|e| e.to_string())?;
    NodeClient::new(channel)
        .get_info(proto::GetInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// The leaf certificate the server at `addr` presents now, as DER.
async fn served_certificate(addr: &str, leaf: &Leaf) -> Vec<u8> {
    let connector = leaf.tls_connector();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("server certificate")
}

fn pem_der(path: &Path) -> Vec<u8> {
    volmig::api::tls::load_certs(path).expect("cert")[0]
        .as_ref()
        .to_vec()
}

/// Replaces `dst` by `src` atomically (as a careful rotation would).
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).expect("copy");
    std::fs::rename(&tmp, dst).expect("rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_port_refuses_plaintext_another_ca_and_expired_certificates_and_rotates_its_certificate(
) {
    let scratch = Scratch::new("tls-refuse");
    let ca = TestCa::new(scratch.path(), "main");
    let other = TestCa::new(scratch.path(), "other");
    let server = server_leaf(&ca, "node-server");
    let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    // Signed by another CA; it trusts the server's CA, so only the node can refuse.
    let foreign = Leaf {
        ca: ca.ca_file.clone(),
        ..other.leaf(LeafSpec::new("foreign", OPERATOR, &[OPERATOR]))
    };
    let expired = ca.leaf(LeafSpec {
        expired: true,
        ..LeafSpec::new("expired", OPERATOR, &[OPERATOR])
    });
    let config = scratch.write(
        "node.toml",
        &format!("[[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n"),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let flags = [server.flags(), vec!["--config".into(), config]].concat();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = NodeProcess::start_tcp("tls-refuse", &addr, &flags);
    let https = format!(
        "https://localhost:{}",
        addr.rsplit(':').next().expect("port")
    );

    let info = info_with(&https, Some(&operator))
        .await
        .unwrap_or_else(|e| panic!("mTLS call: {e}\n{}", node.log()));
    assert_eq!(info.node_id, node.node_id());

    let plain = info_with(&format!("http://{addr}"), None).await;
    assert!(plain.is_err(), "plaintext answered: {plain:?}");
    let refused = info_with(&https, Some(&foreign)).await;
    assert!(
        refused.is_err(),
        "another CA's certificate answered: {refused:?}"
    );
    let refused = info_with(&https, Some(&expired)).await;
    assert!(
        refused.is_err(),
        "an expired certificate answered: {refused:?}"
    );
    let log = node.wait_for_log(|l| l.contains("UnknownIssuer"));
    assert!(log.contains("UnknownIssuer"), "another CA: {log}");
    let log = node.wait_for_log(|l| l.contains("certificate expired"));
    assert!(log.contains("certificate expired"), "expired: {log}");

    // Rotation: new files in place, the next handshake serves them.
    let first = served_certificate(&addr, &operator).await;
    assert_eq!(first, pem_der(&server.cert));
    let rotated = server_leaf(&ca, "node-server-2");
    replace(&rotated.key, &server.key);
    replace(&rotated.cert, &server.cert);
    let want = pem_der(&rotated.cert);
    let started = Instant::now();
    loop {
        let now = served_certificate(&addr, &operator).await;
        if now == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rotated certificate was not served:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "rotated certificate served {:?} after the files changed",
        started.elapsed()
    );
    // And calls keep working with it.
    info_with(&https, Some(&operator))
        .await
        .expect("call after rotation");
}

#[test]
fn plaintext_on_a_non_loopback_address_needs_an_explicit_opt_in() {
    let scratch = Scratch::new("tls-plain");
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let state = scratch.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args([
            "node",
            "--listen",
            &listen,
            "--node-id",
            "plain",
            "--state-dir",
        ])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run node");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve plaintext") && err.contains("--insecure-plaintext"),
        "{err}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args([
            "node",
            "--listen",
            &listen,
            "--node-id",
            "plain",
            "--insecure-plaintext",
            "--state-dir",
        ])
        .arg(&state)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    let up = harness::try_wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(up, "did not listen: {log}");
    assert!(log.contains("WARN") && log.contains("PLAINTEXT"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_controller_node_over_mtls_migrate_a_writing_guest_without_losing_records() {
    let src = DirPool::new("tls-src");
    let dst = DirPool::new("tls-dst");
    let guest = Guest::start("tls-guest", &src, "qcow2", 64 * MIB);
    let scratch = Scratch::new("tls-e2e");
    let ca = TestCa::new(scratch.path(), "e2e");
    let controller_leaf = ca.leaf(LeafSpec::new(
        "controller",
        "controller.volmig.test",
        &["localhost", "127.0.0.1", "controller.volmig.test"],
    ));
    let node_port = free_port();
    let node_name = "node1.volmig.test";
    let node_leaf = ca.leaf(LeafSpec {
        uri: Some("spiffe://volmig.test/node/n1"),
        ..LeafSpec::new("node1", node_name, &["localhost", "127.0.0.1", node_name])
    });
    let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));

    let ctl_addr = format!("127.0.0.1:{}", free_port());
    let ctl_https = format!(
        "https://localhost:{}",
        ctl_addr.rsplit(':').next().expect("port")
    );
    let node_config = scratch.write(
        "node.toml",
        &format!(
            "controller = \"{ctl_https}\"\nadvertise = \"https://localhost:{node_port}\"\n{}\
             [[identities]]\ndns = \"controller.volmig.test\"\nrole = \"operator\"\n",
            node_leaf.toml()
        ),
    );
    let node_addr = format!("127.0.0.1:{node_port}");
    let node = NodeProcess::start_tcp("tls-n1", &node_addr, &["--config", &node_config]);
    let node_id = node.node_id().to_string();
    let ctl_config = format!(
        "heartbeat_interval_seconds = 1\ndown_after_seconds = 5\n{}\
         [[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n\
         [[identities]]\nuri = \"spiffe://volmig.test/node/n1\"\nrole = \"node\"\nnode_id = \"{node_id}\"\n",
        controller_leaf.toml()
    );
    let ctl = ControllerProcess::start_tcp("tls-ctl", &ctl_addr, &ctl_config, &[]);
    guest.wait_writing(20, BOOT);

    let cli = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--controller".to_string(), ctl_https.clone()]);
        all.extend(operator.flags());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        volmig(&all)
    };
    // The node registers over mTLS as its bound identity.
    let mut answer = (1, String::new(), String::new());
    let registered = harness::try_wait_until(Duration::from_secs(30), || {
        answer = cli(&["nodes", "--json"]);
        answer.0 == 0 && answer.1.contains(&node_id) && answer.1.contains("UP")
    });
    assert!(
        registered,
        "node did not register over mTLS: {answer:?}\n{}",
        ctl.log()
    );

    let (code, out, err) = cli(&[
        "migrate",
        "--domain",
        guest.name(),
        "--disk",
        "vda",
        "--to-pool",
        dst.name(),
        "--json",
    ]);
    assert_eq!(code, 0, "migrate over mTLS: {err}\n{out}\n{}", ctl.log());
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("events"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    assert_eq!(guest.live_disk_source("vda").path, dest);

    // Audit: the controller names the operator; the node names the
    // controller and, from x-volmig-caller, the operator it acted for.
    let has_audit = |rpc: &'static str| {
        move |log: &str| {
            log.lines()
                .any(|l| l.contains(" audit:") && l.contains(rpc))
        }
    };
    let audit_line = |log: &str, rpc: &str| {
        log.lines()
            .find(|l| l.contains(" audit:") && l.contains(rpc))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no audit line for {rpc}:\n{log}"))
    };
    let line = audit_line(
        &ctl.wait_for_log(has_audit("Controller/MigrateVolume")),
        "Controller/MigrateVolume",
    );
    assert!(
        line.contains(&format!("identity=\"cert:{OPERATOR}\"")) && line.contains("code=\"OK\""),
        "{line}"
    );
    assert!(line.contains(&format!("domain={}", guest.name())), "{line}");
    let line = audit_line(
        &node.wait_for_log(has_audit("Node/MigrateVolume")),
        "Node/MigrateVolume",
    );
    assert!(
        line.contains(&format!(
            "identity=\"cert:controller.volmig.test for cert:{OPERATOR}\""
        )),
        "{line}"
    );
    eprintln!("node audit line: {line}");

    // Without a client certificate the controller answers nothing.
    let (code, _, err) = volmig(&["nodes", "--controller", &ctl_https]);
    assert_eq!(code, 1);
    assert!(err.contains("https:// needs"), "{err}");

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}
