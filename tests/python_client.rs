//! Interop: a Python grpcio client (tests/python/node_client.py, in a venv
//! made by tests/python/setup-venv.sh) discovers a real node's API by server
//! reflection (v1alpha, the only one grpcio-reflection asks) and calls it,
//! over the unix socket (with `grpc.default_authority` = localhost) and over
//! mutual TLS on TCP.

mod harness;

use std::process::Command;

use harness::certs::{free_port, LeafSpec, TestCa};
use harness::node::NodeProcess;

fn python() -> String {
    let script = harness::repo_root().join("tests/python/setup-venv.sh");
    harness::run_with_timeout(
        "bash",
        &[&script.to_string_lossy()],
        std::time::Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("python venv: {e}"))
    .trim()
    .to_string()
}

fn run_client(python: &str, args: &[&str]) -> serde_json::Value {
    let script = harness::repo_root().join("tests/python/node_client.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(answer: &serde_json::Value, node_id: &str) {
    let services: Vec<&str> = answer["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for want in [
        "volmig.v1.Node",
        "volmig.v1.Identity",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&want), "{want} not discovered: {answer}");
    }
    let methods = answer["node_methods"].as_array().expect("methods");
    assert!(methods.iter().any(|m| m == "MigrateVolume"), "{answer}");
    assert_eq!(answer["info"]["nodeId"], node_id, "{answer}");
    assert!(answer["pool_count"].as_u64().is_some(), "{answer}");
}

#[test]
fn python_grpcio_discovers_and_calls_the_node_over_unix_and_mtls() {
    let python = python();
    let node = NodeProcess::start("py-unix", &[]);
    let socket = node.endpoint();
    let path = socket.strip_prefix("unix://").expect("unix endpoint");
    let answer = run_client(&python, &["--unix", path]);
    check(&answer, node.node_id());
    eprintln!("over the unix socket: {answer}");

    let dir = harness::make_dir(&harness::unique_name("py-tls"));
    let ca = TestCa::new(&dir, "py");
    let server = ca.leaf(LeafSpec::new(
        "server",
        "server",
        &["localhost", "127.0.0.1"],
    ));
    let client = ca.leaf(LeafSpec::new(
        "python",
        "python.volmig.test",
        &["python.volmig.test"],
    ));
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "[[identities]]\ndns = \"python.volmig.test\"\nrole = \"viewer\"\n",
    )
    .expect("config");
    let port = free_port();
    let mut flags = server.flags();
    flags.extend(["--config".to_string(), config.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls_node = NodeProcess::start_tcp("py-tls", &format!("127.0.0.1:{port}"), &flags);
    let target = format!("localhost:{port}");
    let (ca_file, cert, key) = (
        client.ca.display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let answer = run_client(
        &python,
        &[
            "--tls", &target, "--ca", &ca_file, "--cert", &cert, "--key", &key,
        ],
    );
    check(&answer, tls_node.node_id());
    eprintln!("over mutual TLS: {answer}");
    drop(tls_node);
    harness::remove_dir_noisy(&dir);
}
