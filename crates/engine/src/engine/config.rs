//! Engine settings.

use std::time::Duration;

/// How long finished migrations are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished records older than this are pruned.
    pub max_age: Duration,
    /// At most this many finished records are kept (the newest).
    pub max_records: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_records: 1000,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id, stamped on every event.
    pub node_id: String,
    /// Most migrations running at once.
    pub max_concurrent: usize,
    /// The longest wait between two polls of the block job.
    pub poll_interval: Duration,
    /// How often progress is published while copying.
    pub progress_interval: Duration,
    /// How long libvirtd may be unreachable during a migration before it fails.
    pub libvirt_grace: Duration,
    /// How long a migration stays SYNCHRONIZED (mirroring every write) before it
    /// pivots: a window for an operator or a test to observe or cancel it.
    pub synchronized_hold: Duration,
    /// Most subscribers (watchers, attached requests) of one migration at
    /// once: each holds memory and a task for as long as it lasts.
    pub max_watchers: usize,
    /// How long finished records are kept.
    pub retention: Retention,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: "node".to_string(),
            max_concurrent: 4,
            poll_interval: Duration::from_millis(250),
            progress_interval: Duration::from_secs(1),
            libvirt_grace: Duration::from_secs(90),
            synchronized_hold: Duration::ZERO,
            max_watchers: 64,
            retention: Retention::default(),
        }
    }
}
