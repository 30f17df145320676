//! End-to-end: the `volmig` binary as an operator and a control plane use it —
//! the CLI against a real node, the persistent-definition repair, TCP, and a
//! controller on its own.

mod harness;

use std::process::Command;
use std::time::Duration;

use harness::node::{self, NodeProcess};
use harness::{DirPool, Guest, Pool};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

fn volmig(args: &[&str]) -> (i32, String, String) {
    harness::volmig(args, &[])
}

#[test]
fn cli_migrates_with_json_events_and_lists_state() {
    let src = DirPool::new("c-src");
    let dst = DirPool::new("c-dst");
    let guest = Guest::start("c-guest", &src, "qcow2", 64 * MIB);
    guest.wait_writing(20, BOOT);
    let node = NodeProcess::start("c-node", &[]);
    let ep = node.endpoint();

    let (code, out, err) = volmig(&["disks", "--node", &ep, "--domain", guest.name()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(src.name()), "{out}");

    let (code, out, err) = volmig(&[
        "migrate",
        "--node",
        &ep,
        "--domain",
        guest.name(),
        "--disk",
        "vda",
        "--to-pool",
        dst.name(),
        "--json",
    ]);
    assert_eq!(code, 0, "migrate failed: {err}\n{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    assert_eq!(phases.first(), Some(&"PHASE_ACCEPTED"));
    assert_eq!(phases.last(), Some(&"PHASE_COMPLETED"));
    let id = events[0]["migration_id"].as_str().expect("id").to_string();
    let dest = events
        .last()
        .and_then(|e| e["result"]["destination_source"].as_str())
        .expect("result")
        .to_string();
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);

    let (code, out, _) = volmig(&["status", "--node", &ep, &id]);
    assert_eq!(code, 0);
    assert!(out.contains("COMPLETED"), "{out}");
    let (code, out, _) = volmig(&["list", "--node", &ep, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");

    // An operator's mistake: a clear error, exit status 1.
    let (code, _, err) = volmig(&[
        "migrate",
        "--node",
        &ep,
        "--domain",
        "volmig-no-such-domain",
        "--disk",
        "vda",
        "--to-pool",
        dst.name(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
    // No node there.
    let (code, _, err) = volmig(&["info", "--node", "unix:///nonexistent/volmig.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("UNAVAILABLE") || err.contains("cannot connect"),
        "{err}"
    );

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_definition_libvirt_does_not_update_is_repaired() {
    // libvirt rewrites the persistent definition on pivot only when its disk source
    // equals the live one. Make them differ (a stale copy of the disk in the
    // persistent definition), as after an out-of-band edit, and check volmig repairs it.
    let src = DirPool::new("r-src");
    let dst = DirPool::new("r-dst");
    let guest = Guest::start("r-guest", &src, "qcow2", 64 * MIB);
    guest.wait_writing(20, BOOT);
    let stale = src.new_volume_name("r-stale");
    let stale_path = src.create_volume(&stale, 64 * MIB, "qcow2");
    let mut xml = guest.persistent_xml();
    let live_path = guest.live_disk_source("vda").path;
    xml = xml.replace(&live_path, &stale_path);
    let file = guest.dir().join("stale.xml");
    std::fs::write(&file, xml).expect("write");
    harness::virsh_ok(&["define", &file.to_string_lossy()]);
    assert_eq!(guest.persistent_disk_source("vda").path, stale_path);

    let node = NodeProcess::start("r-node", &[]);
    let mut client = node.client().await;
    let events = node::migrate(&mut client, node::request(guest.name(), "vda", dst.name()))
        .await
        .expect("migrate");
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = events
        .last()
        .and_then(|e| e.result.clone())
        .expect("result");
    assert!(result.persistent_definition_repaired, "{result:?}");
    assert_eq!(
        guest.persistent_disk_source("vda").path,
        result.destination_source
    );
    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_serves_health_and_lists_no_nodes_when_alone() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("ctl"));
    let sock = dir.join("controller.sock");
    let endpoint = format!("unix://{}", sock.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args(["controller", "--listen", &endpoint, "--state-dir"])
        .arg(dir.join("state"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start controller");
    harness::wait_until(Duration::from_secs(20), "the controller socket", || {
        sock.exists()
    });
    let channel = volmig::api::client::connect(&endpoint)
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "volmig.v1.Controller".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut controller = proto::controller_client::ControllerClient::new(channel);
    let nodes = controller
        .list_nodes(proto::ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner();
    assert!(nodes.nodes.is_empty(), "{nodes:?}");
    let err = controller
        .plan_migration(node::request("volmig-no-such-domain", "vda", ""))
        .await
        .expect_err("no node runs it");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let _ = child.kill();
    let _ = child.wait();
    harness::remove_dir_noisy(&dir);
}

#[test]
fn node_listens_on_tcp_when_configured() {
    harness::ensure_host();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = harness::make_dir(&harness::unique_name("tcp-node"));
    // TCP callers need credentials even on loopback: a viewer token here.
    let token = "tcp-test-token";
    let config = dir.join("node.toml");
    let hash = harness::run_ok(
        "sh",
        &[
            "-c",
            &format!("printf %s {token} | sha256sum | cut -d' ' -f1"),
        ],
    );
    std::fs::write(
        &config,
        format!(
            "[[tokens]]\nname = \"test\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
            hash.trim()
        ),
    )
    .expect("config");
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args([
            "node",
            "--listen",
            &listen,
            "--node-id",
            "tcp-node",
            "--config",
        ])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .spawn()
        .expect("start node");
    let endpoint = format!("http://{listen}");
    let info = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volmig"));
        cmd.args(["info", "--node", &endpoint, "--json"])
            .env("RUST_LOG", "warn");
        if let Some(t) = token {
            cmd.env("VOLMIG_TOKEN", t);
        }
        let out = cmd.output().expect("run volmig");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut answer = (1, String::new(), String::new());
    let up = harness::try_wait_until(Duration::from_secs(20), || {
        answer = info(Some(token));
        answer.0 == 0
    });
    let anonymous = info(None);
    let _ = child.kill();
    let _ = child.wait();
    harness::remove_dir_noisy(&dir);
    assert!(up, "no answer over TCP: {answer:?}");
    assert!(answer.1.contains("\"tcp-node\""), "{}", answer.1);
    assert_eq!(anonymous.0, 1);
    assert!(anonymous.2.contains("UNAUTHENTICATED"), "{anonymous:?}");
}
