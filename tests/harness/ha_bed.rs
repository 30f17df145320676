//! Several controllers sharing one etcd on a [`SimBed`] (issue #21): the bed is made with
//! `hosts.sh up N --ctls K --etcd`, so controller `k` (0-based) runs in its own network
//! namespace (`<prefix>-ctl`, `<prefix>-ctl2`, … at `.2`, `.3`, …) and etcd in
//! `<prefix>-etcd` (`.9`); every one of them is reached only at its bridge address, so
//! cutting a namespace's veth cuts it off from etcd and from the nodes alike.
//!
//! One etcd member rather than one per controller namespace: with two members, cutting
//! either loses etcd's quorum and no controller could lead, which is not the failure under
//! test (a lost controller); etcd's own member failures are tests/etcd_controllers.rs's.
//!
//! Nodes are started one by one, each registering with the controllers the test names
//! (one as the node's `controller` setting, several as its `controllers` list), so a
//! test can choose whom a node's heartbeats reach. Certificates, identities and node ids are those of
//! [`super::fleet`]; the controllers share everything but their address and certificate.

use std::time::{Duration, Instant};

use super::certs::{Leaf, LeafSpec, TestCa};
use super::etcd::EtcdCluster;
use super::fleet::{
    answer, node_uri, start_node_for_all, volmig_bin, write, CliAnswer, Service, CONTROLLER,
    CTL_PORT, OPERATOR,
};
use super::hosts::SimBed;

/// Another controller leads within this many seconds of losing the leader
/// (`[etcd] lease_ttl_seconds`).
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// A node is down this long after its last heartbeat reached any controller.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);
/// The message a controller logs when it wins the election (crates/controller/src/leader.rs).
pub const LEADING: &str = "leading the controllers";
/// The message a controller logs when its leadership ends.
pub const LOST: &str = "lost the leadership";

/// A controller in its namespace.
pub struct HaController {
    /// Its namespace's suffix (`ctl`, `ctl2`, …), as hosts.sh names it.
    suffix: String,
    url: String,
    /// Its configuration file, to start it again.
    config: String,
    /// How many times it was started, for the log file's name.
    starts: usize,
    service: Service,
}

impl HaController {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn log(&self) -> String {
        self.service.log()
    }

    /// How many times it logged that it leads.
    pub fn times_led(&self) -> usize {
        self.log().matches(LEADING).count()
    }

    /// How many times it logged that its leadership ended.
    pub fn times_lost(&self) -> usize {
        self.log().matches(LOST).count()
    }
}

/// K controllers on one etcd plus the nodes started so far. Dropping it stops the nodes,
/// then the controllers, then etcd (field order).
pub struct HaFleet<'a> {
    bed: &'a SimBed,
    ca: TestCa,
    operator: Leaf,
    ids: Vec<String>,
    nodes: Vec<Option<Service>>,
    ctls: Vec<HaController>,
    etcd: EtcdCluster,
    /// The controllers' key prefix in etcd; their election is `<prefix>leader`.
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl<'a> HaFleet<'a> {
    /// Starts etcd in the bed's etcd namespace and `controllers` controllers, each in its
    /// namespace, that accept the nodes of the first `hosts` hosts (none started yet).
    pub fn start(bed: &'a SimBed, controllers: usize, hosts: usize) -> HaFleet<'a> {
        let etcd_addr = format!("{}.9", bed.subnet());
        let etcd =
            EtcdCluster::start_in_netns("ha-etcd", &format!("{}-etcd", bed.prefix()), &etcd_addr);
        let ca = TestCa::new(bed.dir(), "ha");
        let operator = ca.leaf(LeafSpec::new("operator", OPERATOR, &[OPERATOR]));
        let ids: Vec<String> = (1..=hosts)
            .map(|i| super::unique_name(&format!("h{i}-node")))
            .collect();
        let prefix = format!("/{}/", super::unique_name("ha"));
        let mut identities = format!("[[identities]]\ndns = \"{OPERATOR}\"\nrole = \"operator\"\n");
        for (i, id) in ids.iter().enumerate() {
            identities.push_str(&format!(
                "[[identities]]\nuri = \"{}\"\nrole = \"node\"\nnode_id = \"{id}\"\n",
                node_uri(i + 1)
            ));
        }
        let ctls = (1..=controllers)
            .map(|k| {
                let suffix = if k == 1 {
                    "ctl".to_string()
                } else {
                    format!("ctl{k}")
                };
                let addr = format!("{}.{}", bed.subnet(), 1 + k);
                let leaf = ca.leaf(LeafSpec::new(&suffix, CONTROLLER, &[&addr, CONTROLLER]));
                let state = bed.dir().join(format!("{suffix}-state"));
                std::fs::create_dir_all(&state).expect("controller state dir");
                let config = format!(
                    "listen = \"{addr}:{CTL_PORT}\"\nstate_dir = \"{}\"\nstore = \"etcd\"\n\
                     heartbeat_interval_seconds = 1\ndown_after_seconds = {}\n\
                     advertise_allow = [\"{}.0/24\"]\n{}{identities}\
                     [etcd]\n{}\nprefix = \"{prefix}\"\nlease_ttl_seconds = {}\n",
                    state.display(),
                    DOWN_AFTER.as_secs(),
                    bed.subnet(),
                    leaf.toml(),
                    etcd.toml_endpoints(),
                    LEASE_TTL.as_secs(),
                );
                let config = write(bed.dir(), &format!("{suffix}.toml"), &config);
                let service = start_controller(bed, &suffix, &config, 1);
                HaController {
                    url: format!("https://{addr}:{CTL_PORT}"),
                    suffix,
                    config,
                    starts: 1,
                    service,
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        HaFleet {
            bed,
            ca,
            operator,
            nodes: ids.iter().map(|_| None).collect(),
            ids,
            ctls,
            etcd,
            prefix,
            rt,
        }
    }

    /// Controller `k` (0-based).
    pub fn controller(&self, k: usize) -> &HaController {
        &self.ctls[k]
    }

    /// Starts node `i` (1-based, on host `i`) registering with controller `k` only.
    pub fn start_node(&mut self, i: usize, k: usize) {
        self.start_node_with(i, &[k]);
    }

    /// Starts node `i` (1-based, on host `i`) registering with each controller of `ks`.
    pub fn start_node_with(&mut self, i: usize, ks: &[usize]) {
        let urls: Vec<&str> = ks.iter().map(|k| self.ctls[*k].url()).collect();
        let node = start_node_for_all(
            self.bed,
            self.bed.host(i),
            i,
            &self.ca,
            &self.ids[i - 1],
            &urls,
            "",
        );
        self.nodes[i - 1] = Some(node);
    }

    /// Kills controller `k` with SIGKILL.
    pub fn kill_controller(&mut self, k: usize) {
        self.ctls[k].service.kill();
    }

    /// Starts controller `k` again (a new process, same configuration), logging to a
    /// fresh file, so its log and counts are the new process's only.
    pub fn restart_controller(&mut self, k: usize) {
        let ctl = &mut self.ctls[k];
        ctl.service.kill();
        ctl.starts += 1;
        ctl.service = start_controller(self.bed, &ctl.suffix, &ctl.config, ctl.starts);
    }

    /// Cuts (`cut == true`) or restores controller `k`'s traffic to etcd only: a
    /// blackhole route to etcd's address in its namespace drops what it sends there
    /// (new connections fail, packets of open ones vanish), while the bridge, the nodes
    /// and the other controllers stay reachable.
    pub fn cut_etcd(&self, k: usize, cut: bool) {
        let etcd = format!("{}.9/32", self.bed.subnet());
        let verb = if cut { "add" } else { "del" };
        let out = self
            .bed
            .netns_command(&self.ctls[k].suffix, "ip")
            .args(["route", verb, "blackhole", &etcd])
            .output()
            .expect("ip route");
        assert!(
            out.status.success(),
            "ip route {verb} blackhole {etcd} in {}: {}",
            self.ctls[k].suffix,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Node `i`'s id (1-based).
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i - 1]
    }

    /// Which controller the election in etcd names now, asked from the root namespace
    /// over the bridge: the election's value is the controller's `<PID>-<uuid>`, and the
    /// PID is that of its [`Service`] (`ip netns exec` execs the controller).
    pub fn leader(&self) -> Option<usize> {
        let endpoints = self.etcd.endpoints();
        let election = format!("{}leader", self.prefix);
        let value = self.rt.block_on(async {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            let mut client = etcd_client::Client::connect(endpoints, Some(options))
                .await
                .ok()?;
            let answer = client.leader(election).await.ok()?;
            Some(answer.kv()?.value_str().ok()?.to_string())
        })?;
        let pid: u32 = value.split('-').next()?.parse().ok()?;
        self.ctls.iter().position(|c| c.service.pid() == pid)
    }

    /// Waits up to `timeout` for an elected controller; panics with the logs if none.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut leader = None;
        let found = super::try_wait_until(timeout, || {
            leader = self.leader();
            leader.is_some()
        });
        assert!(found, "no controller leads:\n{}", self.logs());
        leader.expect("a leader")
    }

    /// Cuts (`up == false`) or restores controller `k`'s link to the bridge.
    pub fn set_controller_link(&self, k: usize, up: bool) {
        self.bed.set_link(&self.ctls[k].suffix, up);
    }

    /// `volmig ARGS` as the operator in controller `k`'s namespace, against it.
    pub fn cli(&self, k: usize, args: &[&str]) -> CliAnswer {
        self.cli_via(k, &[k], args)
    }

    /// `volmig ARGS` as the operator in controller `k`'s namespace, given the endpoints
    /// of the controllers `endpoints`, in that order (`--controller A,B`).
    pub fn cli_via(&self, k: usize, endpoints: &[usize], args: &[&str]) -> CliAnswer {
        let urls: Vec<&str> = endpoints.iter().map(|e| self.ctls[*e].url()).collect();
        let mut cmd = self.bed.netns_command(&self.ctls[k].suffix, volmig_bin());
        cmd.args(args)
            .args(["--controller", &urls.join(",")])
            .args(self.operator.flags())
            .env("RUST_LOG", "warn");
        answer(cmd)
    }

    /// [`HaFleet::cli_via`] started in the background, its output piped, for a test that
    /// acts while the command runs.
    pub fn cli_spawn(&self, k: usize, endpoints: &[usize], args: &[&str]) -> std::process::Child {
        let urls: Vec<&str> = endpoints.iter().map(|e| self.ctls[*e].url()).collect();
        self.bed
            .netns_command(&self.ctls[k].suffix, volmig_bin())
            .args(args)
            .args(["--controller", &urls.join(",")])
            .args(self.operator.flags())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("volmig CLI")
    }

    /// Controller `k`'s `nodes --json` state of each started node, by node id.
    pub fn node_states(&self, k: usize) -> Vec<(String, String)> {
        let (code, out, _) = self.cli(k, &["nodes", "--json"]);
        let listed: serde_json::Value = if code == 0 {
            serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Null
        };
        self.ids
            .iter()
            .zip(&self.nodes)
            .filter(|(_, node)| node.is_some())
            .map(|(id, _)| {
                let state = listed["nodes"]
                    .as_array()
                    .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == id.as_str()))
                    .and_then(|n| n["state"].as_str())
                    .unwrap_or("NOT_LISTED");
                (id.clone(), state.to_string())
            })
            .collect()
    }

    /// Waits until controller `k` lists every started node `NODE_STATE_UP`.
    pub fn wait_registered(&self, k: usize) {
        let mut states = Vec::new();
        let up = super::try_wait_until(super::fleet::REGISTER_TIMEOUT, || {
            states = self.node_states(k);
            states.iter().all(|(_, s)| s == "NODE_STATE_UP")
        });
        assert!(
            up,
            "controller {k} does not list every node up: {states:?}\n{}",
            self.logs()
        );
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (k, ctl) in self.ctls.iter().enumerate() {
            text.push_str(&format!(
                "--- controller {k} ({}) ---\n{}\n",
                ctl.suffix,
                super::tail(&ctl.log(), 30)
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                text.push_str(&format!(
                    "--- node {} ---\n{}\n",
                    i + 1,
                    super::tail(&node.log(), 20)
                ));
            }
        }
        text + &self.etcd.logs()
    }

    /// Cuts the leader `old` off the bridge and polls (every 50 ms) until another
    /// controller is elected and logs that it leads and, for at most `wait` from the cut,
    /// until the old one logs that it lost; panics if no other leads within `wait`.
    pub fn cut_leader(&self, old: usize, wait: Duration) -> Failover {
        let before: Vec<usize> = self.ctls.iter().map(HaController::times_led).collect();
        let lost_before = self.ctls[old].times_lost();
        let cut = Instant::now();
        self.set_controller_link(old, false);
        let (mut elected, mut logged, mut lost) = (None, None, None);
        let mut new_leader = None;
        while cut.elapsed() < wait && !(elected.is_some() && logged.is_some() && lost.is_some()) {
            if elected.is_none() {
                if let Some(k) = self.leader().filter(|k| *k != old) {
                    new_leader = Some(k);
                    elected = Some(cut.elapsed());
                }
            }
            if let (Some(k), None) = (new_leader, logged) {
                if self.ctls[k].times_led() > before[k] {
                    logged = Some(cut.elapsed());
                }
            }
            if lost.is_none() && self.ctls[old].times_lost() > lost_before {
                lost = Some(cut.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (Some(new_leader), Some(elected_after), Some(logged_after)) =
            (new_leader, elected, logged)
        else {
            panic!(
                "no other controller leads {:?} after the cut (elected {elected:?}, logged \
                 {logged:?}):\n{}",
                cut.elapsed(),
                self.logs()
            );
        };
        Failover {
            new_leader,
            elected_after,
            logged_after,
            old_lost_after: lost,
            waited: cut.elapsed(),
        }
    }
}

/// Starts the controller of namespace `suffix` with `config`, for the `start`th time.
fn start_controller(bed: &SimBed, suffix: &str, config: &str, start: usize) -> Service {
    let mut cmd = bed.netns_command(suffix, volmig_bin());
    cmd.args(["controller", "--config", config]);
    let log = if start == 1 {
        format!("{suffix}.log")
    } else {
        format!("{suffix}-{start}.log")
    };
    Service::start(cmd, bed.dir().join(log))
}

/// What a failover looked like, seen from the root namespace by polling.
#[derive(Debug)]
pub struct Failover {
    /// The controller etcd's election names after the cut.
    pub new_leader: usize,
    /// From the cut until etcd's election named `new_leader`.
    pub elected_after: Duration,
    /// From the cut until `new_leader` logged that it leads.
    pub logged_after: Duration,
    /// From the cut until the old leader logged that it lost the leadership, if it did
    /// within the wait.
    pub old_lost_after: Option<Duration>,
    /// How long the observation lasted from the cut.
    pub waited: Duration,
}
