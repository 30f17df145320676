//! The Python package `volmig` (clients/python) against a real node and a real
//! controller, as a control plane would use it.
//!
//! tests/python/package-venv.sh builds the wheel (stubs generated from proto/ at build
//! time) and installs it into a fresh virtualenv; the Python side is pytest files in
//! tests/python/package/ that read their endpoints from the environment and write what
//! they saw to JSON files, which this side checks against libvirt and the guest's own
//! records (0 lost after a cold restart). Which RPC a dropped stream re-sends is also
//! checked against an in-process fake node (test_retries.py).

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::certs::{free_port, write_private, LeafSpec, TestCa};
use harness::checks::assert_on_destination;
use harness::node::{self, NodeProcess};
use harness::scratch::Scratch;
use harness::{writing_guest_with_data, DirPool, Pool};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use volmig::proto;

/// The fresh venv with the wheel installed.
struct Package {
    python: String,
}

fn package(dir: &Path) -> Package {
    let script = harness::repo_root().join("tests/python/package-venv.sh");
    let out = harness::run_with_timeout(
        "bash",
        &[&script.to_string_lossy(), &dir.to_string_lossy()],
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("building and installing the wheel: {e}"));
    let python = out.lines().last().expect("venv python").trim().to_string();
    Package { python }
}

fn python_tests() -> PathBuf {
    harness::repo_root().join("tests/python/package")
}

/// `python -m pytest TEST` with `env`; answers go to `out`.
fn pytest_command(
    pkg: &Package,
    test: &str,
    out: &Path,
    env: &[(&str, &str)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&pkg.python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .arg(python_tests().join(test))
        .current_dir(python_tests())
        .env("VOLMIG_OUT", out)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    cmd
}

fn check_passed(test: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "pytest {test} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "pytest {test}: {}",
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
    );
}

async fn pytest(pkg: &Package, test: &str, out: &Path, env: &[(&str, &str)]) {
    let output = pytest_command(pkg, test, out, env)
        .output()
        .await
        .expect("run pytest");
    check_passed(test, &output);
}

fn answer(out: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name}.json: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json: {e}: {text}"))
}

/// The README's hook example, as written (between its example markers).
fn readme_example() -> String {
    let readme = std::fs::read_to_string(harness::repo_root().join("clients/python/README.md"))
        .expect("README");
    let block = readme
        .split("<!-- example: move_volume.py -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- end example -->").next())
        .expect("README example markers");
    let code = block
        .trim()
        .strip_prefix("```python")
        .and_then(|c| c.strip_suffix("```"))
        .expect("a python block");
    code.trim_start().to_string()
}

#[test]
fn python_wheel_installs_into_a_fresh_venv_and_the_readme_example_passes_mypy_strict() {
    let scratch = Scratch::new("py-wheel");
    let pkg = package(scratch.path());
    let example = scratch.path().join("move_volume.py");
    std::fs::write(&example, readme_example()).expect("example");
    // The example, as a user would check it; then the package's own code (the
    // generated protobuf modules are not ours to fix).
    let config = scratch.path().join("mypy.ini");
    std::fs::write(
        &config,
        "[mypy]\nstrict = True\n[mypy-volmig.v1.*]\nignore_errors = True\n",
    )
    .expect("mypy.ini");
    for args in [
        vec!["-m", "mypy", "--strict", example.to_str().expect("path")],
        vec![
            "-m",
            "mypy",
            "--config-file",
            config.to_str().expect("path"),
            "-p",
            "volmig",
        ],
    ] {
        let out = harness::run_with_timeout(&pkg.python, &args, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("mypy {args:?}: {e}"));
        eprintln!("mypy {args:?}: {}", out.trim());
    }
    let out = std::process::Command::new(&pkg.python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(["test_units.py", "test_retries.py"])
        .current_dir(python_tests())
        .output()
        .expect("pytest");
    check_passed("test_units.py test_retries.py", &out);
}

/// A unix-socket proxy in front of a node whose open connections the test can
/// close at once (the server side dropping the client), while it keeps accepting.
struct CuttingProxy {
    path: PathBuf,
    cut: watch::Sender<u64>,
}

impl CuttingProxy {
    fn start(path: PathBuf, upstream: PathBuf) -> CuttingProxy {
        let listener = UnixListener::bind(&path).expect("proxy socket");
        let (cut, cuts) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        CuttingProxy { path, cut }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Closes every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Waits for the guest's active migration on `node`, follows it until the copy is
/// under way (not near its end), cuts `proxy`, and checks the migration is still
/// copying. Returns the progress at the cut.
async fn cut_mid_copy(node: &NodeProcess, domain: &str, proxy: &CuttingProxy) -> (u64, u64) {
    let mut client = node.client().await;
    let id = loop {
        let list = client
            .list_migrations(proto::ListMigrationsRequest {
                domain: domain.to_string(),
                active_only: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        if let Some(m) = list.migrations.first() {
            break m.migration_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stream = client
        .watch_migration(proto::WatchMigrationRequest {
            migration_id: id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let seen = node::read_until(&mut stream, |e| node::mid_copy(e) || node::is_terminal(e)).await;
    let last = seen.last().expect("events");
    assert!(
        node::mid_copy(last),
        "the copy ended before it could be cut: {last:#?}"
    );
    proxy.cut();
    let progress = last.progress.expect("progress");
    let now = client
        .get_migration(proto::GetMigrationRequest { migration_id: id })
        .await
        .expect("get")
        .into_inner();
    let phase = now.latest.as_ref().map(node::phase);
    assert_eq!(
        phase,
        Some(proto::Phase::Copying),
        "the cut must land mid-copy"
    );
    (progress.bytes_done, progress.bytes_total)
}

fn on_destination(guest: &harness::Guest, answer: &serde_json::Value) {
    let result = proto::MigrationResult {
        destination_source: answer["destination_source"]
            .as_str()
            .expect("destination")
            .to_string(),
        ..Default::default()
    };
    assert_on_destination(guest, "vda", &result);
}

fn phases(answer: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["phase"].as_str().expect("phase").to_string())
        .collect();
    out.dedup();
    out
}

/// A controller and a node over mutual TLS, the controller also taking two bearer
/// tokens (operator, viewer); pool `tagged` carries `tag`.
struct TlsCluster {
    _node: NodeProcess,
    ctl: harness::controller::ControllerProcess,
    https: String,
    client: harness::certs::Leaf,
    operator_token: PathBuf,
    viewer_token: PathBuf,
}

fn sha256_hex(token: &str) -> String {
    let out = harness::run_ok(
        "sh",
        &[
            "-c",
            &format!("printf %s '{token}' | sha256sum | cut -d' ' -f1"),
        ],
    );
    out.trim().to_string()
}

async fn tls_cluster(dir: &Path, tag: &str, tagged: &DirPool) -> TlsCluster {
    let ca = TestCa::new(dir, "py");
    let ctl_leaf = ca.leaf(LeafSpec::new(
        "controller",
        "controller.volmig.test",
        &["localhost", "127.0.0.1"],
    ));
    let node_leaf = ca.leaf(LeafSpec {
        uri: Some("spiffe://volmig.test/node/py"),
        ..LeafSpec::new("node", "node.volmig.test", &["localhost", "127.0.0.1"])
    });
    let client = ca.leaf(LeafSpec::new(
        "python",
        "python.volmig.test",
        &["python.volmig.test"],
    ));
    let (node_port, ctl_port) = (free_port(), free_port());
    let https = format!("https://localhost:{ctl_port}");
    let node_config = dir.join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "controller = \"{https}\"\nadvertise = \"https://localhost:{node_port}\"\n{}\
             [[identities]]\ndns = \"localhost\"\nrole = \"operator\"\n",
            node_leaf.toml()
        ),
    )
    .expect("node config");
    let node = NodeProcess::start_tcp(
        "py-tls-node",
        &format!("127.0.0.1:{node_port}"),
        &["--config", &node_config.display().to_string()],
    );
    let tokens = [
        ("operator", "py-operator-token-0123456789abcdef0123"),
        ("viewer", "py-viewer-token-0123456789abcdef012345"),
    ];
    let mut config = format!(
        "heartbeat_interval_seconds = 1\ndown_after_seconds = 5\n{}\
         [[identities]]\nuri = \"spiffe://volmig.test/node/py\"\nrole = \"node\"\nnode_id = \"{}\"\n\
         [[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n",
        ctl_leaf.toml(),
        node.node_id(),
        tagged.name()
    );
    for (role, token) in tokens {
        config.push_str(&format!(
            "[[tokens]]\nname = \"py-{role}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            sha256_hex(token)
        ));
    }
    let ctl = harness::controller::ControllerProcess::start_tcp(
        "py-tls-ctl",
        &format!("127.0.0.1:{ctl_port}"),
        &config,
        &[],
    );
    let (operator_token, viewer_token) = (dir.join("operator.token"), dir.join("viewer.token"));
    write_private(&operator_token, tokens[0].1);
    write_private(&viewer_token, tokens[1].1);
    let node_id = node.node_id().to_string();
    let mut flags = vec![
        "nodes".to_string(),
        "--json".to_string(),
        "--controller".to_string(),
        https.clone(),
    ];
    flags.extend(client.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut seen = (1, String::new(), String::new());
    let up = harness::try_wait_until(Duration::from_secs(30), || {
        seen = harness::volmig(&flags, &[("VOLMIG_TOKEN", tokens[1].1)]);
        seen.0 == 0 && seen.1.contains(&node_id) && seen.1.contains("UP")
    });
    assert!(up, "the node did not register: {seen:?}\n{}", ctl.log());
    TlsCluster {
        _node: node,
        ctl,
        https,
        client,
        operator_token,
        viewer_token,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_package_moves_a_writing_guest_over_unix_and_mtls_reattaches_and_raises_typed_refusals(
) {
    let scratch = Scratch::new("py-pkg");
    let src = DirPool::new("py-src");
    let p1 = DirPool::new("py-p1");
    let p2 = DirPool::new("py-p2");
    let p3 = DirPool::new("py-p3");
    let pkg = package(&scratch.path().join("pkg"));
    let guest = writing_guest_with_data("py-guest", &src, "qcow2");
    let node = NodeProcess::start("py-node", &[]);
    let socket = PathBuf::from(node.endpoint().strip_prefix("unix://").expect("unix"));
    let proxy = CuttingProxy::start(scratch.path().join("proxy.sock"), socket);
    let out = scratch.path().join("answers");
    std::fs::create_dir_all(&out).expect("answers dir");
    let (proxy_endpoint, node_endpoint) = (proxy.endpoint(), node.endpoint());
    let env = [
        ("VOLMIG_NODE_PROXY", proxy_endpoint.as_str()),
        ("VOLMIG_NODE", node_endpoint.as_str()),
        ("VOLMIG_DOMAIN", guest.name()),
        ("VOLMIG_POOL_1", p1.name()),
        ("VOLMIG_POOL_2", p2.name()),
        ("VOLMIG_POOL_3", p3.name()),
        // ~64 MiB of data: several seconds of copying, so the cut lands mid-copy.
        ("VOLMIG_BANDWIDTH", "12MiB"),
    ];

    // 1. Over the unix socket, through a proxy that drops the connection mid-copy.
    let test = "test_node.py::test_migrate_reattaches_after_the_connection_drops_mid_copy";
    let python = pytest_command(&pkg, test, &out, &env).output();
    tokio::pin!(python);
    // Python ending first means it never got to the copy: its output says why.
    let (done, total) = tokio::select! {
        cut = cut_mid_copy(&node, guest.name(), &proxy) => cut,
        early = &mut python => {
            check_passed(test, &early.expect("pytest"));
            panic!("{test} passed before the connection was cut");
        }
    };
    check_passed(test, &python.await.expect("pytest"));
    eprintln!("cut at {done} of {total} bytes");
    let dropped = answer(&out, "drop");
    assert!(
        dropped["reattachments"].as_u64().expect("count") >= 1,
        "{dropped}"
    );
    let events = dropped["events"].as_array().expect("events");
    let copying_before = events
        .iter()
        .any(|e| e["phase"] == "COPYING" && e["reattachments"] == 0);
    let after = events
        .iter()
        .any(|e| e["reattachments"].as_u64() >= Some(1));
    assert!(
        copying_before && after,
        "events before and after the re-attach: {dropped}"
    );
    assert_eq!(
        phases(&dropped).last().map(String::as_str),
        Some("COMPLETED"),
        "{dropped}"
    );
    assert_eq!(dropped["destination_pool"], p1.name());
    assert_eq!(dropped["source_pool"], src.name());
    on_destination(&guest, &dropped);

    // 2. Refusals raise the typed exception with the server's code.
    pytest(
        &pkg,
        "test_node.py::test_refused_requests_raise_typed_errors_with_their_code",
        &out,
        &env,
    )
    .await;
    let refusals = answer(&out, "refusals");
    assert_eq!(refusals["unknown_domain"], "NOT_FOUND", "{refusals}");
    assert_eq!(refusals["same_pool"], "FAILED_PRECONDITION", "{refusals}");
    assert_eq!(refusals["bad_pool_name"], "INVALID_ARGUMENT", "{refusals}");
    assert_eq!(refusals["bad_id"], "INVALID_ARGUMENT", "{refusals}");
    assert_eq!(
        refusals["maintenance_on_node"], "UNIMPLEMENTED",
        "{refusals}"
    );

    // 3. The README's hook, as written, through a controller over mTLS + token; its
    //    first endpoint is dead (failover). Before it: plan/pools and a viewer's
    //    refusal; pool maintenance on the hook's pool (listed, a migration naming it
    //    refused FAILED_PRECONDITION, off again) and a viewer refused setting it.
    let tag = harness::unique_name("py-tag");
    let cluster = tls_cluster(scratch.path(), &tag, &p2).await;
    let hook = scratch.path().join("move_volume.py");
    std::fs::write(&hook, readme_example()).expect("hook");
    let dead = format!("https://localhost:{}", free_port());
    let (ca, cert, key) = (
        cluster.client.ca.display().to_string(),
        cluster.client.cert.display().to_string(),
        cluster.client.key.display().to_string(),
    );
    let token_file = cluster.operator_token.display().to_string();
    let viewer_file = cluster.viewer_token.display().to_string();
    let tls_env = [
        ("VOLMIG_DEAD_ENDPOINT", dead.as_str()),
        ("VOLMIG_CONTROLLER", cluster.https.as_str()),
        ("VOLMIG_CA", ca.as_str()),
        ("VOLMIG_CERT", cert.as_str()),
        ("VOLMIG_KEY", key.as_str()),
        ("VOLMIG_TOKEN_FILE", token_file.as_str()),
        ("VOLMIG_VIEWER_TOKEN_FILE", viewer_file.as_str()),
        ("VOLMIG_TAG", tag.as_str()),
    ];
    let all_env: Vec<(&str, &str)> = env.iter().chain(tls_env.iter()).copied().collect();
    pytest(&pkg, "test_controller.py", &out, &all_env).await;
    assert_eq!(answer(&out, "controller")["viewer"], "PERMISSION_DENIED");
    let maintenance = answer(&out, "maintenance");
    assert_eq!(
        maintenance["named_pool"], "FAILED_PRECONDITION",
        "{maintenance}"
    );
    assert_eq!(maintenance["viewer"], "PERMISSION_DENIED", "{maintenance}");
    assert_eq!(maintenance["listed"]["on"], false, "{maintenance}");
    assert!(
        maintenance["listed"]["actor"]
            .as_str()
            .is_some_and(|a| a.contains("py-operator")),
        "{maintenance}"
    );
    let hook_out = tokio::process::Command::new(&pkg.python)
        .arg(&hook)
        .args([
            "--endpoint",
            &dead,
            "--endpoint",
            &cluster.https,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .args([
            "--token-file",
            &token_file,
            "--domain",
            guest.name(),
            "--disk",
            "vda",
            "--to-tag",
            &tag,
        ])
        .args(["--request-id", "py-hook-1", "--bandwidth", "0"])
        .output()
        .await
        .expect("run the README hook");
    let stdout = String::from_utf8_lossy(&hook_out.stdout);
    let stderr = String::from_utf8_lossy(&hook_out.stderr);
    assert!(
        hook_out.status.success(),
        "README hook: {stdout}\n{stderr}\n{}",
        cluster.ctl.log()
    );
    let moved: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(moved["pool"], p2.name(), "{moved}");
    assert_eq!(
        moved["previous_path"], dropped["destination_source"],
        "{moved}"
    );
    assert!(
        stderr.contains("COPYING") || stderr.contains("copying"),
        "progress logged: {stderr}"
    );
    on_destination(
        &guest,
        &serde_json::json!({ "destination_source": moved["path"] }),
    );

    // 4. The asyncio variant over the unix socket.
    pytest(&pkg, "test_async.py", &out, &env).await;
    let done = answer(&out, "async");
    assert_eq!(done["destination_pool"], p3.name());
    assert_eq!(phases(&done).first().map(String::as_str), Some("ACCEPTED"));
    on_destination(&guest, &done);

    // Nothing the guest was told was written got lost.
    guest.cold_restart();
    guest.wait_writing(20, Duration::from_secs(120));
    guest.verify_data();
    drop(cluster);
}
