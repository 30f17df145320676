//! A volmig fleet on a [`SimBed`] (issue #21): a `volmig controller` in the bed's
//! controller namespace and a `volmig node` inside each host, all on mutual TLS with
//! certificates of one test CA naming their addresses, every node registered with the
//! controller; the operator's CLI runs in the controller namespace.
//!
//! Node `i` (1-based, on host `i`) listens on `https://<host addr>:7451` with the SPIFFE id
//! `spiffe://volmig.test/node/h<i>`; the controller listens on `https://<ctl addr>:7450`,
//! marks a node down after 5 s without a heartbeat (interval 1 s). Every file lives in the
//! bed's directory, which the hosts see too (they share the machine's file system).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::certs::{Leaf, LeafSpec, TestCa};
use super::hosts::{SimBed, SimHost};

pub const OPERATOR: &str = "operator.volmig.test";
pub const CONTROLLER: &str = "controller.volmig.test";
pub const NODE_PORT: u16 = 7451;
pub const CTL_PORT: u16 = 7450;
/// How long every node has to show up `UP` in `volmig nodes`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// A process started in a namespace, its output in `log`; killed and reaped on drop.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with `RUST_LOG=info`, stdout and stderr to `log`.
    pub fn start(mut cmd: Command, log: PathBuf) -> Service {
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

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its PID (of the `nsenter` / `ip netns exec` wrapper, which execs the program).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn volmig_bin() -> &'static str {
    env!("CARGO_BIN_EXE_volmig")
}

/// Writes `dir/name`, returning its path.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

/// Node `i`'s SPIFFE id.
pub fn node_uri(i: usize) -> String {
    format!("spiffe://volmig.test/node/h{i}")
}

/// `migrate --domain DOMAIN --disk DISK --to-pool POOL EXTRA…`, the operator's arguments.
pub fn migrate_args<'s>(
    domain: &'s str,
    disk: &'s str,
    pool: &'s str,
    extra: &[&'s str],
) -> Vec<&'s str> {
    let mut args = vec![
        "migrate",
        "--domain",
        domain,
        "--disk",
        disk,
        "--to-pool",
        pool,
    ];
    args.extend_from_slice(extra);
    args
}

/// The exit code, stdout and stderr of a CLI call.
pub type CliAnswer = (i32, String, String);

/// Controller + one node per host of `bed`; dropping it stops them (nodes first).
pub struct Fleet<'a> {
    bed: &'a SimBed,
    ca: TestCa,
    operator: Leaf,
    ids: Vec<String>,
    /// Appended to every node's `node.toml` (see [`Fleet::start_with`]).
    node_toml: String,
    nodes: Vec<Service>,
    ctl: Service,
    ctl_url: String,
}

impl<'a> Fleet<'a> {
    /// Starts the controller and a node on each of the `hosts` first hosts of `bed`
    /// (node ids are [`super::unique_name`]s `h<i>-node`). Does not wait for registration:
    /// see [`Fleet::wait_registered`].
    pub fn start(bed: &'a SimBed, hosts: usize) -> Fleet<'a> {
        Fleet::start_with(bed, hosts, "")
    }

    /// [`Fleet::start`] with `node_toml` (tables such as `[shared_pools]`) appended to
    /// every node's config, restarts included.
    pub fn start_with(bed: &'a SimBed, hosts: usize, node_toml: &str) -> Fleet<'a> {
        let ca = TestCa::new(bed.dir(), "bed");
        let ctl_leaf = ca.leaf(LeafSpec::new(
            "controller",
            CONTROLLER,
            &[bed.ctl_addr(), CONTROLLER],
        ));
        let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
        let ids: Vec<String> = (1..=hosts)
            .map(|i| super::unique_name(&format!("h{i}-node")))
            .collect();

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
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(k, id)| start_node(bed, bed.host(k + 1), k + 1, &ca, id, node_toml))
            .collect();
        Fleet {
            bed,
            ca,
            operator,
            ids,
            node_toml: node_toml.to_string(),
            nodes,
            ctl,
            ctl_url: format!("https://{}:{CTL_PORT}", bed.ctl_addr()),
        }
    }

    /// [`Fleet::start`] then [`Fleet::wait_registered`].
    pub fn up(bed: &'a SimBed, hosts: usize) -> Fleet<'a> {
        Fleet::up_with(bed, hosts, "")
    }

    /// [`Fleet::start_with`] then [`Fleet::wait_registered`].
    pub fn up_with(bed: &'a SimBed, hosts: usize, node_toml: &str) -> Fleet<'a> {
        let fleet = Fleet::start_with(bed, hosts, node_toml);
        fleet.wait_registered();
        fleet
    }

    /// Polls `volmig nodes --json` until every node is listed `UP`; returns that answer's
    /// stdout. Panics with the logs after [`REGISTER_TIMEOUT`].
    pub fn wait_registered(&self) -> String {
        let mut answer = (1, String::new(), String::new());
        let registered = super::try_wait_until(REGISTER_TIMEOUT, || {
            answer = self.cli(&["nodes", "--json"]);
            // Each node's own entry must say UP: the JSON may be one line, where a
            // text match would take another node's state for this one's.
            let listed: serde_json::Value =
                serde_json::from_str(&answer.1).unwrap_or(serde_json::Value::Null);
            answer.0 == 0
                && self.ids.iter().all(|id| {
                    listed["nodes"].as_array().is_some_and(|nodes| {
                        nodes
                            .iter()
                            .any(|n| n["node_id"] == id.as_str() && n["state"] == "NODE_STATE_UP")
                    })
                })
        });
        assert!(
            registered,
            "nodes did not register: {answer:?}\n{}",
            self.logs()
        );
        answer.1
    }

    /// `volmig ARGS --controller URL <operator TLS flags>` in the controller namespace,
    /// not run yet (for a caller that wants to spawn it).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bed.ctl_command(volmig_bin());
        cmd.args(args)
            .args(["--controller", &self.ctl_url])
            .args(self.operator.flags())
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs the operator CLI against the controller.
    pub fn cli(&self, args: &[&str]) -> CliAnswer {
        answer(self.cli_command(args))
    }

    /// Runs the operator CLI inside host `i` against node `i` directly (its own address,
    /// so it works while the host is cut off from the controller).
    pub fn node_cli(&self, i: usize, args: &[&str]) -> CliAnswer {
        let mut cmd = self.bed.host(i).command(volmig_bin());
        cmd.args(args)
            .args(["--node", &self.node_url(i)])
            .args(self.operator.flags())
            .env("RUST_LOG", "warn");
        answer(cmd)
    }

    /// Node `i`'s id (1-based).
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i - 1]
    }

    /// Node `i`'s endpoint, as it advertises it.
    pub fn node_url(&self, i: usize) -> String {
        format!("https://{}:{NODE_PORT}", self.bed.host(i).addr())
    }

    /// Node `i`'s process.
    pub fn node(&self, i: usize) -> &Service {
        &self.nodes[i - 1]
    }

    /// Starts node `i` again with the same id, certificate names, config and state dir
    /// (its journal), e.g. after its host was power-cycled: the old process is dropped
    /// (killed if it still runs) and its log kept as `node<i>.log.<n>`.
    pub fn restart_node(&mut self, i: usize) {
        let log = self.bed.dir().join(format!("node{i}.log"));
        let kept = (1..)
            .map(|n| self.bed.dir().join(format!("node{i}.log.{n}")))
            .find(|p| !p.exists())
            .expect("a free log name");
        let old = &mut self.nodes[i - 1].child;
        let _ = old.kill();
        let _ = old.wait();
        let _ = std::fs::rename(&log, kept);
        let node = start_node(
            self.bed,
            self.bed.host(i),
            i,
            &self.ca,
            &self.ids[i - 1],
            &self.node_toml,
        );
        self.nodes[i - 1] = node;
    }

    /// The controller's process.
    pub fn controller(&self) -> &Service {
        &self.ctl
    }

    /// The controller's endpoint.
    pub fn controller_url(&self) -> &str {
        &self.ctl_url
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = format!("--- controller ---\n{}", super::tail(&self.ctl.log(), 30));
        for (k, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "\n--- node {} ---\n{}",
                k + 1,
                super::tail(&node.log(), 30)
            ));
        }
        text
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        self.nodes.clear();
    }
}

/// Runs a CLI command: its exit code, stdout and stderr.
pub fn answer(mut cmd: Command) -> CliAnswer {
    let out = cmd.output().expect("volmig cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `volmig node` inside `host`, on `https://ADDR:7451`, registering with the controller;
/// it accepts the controller as operator and the operator's certificate too; `extra`
/// ends its config.
fn start_node(
    bed: &SimBed,
    host: &SimHost,
    i: usize,
    ca: &TestCa,
    node_id: &str,
    extra: &str,
) -> Service {
    let controller = format!("https://{}:{CTL_PORT}", bed.ctl_addr());
    start_node_for(bed, host, i, ca, node_id, &controller, extra)
}

/// [`start_node`] registering with `controller` (a URL) instead of the bed's controller.
pub fn start_node_for(
    bed: &SimBed,
    host: &SimHost,
    i: usize,
    ca: &TestCa,
    node_id: &str,
    controller: &str,
    extra: &str,
) -> Service {
    start_node_for_all(bed, host, i, ca, node_id, &[controller], extra)
}

/// [`start_node`] registering with every one of `controllers` (URLs): one is written as
/// the single `controller` setting, several as the `controllers` list.
pub fn start_node_for_all(
    bed: &SimBed,
    host: &SimHost,
    i: usize,
    ca: &TestCa,
    node_id: &str,
    controllers: &[&str],
    extra: &str,
) -> Service {
    let registers_with = match controllers {
        [one] => format!("controller = \"{one}\""),
        several => format!("controllers = {several:?}"),
    };
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
            "{registers_with}\nadvertise = \"https://{}:{NODE_PORT}\"\n{}\
             [[identities]]\ndns = \"{CONTROLLER}\"\nrole = \"operator\"\n\
             [[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n{extra}",
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
