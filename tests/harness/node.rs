//! A real `volmig node` process for end-to-end tests, and a gRPC client to it.
//!
//! The node runs as its own process ([`ServiceProcess`]) so tests can
//! `kill -9` and restart it exactly as an operator's host would.

use std::time::Duration;

use tonic::transport::Channel;
use volmig::proto;
use volmig::proto::node_client::NodeClient;

use super::service::ServiceProcess;

/// A node process with its own state dir and unix socket; its node id is its
/// unique name.
pub struct NodeProcess {
    service: ServiceProcess,
}

impl NodeProcess {
    /// Starts a node; `extra` are additional `volmig node` flags.
    pub fn start(purpose: &str, extra: &[&str]) -> NodeProcess {
        let service = ServiceProcess::start("node", purpose, |_, name| {
            let mut args = vec!["--node-id".to_string(), name.to_string()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        });
        NodeProcess { service }
    }

    /// Starts a node listening on TCP `listen` (`127.0.0.1:PORT`); `extra`
    /// are additional flags (e.g. TLS files).
    pub fn start_tcp(purpose: &str, listen: &str, extra: &[&str]) -> NodeProcess {
        let service = ServiceProcess::start_tcp("node", purpose, listen, |_, name| {
            let mut args = vec!["--node-id".to_string(), name.to_string()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        });
        NodeProcess { service }
    }

    /// The node process's PID.
    pub fn pid(&self) -> u32 {
        self.service.pid().expect("node running")
    }

    /// `unix:///…/node.sock`.
    pub fn endpoint(&self) -> String {
        self.service.endpoint()
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        self.service.name()
    }

    /// The node's state directory (its journal lives below it).
    pub fn state_dir(&self) -> std::path::PathBuf {
        self.service.state_dir()
    }

    /// How many migrations the node's journal holds (`migrations/*.json`).
    pub fn journal_records(&self) -> usize {
        std::fs::read_dir(self.state_dir().join("migrations"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Waits up to 10 s until `done` holds for the node's log; returns the log.
    pub fn wait_for_log(&self, done: impl Fn(&str) -> bool) -> String {
        self.service.wait_for_log(done)
    }

    /// SIGKILLs the node, as a crash would.
    pub fn kill9(&mut self) {
        self.service.kill9();
    }

    /// Starts the node again on the same state dir and socket.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// A client to the node.
    pub async fn client(&self) -> NodeClient<Channel> {
        let channel = volmig::api::client::connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connect to node: {e}"));
        NodeClient::new(channel)
    }

    /// The node's directory.
    pub fn dir(&self) -> &std::path::Path {
        self.service.dir()
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

/// A migration request with a bandwidth limit, so the copy takes a while.
pub fn limited(
    domain: &str,
    disk: &str,
    pool: &str,
    bytes_per_sec: u64,
) -> proto::MigrateVolumeRequest {
    let mut req = request(domain, disk, pool);
    req.options = Some(proto::MigrationOptions {
        bandwidth_bytes_per_sec: bytes_per_sec,
        ..Default::default()
    });
    req
}

/// Bound on reading a migration's events, so a migration that never ends fails its test
/// instead of hanging it.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads events until `phase` (asserting it comes before any terminal event);
/// returns them, the last one in `phase`.
pub async fn read_to_phase(
    stream: &mut tonic::Streaming<proto::MigrationEvent>,
    want: proto::Phase,
) -> Vec<proto::MigrationEvent> {
    let seen = read_until(stream, |e| phase(e) == want || is_terminal(e)).await;
    assert_eq!(seen.last().map(phase), Some(want), "{seen:#?}");
    seen
}

/// Reads events until `stop` says so or the stream ends; returns them (the stream stays
/// usable). Panics after [`STREAM_TIMEOUT`].
pub async fn read_until(
    stream: &mut tonic::Streaming<proto::MigrationEvent>,
    mut stop: impl FnMut(&proto::MigrationEvent) -> bool,
) -> Vec<proto::MigrationEvent> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = stream.message().await.expect("stream") {
            let done = stop(&e);
            seen.push(e);
            if done {
                break;
            }
        }
    };
    if tokio::time::timeout(STREAM_TIMEOUT, read).await.is_err() {
        panic!("no awaited event within {STREAM_TIMEOUT:?}; seen: {seen:#?}");
    }
    seen
}

/// The copy has started moving bytes.
pub fn copying_with_progress(e: &proto::MigrationEvent) -> bool {
    phase(e) == proto::Phase::Copying && e.progress.as_ref().is_some_and(|p| p.bytes_done > 0)
}

/// The copy is under way and not near its end: a fault injected now lands mid-copy.
pub fn mid_copy(e: &proto::MigrationEvent) -> bool {
    phase(e) == proto::Phase::Copying
        && e.progress
            .as_ref()
            .is_some_and(|p| p.bytes_done > 0 && p.bytes_done * 4 < p.bytes_total * 3)
}

/// Whether the event ends its migration.
pub fn is_terminal(e: &proto::MigrationEvent) -> bool {
    matches!(
        phase(e),
        proto::Phase::Completed | proto::Phase::Failed | proto::Phase::Cancelled
    )
}

/// Reads a migration stream to its end. Panics after [`STREAM_TIMEOUT`].
pub async fn collect(
    mut stream: tonic::Streaming<proto::MigrationEvent>,
) -> Result<Vec<proto::MigrationEvent>, tonic::Status> {
    let mut events = Vec::new();
    let read = async {
        while let Some(event) = stream.message().await? {
            events.push(event);
        }
        Ok::<(), tonic::Status>(())
    };
    match tokio::time::timeout(STREAM_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(events),
        Ok(Err(status)) => Err(status),
        Err(_) => {
            panic!("the migration did not end within {STREAM_TIMEOUT:?}; events: {events:#?}")
        }
    }
}

/// Follows a migration by id (`WatchMigration`) to its end.
pub async fn watch_to_end(
    client: &mut NodeClient<Channel>,
    migration_id: &str,
) -> Vec<proto::MigrationEvent> {
    let stream = client
        .watch_migration(proto::WatchMigrationRequest {
            migration_id: migration_id.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("WatchMigration {migration_id}: {s:?}"))
        .into_inner();
    collect(stream)
        .await
        .unwrap_or_else(|s| panic!("watching {migration_id}: {s:?}"))
}

/// The result of a completed migration's last event.
pub fn result_of(events: &[proto::MigrationEvent]) -> proto::MigrationResult {
    events
        .last()
        .and_then(|e| e.result.clone())
        .unwrap_or_else(|| panic!("no result in the last event: {events:#?}"))
}

/// The error of a failed or cancelled migration's last event.
pub fn error_of(events: &[proto::MigrationEvent]) -> proto::MigrationError {
    events
        .last()
        .and_then(|e| e.error.clone())
        .unwrap_or_else(|| panic!("no error in the last event: {events:#?}"))
}

/// Sets the request's source policy to DELETE.
pub fn delete_source(req: &mut proto::MigrateVolumeRequest) {
    req.options
        .get_or_insert_with(Default::default)
        .source_policy = proto::SourcePolicy::Delete as i32;
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
    let terminal: Vec<_> = events.iter().filter(|e| is_terminal(e)).collect();
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
