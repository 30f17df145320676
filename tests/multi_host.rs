//! End-to-end on simulated hosts (issue #21, `deploy/hosts.sh`): two KVM "hosts" on this
//! machine, each a network namespace on a bridge of this run plus a mount namespace with
//! its own libvirtd, and a controller namespace. A `volmig node` runs inside each host,
//! serving mutual TLS on its own address with a certificate naming that address, and
//! registers with a `volmig controller` that runs in the controller namespace. The operator
//! CLI (also in the controller namespace) migrates the disk of a writing guest that lives
//! on host 2 only: the controller must find host 2's node, host 1's libvirtd never sees
//! the domain, nor does the machine's own libvirtd, and after a cold restart on host 2 the
//! guest's records read back complete. Only addresses on the bed's bridge are used.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::certs::{Leaf, LeafSpec, TestCa};
use harness::hosts::{SimBed, SimHost};
use harness::{DirPool, Guest, Pool};

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);
const OPERATOR: &str = "operator.volmig.test";
const CONTROLLER: &str = "controller.volmig.test";
const NODE_PORT: u16 = 7451;
const CTL_PORT: u16 = 7450;

/// A service started in a namespace; killed and reaped on drop.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(mut cmd: Command, log: PathBuf) -> Service {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Service { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn volmig_bin() -> &'static str {
    env!("CARGO_BIN_EXE_volmig")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

fn node_uri(i: usize) -> String {
    format!("spiffe://volmig.test/node/h{i}")
}

/// `volmig node` inside `host`, on `https://ADDR:7451`, registering with the controller.
fn start_node(bed: &SimBed, host: &SimHost, i: usize, ca: &TestCa, node_id: &str) -> Service {
    let dir = bed.dir();
    let uri = node_uri(i);
    let stem = format!("node{i}");
    let leaf = ca.leaf(LeafSpec {
        uri: Some(&uri),
        ..LeafSpec::new(&stem, node_id, &[host.addr()])
    });
    let config = write(
        dir,
        &format!("node{i}.toml"),
        &format!(
            "controller = \"https://{}:{CTL_PORT}\"\nadvertise = \"https://{}:{NODE_PORT}\"\n{}\
             [[identities]]\ndns = \"{CONTROLLER}\"\nrole = \"operator\"\n",
            bed.ctl_addr(),
            host.addr(),
            leaf.toml()
        ),
    );
    let state = dir.join(format!("node{i}-state"));
    std::fs::create_dir_all(&state).expect("node state dir");
    let mut cmd = host.command(volmig_bin());
    cmd.args([
        "node",
        "--config",
        &config,
        "--node-id",
        node_id,
        "--listen",
        &format!("{}:{NODE_PORT}", host.addr()),
        "--state-dir",
        &state.to_string_lossy(),
    ]);
    Service::start(cmd, dir.join(format!("node{i}.log")))
}

#[test]
fn a_migration_through_the_controller_lands_on_the_host_running_the_guest() {
    let t0 = Instant::now();
    let bed = SimBed::up(2);
    eprintln!("bed up in {:?}", t0.elapsed());
    let (h1, h2) = (bed.host(1).clone(), bed.host(2).clone());

    // Everything the harness creates below lives in host 2's libvirtd. The scope is
    // declared before the pools and the guest, so their Drop still goes to host 2.
    let on_h2 = h2.libvirt_scope();
    let src = DirPool::new("mh-src");
    let dst = DirPool::new("mh-dst");
    let guest = Guest::start("mh-guest", &src, "qcow2", 64 * MIB);

    // The guest exists on host 2 only.
    assert!(h2.domains().iter().any(|d| d == guest.name()));
    assert!(!h1.domains().iter().any(|d| d == guest.name()));
    let root = harness::run_ok(
        "virsh",
        &["-c", "qemu:///system", "list", "--all", "--name"],
    );
    assert!(
        !root.lines().any(|l| l.trim() == guest.name()),
        "the machine's libvirtd sees {}",
        guest.name()
    );

    let ca = TestCa::new(bed.dir(), "bed");
    let ctl_leaf = ca.leaf(LeafSpec::new(
        "controller",
        CONTROLLER,
        &[bed.ctl_addr(), CONTROLLER],
    ));
    let operator: Leaf = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
    let ids = [
        harness::unique_name("h1-node"),
        harness::unique_name("h2-node"),
    ];

    let ctl_state = bed.dir().join("controller-state");
    std::fs::create_dir_all(&ctl_state).expect("controller state dir");
    let mut ctl_config = format!(
        "listen = \"{}:{CTL_PORT}\"\nstate_dir = \"{}\"\nheartbeat_interval_seconds = 1\n\
         down_after_seconds = 5\nadvertise_allow = [\"{}/24\"]\n{}\
         [[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n",
        bed.ctl_addr(),
        ctl_state.display(),
        bed.ctl_addr(),
        ctl_leaf.toml()
    );
    for (i, id) in ids.iter().enumerate() {
        ctl_config.push_str(&format!(
            "[[identities]]\nuri = \"{}\"\nrole = \"node\"\nnode_id = \"{id}\"\n",
            node_uri(i + 1)
        ));
    }
    let ctl_config = write(bed.dir(), "controller.toml", &ctl_config);
    let mut cmd = bed.ctl_command(volmig_bin());
    cmd.args(["controller", "--config", &ctl_config]);
    let ctl = Service::start(cmd, bed.dir().join("controller.log"));
    let n1 = start_node(&bed, &h1, 1, &ca, &ids[0]);
    let n2 = start_node(&bed, &h2, 2, &ca, &ids[1]);
    let ctl_url = format!("https://{}:{CTL_PORT}", bed.ctl_addr());

    // The operator's CLI, in the controller's namespace.
    let cli = |args: &[&str]| {
        let mut cmd = bed.ctl_command(volmig_bin());
        cmd.args(args)
            .args(["--controller", &ctl_url])
            .args(operator.flags())
            .env("RUST_LOG", "warn");
        let out = cmd.output().expect("volmig cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let logs = || {
        format!(
            "--- controller ---\n{}\n--- node 1 ---\n{}\n--- node 2 ---\n{}",
            harness::tail(&ctl.log(), 30),
            harness::tail(&n1.log(), 30),
            harness::tail(&n2.log(), 30)
        )
    };

    let mut answer = (1, String::new(), String::new());
    let registered = harness::try_wait_until(Duration::from_secs(60), || {
        answer = cli(&["nodes", "--json"]);
        answer.0 == 0
            && ids.iter().all(|id| {
                answer
                    .1
                    .lines()
                    .any(|l| l.contains(id.as_str()) && l.contains("UP"))
            })
    });
    assert!(registered, "nodes did not register: {answer:?}\n{}", logs());
    // Each registered from its own address.
    for (host, id) in [(&h1, &ids[0]), (&h2, &ids[1])] {
        let line = answer
            .1
            .lines()
            .find(|l| l.contains(id.as_str()))
            .expect("listed");
        assert!(
            line.contains(&format!("https://{}:{NODE_PORT}", host.addr())),
            "{id}: {line}"
        );
    }

    guest.wait_writing(20, BOOT);
    let started = Instant::now();
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
    assert_eq!(code, 0, "migrate: {err}\n{out}\n{}", logs());
    eprintln!("migration took {:?}", started.elapsed());
    let last: serde_json::Value = serde_json::from_str(out.lines().last().expect("events"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{out}");
    let dest = last["result"]["destination_source"]
        .as_str()
        .expect("destination")
        .to_string();
    // Run by host 2's node (every event names it), never by host 1's.
    assert_eq!(last["node_id"], ids[1].as_str(), "{out}");
    assert!(
        !n1.log().contains(guest.name()),
        "host 1's node heard of the guest:\n{}",
        logs()
    );

    // Host 2's libvirtd: both definitions name the destination in `dst`.
    assert_eq!(guest.live_disk_source("vda").path, dest);
    assert_eq!(guest.persistent_disk_source("vda").path, dest);
    let dst_vols = h2
        .virsh(&["vol-list", "--pool", dst.name()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dst_vols.contains(&dest),
        "{dest} not a volume of {}:\n{dst_vols}",
        dst.name()
    );
    // Host 1's libvirtd never had the domain.
    assert!(!h1.domains().iter().any(|d| d == guest.name()));

    guest.cold_restart();
    guest.wait_writing(10, BOOT);
    guest.verify_records("vda");

    drop((n1, n2, ctl));
    drop(guest);
    drop((src, dst));
    drop(on_h2);
    let t1 = Instant::now();
    drop(bed);
    eprintln!("bed down in {:?}; test {:?}", t1.elapsed(), t0.elapsed());
}
