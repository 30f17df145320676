//! End-to-end: volmig installed the way operators install it.
//!
//! The Debian package is built from the binary the tests already built
//! (`deploy/debian/build-deb.sh --binary`), installed with `dpkg -i`, checked
//! (files, user, group, conffiles, units), and its controller and node are
//! started as their units would start them ([`harness::unit`]): first with
//! the packaged configuration, then with the single-host lines of
//! docs/operations.md added, and a writing guest's disk is migrated through
//! both with no lost record.
//! The package is purged at the end, also when the test fails, and the purge
//! is checked.
//!
//! The other tests here check what the package and the manifests ship
//! without installing them: completions, man pages, `--print-config`,
//! unknown keys, the health-only listener, the Kubernetes manifests.

mod harness;
#[path = "install/k8s.rs"]
mod k8s;
#[path = "install/package.rs"]
mod package;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::checks::assert_on_destination;
use harness::node;
use harness::unit::{gid_of, UnitService};
use harness::{DirPool, Guest, Pool};
use k8s::{kinds, object, render_and_validate, KINDS_BUT_THE_STATE_VOLUME};
use package::{
    append_line, check_installed_files, check_purged, check_units, dpkg, Installed,
    CONTROLLER_UNIT, NODE_UNIT,
};
use volmig::config::{ControllerConfig, NodeConfig, StoreKind};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn debian_package_installs_runs_a_migration_as_its_unit_and_purges_clean() {
    harness::prepare();
    let script = harness::repo_root().join("deploy/debian/build-deb.sh");
    let started = Instant::now();
    let out = harness::run_ok(
        "bash",
        &[
            &script.to_string_lossy(),
            "--binary",
            env!("CARGO_BIN_EXE_volmig"),
            "--fast",
        ],
    );
    let deb = PathBuf::from(out.lines().last().expect("deb path").trim());
    eprintln!(
        "package built in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        deb.display()
    );

    let src = DirPool::new("pk-src");
    let dst = DirPool::new("pk-dst");
    let guest = Guest::start("pk-guest", &src, "qcow2", 64 * MIB);
    let work = harness::make_dir(&harness::unique_name("pk-node"));

    let installed = Installed::install(&deb);
    let uid_before = harness::run_ok("id", &["-u", "volmig"]);
    // Installing again runs the maintainer scripts over an existing user and group.
    dpkg(&["-i", &deb.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(harness::run_ok("id", &["-u", "volmig"]), uid_before);
    check_installed_files(&deb);
    check_units();
    let files: Vec<String> = harness::run_ok("dpkg", &["-L", "volmig"])
        .lines()
        .map(str::to_string)
        .collect();

    // The controller as its unit runs it: unprivileged, no capabilities.
    let mut controller = UnitService::start(
        CONTROLLER_UNIT,
        work.join("controller-default.log"),
        |log| log.contains("controller listening"),
    );
    let channel = volmig::api::client::connect("http://127.0.0.1:7450")
        .await
        .expect("connect to the unit's controller");
    let serving = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "volmig.v1.Controller".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("health: {s:?}\n{}", controller.log()))
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    controller.stop();
    drop(controller);
    assert!(Path::new("/var/lib/volmig/controller").is_dir());

    // Listening is logged once the socket has its mode and group.
    let node_ready = |log: &str| log.contains("node listening");
    // The node with the packaged configuration (every key at its default).
    let node = UnitService::start(NODE_UNIT, work.join("node-default.log"), node_ready);
    let socket = std::fs::metadata("/run/volmig/node.sock").expect("socket");
    assert_eq!(socket.mode() & 0o777, 0o660);
    assert_eq!(socket.gid(), gid_of("volmig"));
    let channel = volmig::api::client::connect("unix:///run/volmig/node.sock")
        .await
        .expect("connect to the unit's node");
    let pools = proto::node_client::NodeClient::new(channel)
        .list_pools(proto::ListPoolsRequest {})
        .await
        .unwrap_or_else(|s| panic!("ListPools: {s:?}\n{}", node.log()))
        .into_inner()
        .pools;
    assert!(pools.iter().any(|p| p.name == dst.name()), "{pools:?}");
    drop(node);

    // The single-host set-up of docs/operations.md: the controller on its unix
    // socket, the node registering there; the migration goes through both.
    let controller_socket = "unix:///run/volmig-controller/controller.sock";
    append_line(
        "/etc/volmig/controller.toml",
        &format!("listen = \"{controller_socket}\""),
    );
    append_line(
        "/etc/volmig/node.toml",
        &format!("controller = \"{controller_socket}\""),
    );
    let controller = UnitService::start(CONTROLLER_UNIT, work.join("controller.log"), |log| {
        log.contains("controller listening")
    });
    let node = UnitService::start(NODE_UNIT, work.join("node.log"), node_ready);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let hostname = hostname.trim();
    let channel = volmig::api::client::connect(controller_socket)
        .await
        .expect("connect to the unit's controller");
    let mut client = proto::controller_client::ControllerClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = client
            .list_nodes(proto::ListNodesRequest {})
            .await
            .map(|r| r.into_inner().nodes)
            .unwrap_or_default();
        if nodes
            .iter()
            .any(|n| n.node_id == hostname && n.state == proto::NodeState::Up as i32)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not register: {nodes:?}\n{}\n{}",
            node.log(),
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let before = guest.wait_writing(20, BOOT);
    let stream = client
        .migrate_volume(node::request(guest.name(), "vda", dst.name()))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "MigrateVolume refused: {s:?}\n{}\n{}",
                controller.log(),
                node.log()
            )
        })
        .into_inner();
    let events = node::collect(stream)
        .await
        .unwrap_or_else(|s| panic!("migration stream: {s:?}\n{}", node.log()));
    node::assert_terminal(&events, proto::Phase::Completed);
    let result = node::result_of(&events);
    assert_on_destination(&guest, "vda", &result);
    // The default node id is the host name.
    assert_eq!(events[0].node_id, hostname);
    let journal = std::fs::read_dir("/var/lib/volmig/node/migrations")
        .expect("the journal is in the StateDirectory")
        .count();
    assert!(journal > 0);
    let history = std::fs::read_to_string("/var/lib/volmig/controller/store.jsonl")
        .expect("the history is in the controller's store, in its StateDirectory");
    assert!(history.contains(&events[0].migration_id));
    guest.wait_writing(before + 20, BOOT);
    drop(node);
    drop(controller);

    guest.cold_restart();
    guest.wait_writing(20, BOOT);
    guest.verify_data();

    check_purged(&files);
    drop(installed);
    harness::remove_dir_noisy(&work);
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = harness::volmig(&["completions", shell], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.len() > 1000 && out.contains("print-config"),
            "{shell}: {out}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = harness::volmig(&["man", &dir.path().to_string_lossy()], &[]);
    assert_eq!(code, 0, "{err}");
    for page in [
        "volmig.1",
        "volmig-node.1",
        "volmig-controller.1",
        "volmig-migrate.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
}

#[test]
fn print_config_parses_back_and_unknown_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "node_id = \"kvm7\"\nmax_concurrent_migrations = 2\n[[tokens]]\nname = \"ci\"\nrole = \"viewer\"\nsha256 = \"00\"\n",
    )
    .expect("write");
    let file_arg = file.to_string_lossy().into_owned();
    let (code, out, err) = harness::volmig(
        &["node", "--config", &file_arg, "--print-config"],
        &[("VOLMIG_NODE_LISTEN", "127.0.0.1:7999")],
    );
    assert_eq!(code, 0, "{err}");
    let printed: NodeConfig = toml::from_str(&out).expect("printed config parses");
    let mut want: NodeConfig = volmig::config::load(Some(&file)).expect("load");
    want.listen = "127.0.0.1:7999".into();
    assert_eq!(printed, want, "{out}");

    let (code, out, err) = harness::volmig(&["controller", "--print-config"], &[]);
    assert_eq!(code, 0, "{err}");
    let printed: ControllerConfig = toml::from_str(&out).expect("printed config parses");
    assert_eq!(printed, ControllerConfig::default());

    std::fs::write(&file, "node_id = \"kvm7\"\nlisten_on = \"x\"\n").expect("write");
    let (code, _, err) = harness::volmig(&["node", "--config", &file_arg, "--print-config"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("listen_on") && err.contains(&file_arg),
        "{err}"
    );
}

#[test]
fn kubernetes_manifests_render_and_validate_against_kubernetes_1_30() {
    harness::ensure_host();
    let k8s = harness::repo_root().join("deploy/k8s");
    let (rendered, objects) = render_and_validate(&k8s);
    let mut want = KINDS_BUT_THE_STATE_VOLUME.to_vec();
    want.push("PersistentVolumeClaim");
    want.sort_unstable();
    assert_eq!(kinds(&objects), want);
    for want in [
        "fieldPath: spec.nodeName",
        "path: /run/libvirt/libvirt-sock",
        "path: /run/volmig",
        "secretName: volmig-controller-tls",
    ] {
        assert!(
            rendered.contains(want),
            "{want:?} missing from:\n{rendered}"
        );
    }
    // Native gRPC probes: liveness and readiness of both pods, on the health ports.
    let probes: Vec<&str> = rendered
        .split("grpc:\n")
        .skip(1)
        .filter_map(|rest| rest.lines().next())
        .map(str::trim)
        .collect();
    assert_eq!(
        probes,
        ["port: 7460", "port: 7460", "port: 7461", "port: 7461"],
        "{rendered}"
    );
    // The configurations the pods mount are valid for the binary they run.
    let base = k8s.join("base");
    volmig::config::load::<NodeConfig>(Some(&base.join("node.toml"))).expect("node.toml");
    volmig::config::load::<ControllerConfig>(Some(&base.join("controller.toml")))
        .expect("controller.toml");
}

/// The overlay deploy/k8s/ha: the base's controller as three replicas on an
/// operator's etcd, with no volume of its own.
#[test]
fn kubernetes_ha_overlay_runs_three_controllers_on_etcd_without_a_volume() {
    harness::ensure_host();
    let ha = harness::repo_root().join("deploy/k8s/ha");
    let (rendered, objects) = render_and_validate(&ha);
    assert_eq!(kinds(&objects), KINDS_BUT_THE_STATE_VOLUME);
    assert!(
        !rendered.to_lowercase().contains("persistentvolumeclaim"),
        "{rendered}"
    );
    let deployment = object(&objects, "Deployment", "volmig-controller");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3, "{deployment}");
    assert_eq!(spec["strategy"]["type"], "RollingUpdate", "{deployment}");
    // Two of three keep serving through voluntary disruptions.
    let pdb = object(&objects, "PodDisruptionBudget", "volmig-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    // Replicas prefer different hosts: the term selects the controller's own pods.
    let pod = &spec["template"]["spec"];
    let term = &pod["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname", "{pod}");
    assert_eq!(
        term["labelSelector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .map(|name| serde_json::json!({ "app.kubernetes.io/name": name }))
            .expect("pod label"),
        "{pod}"
    );
    // The ConfigMap the controller mounts is the overlay's file, which
    // selects etcd for the binary under test.
    let file = ha.join("controller.toml");
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}: {pod}"))
    };
    let config_map = volume("config")["configMap"]["name"]
        .as_str()
        .expect("config map");
    assert_eq!(
        object(&objects, "ConfigMap", config_map)["data"]["controller.toml"],
        std::fs::read_to_string(&file)
            .expect("controller.toml")
            .as_str()
    );
    let config = volmig::config::load::<ControllerConfig>(Some(&file)).expect("controller.toml");
    assert_eq!(config.store, StoreKind::Etcd);
    assert!(
        config
            .etcd
            .endpoints
            .iter()
            .all(|e| e.starts_with("https://")),
        "{:?}",
        config.etcd.endpoints
    );
    // etcd's CA and the client certificate come from the operator's Secret,
    // mounted read-only where the configuration looks for them, under the
    // Secret's key names.
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts");
    for (path, key) in [
        (&config.etcd.ca, "ca.crt"),
        (&config.etcd.cert, "tls.crt"),
        (&config.etcd.key, "tls.key"),
    ] {
        let path = path.as_deref().expect("etcd TLS file set");
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"].as_str().map(Path::new) == path.parent())
            .unwrap_or_else(|| panic!("{} is not mounted: {pod}", path.display()));
        assert_eq!(mount["readOnly"], true, "{mount}");
        assert_eq!(path.file_name(), Some(key.as_ref()));
        let name = mount["name"].as_str().expect("mount name");
        assert_eq!(
            volume(name)["secret"]["secretName"],
            "volmig-etcd-client-tls",
            "{pod}"
        );
    }
}

#[tokio::test]
async fn health_listen_serves_only_the_health_service_in_plaintext() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"unix://{dir}/controller.sock\"\nhealth_listen = \"127.0.0.1:{port}\"\nstate_dir = \"{dir}/state\"\n",
            dir = dir.path().display()
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args(["controller", "--config", &config.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start controller");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "health port: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "volmig.v1.Controller"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("Check({service:?}): {s:?}"))
            .into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service:?}");
    }
    // Nothing but health answers there.
    let mut controller = proto::controller_client::ControllerClient::new(channel);
    let refused = controller
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .expect_err("the controller's API is not on the health port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let _ = child.kill();
    let _ = child.wait();
}
