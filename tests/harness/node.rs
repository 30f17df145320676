//! A real `volmig node` process for end-to-end tests, and a gRPC client to it.
//!
//! The node runs as its own process (the test binary's `CARGO_BIN_EXE_volmig`)
//! so tests can `kill -9` and restart it exactly as an operator's host would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use volmig::proto;
use volmig::proto::node_client::NodeClient;

use super::{make_dir, remove_dir_noisy, unique_name};

/// A node process with its own state dir and unix socket.
pub struct NodeProcess {
    child: Option<Child>,
    dir: PathBuf,
    node_id: String,
    extra: Vec<String>,
}

impl NodeProcess {
    /// Starts a node; `extra` are additional `volmig node` flags.
    pub fn start(purpose: &str, extra: &[&str]) -> NodeProcess {
        super::ensure_host();
        let name = unique_name(purpose);
        let dir = make_dir(&name);
        let mut node = NodeProcess {
            child: None,
            dir,
            node_id: name,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn();
        node
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("node.sock")
    }

    /// `unix:///…/node.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's state directory (its journal lives below it).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("node log: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_volmig"))
            .arg("node")
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--node-id")
            .arg(&self.node_id)
            .args(&self.extra)
            .env("RUST_LOG", "volmig=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start volmig node: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("volmig node exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "volmig node did not listen within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the node, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same state dir and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A client to the node.
    pub async fn client(&self) -> NodeClient<Channel> {
        let channel = volmig::api::client::connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connect to node: {e}"));
        NodeClient::new(channel)
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last node log lines ({}) ---\n{}",
                self.node_id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill9();
        remove_dir_noisy(&self.dir);
    }
}

/// A migration request with defaults for the tests.
pub fn request(domain: &str, disk: &str, pool: &str) -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: domain.to_string(),
        disk: disk.to_string(),
        destination_pool: pool.to_string(),
        ..Default::default()
    }
}

/// Reads a migration stream to its end.
pub async fn collect(
    mut stream: tonic::Streaming<proto::MigrationEvent>,
) -> Result<Vec<proto::MigrationEvent>, tonic::Status> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

/// Starts a migration and reads its stream to the end.
pub async fn migrate(
    client: &mut NodeClient<Channel>,
    req: proto::MigrateVolumeRequest,
) -> Result<Vec<proto::MigrationEvent>, tonic::Status> {
    let stream = client.migrate_volume(req).await?.into_inner();
    collect(stream).await
}

/// The phase of an event.
pub fn phase(e: &proto::MigrationEvent) -> proto::Phase {
    proto::Phase::try_from(e.phase).unwrap_or(proto::Phase::Unspecified)
}

/// The distinct phases of an event list, in order.
pub fn phases(events: &[proto::MigrationEvent]) -> Vec<proto::Phase> {
    let mut out: Vec<proto::Phase> = events.iter().map(phase).collect();
    out.dedup();
    out
}

/// Asserts the stream ended in exactly one terminal event, of this phase.
pub fn assert_terminal(events: &[proto::MigrationEvent], want: proto::Phase) {
    let terminal: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                phase(e),
                proto::Phase::Completed | proto::Phase::Failed | proto::Phase::Cancelled
            )
        })
        .collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {events:#?}");
    assert_eq!(
        phase(terminal[0]),
        want,
        "terminal event: {:#?}",
        terminal[0]
    );
    assert_eq!(
        events.last().map(phase),
        Some(want),
        "the terminal event must be the last"
    );
}
