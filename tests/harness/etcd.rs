//! A real etcd cluster (Debian's `etcd`) for tests: 1 or 3 members on free
//! loopback ports, or one member in a network namespace on a bed's bridge
//! ([`EtcdCluster::start_in_netns`]); data under a unique temp dir, every member
//! killed with the test process (parent-death signal) and in `Drop`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{make_dir, remove_dir_noisy, unique_name};

/// One member.
struct Member {
    name: String,
    /// The address it listens on.
    host: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client)
    }
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    /// The command line etcd runs under (`ip netns exec NS`), empty for none.
    wrapper: Vec<String>,
}

/// A loopback port free now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers.
    pub fn start(purpose: &str, size: usize) -> EtcdCluster {
        let token = unique_name(purpose);
        let dir = make_dir(&token);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                host: "127.0.0.1".to_string(),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        EtcdCluster::launch(dir, token, members, Vec::new())
    }

    /// One member inside network namespace `netns` (`ip netns exec`), listening only on
    /// `addr` (ports 2379 and 2380: the namespace is the member's own).
    pub fn start_in_netns(purpose: &str, netns: &str, addr: &str) -> EtcdCluster {
        let token = unique_name(purpose);
        let dir = make_dir(&token);
        let member = Member {
            name: "m0".to_string(),
            host: addr.to_string(),
            client: 2379,
            peer: 2380,
            child: None,
        };
        let wrapper = ["ip", "netns", "exec", netns].map(String::from).to_vec();
        EtcdCluster::launch(dir, token, vec![member], wrapper)
    }

    fn launch(dir: PathBuf, token: String, members: Vec<Member>, wrapper: Vec<String>) -> Self {
        let mut cluster = EtcdCluster {
            dir,
            token,
            members,
            wrapper,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).expect("log");
        let client = m.client_url();
        let peer = format!("http://{}:{}", m.host, m.peer);
        // `ip netns exec` execs etcd: the parent-death signal set below still holds.
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("etcd");
                cmd
            }
            None => Command::new("etcd"),
        };
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start etcd (deploy/setup-tests.sh installs etcd-server): {e}")
        });
        self.members[i].child = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// `endpoints = [...]` for a TOML `[etcd]` table.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("endpoints = [{}]", quoted.join(", "))
    }

    async fn status(endpoint: &str) -> Option<(u64, u64)> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let mut c = etcd_client::Client::connect([endpoint], Some(options))
            .await
            .ok()?;
        let s = c.status().await.ok()?;
        Some((s.header()?.member_id(), s.leader()))
    }

    /// Waits up to 30 s until every running member answers and one leads.
    /// Runs on a thread of its own, so async tests can call it too.
    pub fn wait_healthy(&self) {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect();
        let ok = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                super::try_wait_until(Duration::from_secs(30), || {
                    rt.block_on(async {
                        for e in &running {
                            match Self::status(e).await {
                                Some((_, leader)) if leader != 0 => {}
                                _ => return false,
                            }
                        }
                        true
                    })
                })
            })
            .join()
            .unwrap_or(false)
        });
        assert!(ok, "etcd did not become healthy:\n{}", self.logs());
    }

    /// The index of the member that leads now.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if let Some((id, leader)) = Self::status(&m.client_url()).await {
                if id == leader {
                    return Some(i);
                }
            }
        }
        None
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every member's log tail.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                format!("--- etcd {} ---\n{}", m.name, super::tail(&text, 15))
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
        remove_dir_noisy(&self.dir);
    }
}
