//! Prometheus metrics of a node or a controller, served at `/metrics` when
//! `metrics_listen` is set.
//!
//! The engine, the libvirt edge and the controller know nothing of the
//! metrics library: they report through small observer traits
//! ([`crate::migration::Observer`], [`crate::hypervisor::CallObserver`],
//! [`crate::controller::ControllerObserver`]) that this module implements. Everything
//! is updated as it happens, so a scrape only encodes counters that already
//! hold their values (plus a few reads of `/proc/self` and of the controller's
//! node registry): its cost does not grow with the journal or the history.

mod http;
mod process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::controller::placement::Rule;
use crate::migration::model::{ErrorCode, Event, Phase};

pub use http::{serve, MetricsError};

/// Every metric name starts with this (and `_`).
const PREFIX: &str = "volmig";

/// A label set of fixed names and values.
type Labels<const N: usize> = [(&'static str, &'static str); N];
/// Histograms of one label.
type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

fn phase_buckets() -> Histogram {
    // 50 ms to about 14 h: a validation to a large copy.
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

fn call_buckets() -> Histogram {
    // 0.25 ms to about 16 s: a cached libvirt call to a stuck one.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// Refused unauthenticated calls, by reason. Process-wide: the
/// authorization layer sits in front of every service and holds no registry;
/// both components' registries serve this one family.
static AUTH_REFUSALS: std::sync::LazyLock<Family<Labels<1>, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Counts a refused unauthenticated call (`no_credentials`, `bad_header`,
/// `unknown_token`, `no_role`, `throttled`).
pub fn auth_refused(reason: &'static str) {
    AUTH_REFUSALS.get_or_create(&[("reason", reason)]).inc();
}

fn register_auth_refusals(registry: &mut Registry) {
    registry.register(
        "auth_refusals",
        "Calls refused before authentication succeeded (no or unknown credentials, a certificate without a role, a throttled address), by reason",
        AUTH_REFUSALS.clone(),
    );
}

/// Connections the listeners refused or closed because of their bounds, by
/// reason. Process-wide, as [`AUTH_REFUSALS`]: the listeners hold no registry.
static CONNECTIONS_CLOSED: std::sync::LazyLock<Family<Labels<1>, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Counts a connection a listener refused or closed (`handshakes_per_peer`,
/// `connections_per_peer`, `max_connections`, `handshake_failed`,
/// `handshake_timeout`, `idle`, `max_age`).
pub fn connection_closed(reason: &'static str) {
    CONNECTIONS_CLOSED
        .get_or_create(&[("reason", reason)])
        .inc();
}

fn register_connections_closed(registry: &mut Registry) {
    registry.register(
        "connections_closed",
        "Connections refused or closed by the listeners' [connections] bounds (over a per-address or total limit, a failed or timed-out TLS handshake, idle, past the maximum age), by reason",
        CONNECTIONS_CLOSED.clone(),
    );
}

/// What a node exposes: its migrations, libvirt calls and journal writes.
pub struct NodeMetrics {
    registry: Arc<Registry>,
    started: Counter,
    ended: Family<Labels<2>, Counter>,
    in_flight: Family<Labels<1>, Gauge>,
    phase_seconds: Histograms<1>,
    duration_seconds: Histograms<1>,
    bytes_copied: Counter,
    copy_rate: Family<[(&'static str, String); 3], Gauge>,
    synchronized_to_pivoted: Histogram,
    libvirt_seconds: Histograms<1>,
    libvirt_errors: Family<Labels<1>, Counter>,
    journal_seconds: Histogram,
    journal_errors: Counter,
    /// The migrations in flight as last seen: what the next event is compared with.
    tracked: Mutex<HashMap<String, Tracked>>,
}

/// One migration in flight, as its previous event left it.
struct Tracked {
    phase: Phase,
    since: Instant,
    bytes_done: u64,
    synchronized_at: Option<Instant>,
}

impl NodeMetrics {
    /// A registry holding every node metric, all at zero.
    pub fn new() -> Arc<NodeMetrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let started = Counter::default();
        registry.register(
            "migrations_started",
            "Disk migrations this process started, or resumed after a restart",
            started.clone(),
        );
        let ended = Family::<Labels<2>, Counter>::default();
        registry.register(
            "migrations_ended",
            "Disk migrations that ended, by result (completed, failed, cancelled) and gRPC error code (OK when completed)",
            ended.clone(),
        );
        let in_flight = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "migrations_in_flight",
            "Disk migrations running now, by phase",
            in_flight.clone(),
        );
        let phase_seconds: Histograms<1> = Family::new_with_constructor(phase_buckets);
        registry.register(
            "migration_phase_duration_seconds",
            "Time a disk migration spent in a phase, observed when it leaves the phase",
            phase_seconds.clone(),
        );
        let duration_seconds: Histograms<1> = Family::new_with_constructor(phase_buckets);
        registry.register(
            "migration_duration_seconds",
            "Time from acceptance to the end of a disk migration, by result",
            duration_seconds.clone(),
        );
        let bytes_copied = Counter::default();
        registry.register(
            "copied_bytes",
            "Bytes the block copies of this node have copied (the mirror's progress, re-copied dirty data included)",
            bytes_copied.clone(),
        );
        let copy_rate = Family::<[(&'static str, String); 3], Gauge>::default();
        registry.register(
            "copy_rate_bytes_per_second",
            "Current copy rate of each migration in the copying phase (series removed when it leaves the phase)",
            copy_rate.clone(),
        );
        let synchronized_to_pivoted = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "synchronized_to_pivoted_seconds",
            "Time from SYNCHRONIZED to the end of the pivot (the synchronized hold included)",
            synchronized_to_pivoted.clone(),
        );
        let libvirt_seconds: Histograms<1> = Family::new_with_constructor(call_buckets);
        registry.register(
            "libvirt_call_duration_seconds",
            "Latency of libvirt calls, by call (reconnects included)",
            libvirt_seconds.clone(),
        );
        let libvirt_errors = Family::<Labels<1>, Counter>::default();
        registry.register(
            "libvirt_call_errors",
            "libvirt calls that returned an error, by call (expected answers such as no such domain included)",
            libvirt_errors.clone(),
        );
        let journal_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 14));
        registry.register(
            "journal_write_duration_seconds",
            "Latency of a durable journal write (write, fsync, rename, directory fsync)",
            journal_seconds.clone(),
        );
        let journal_errors = Counter::default();
        registry.register(
            "journal_write_errors",
            "Journal writes that failed",
            journal_errors.clone(),
        );
        register_auth_refusals(&mut registry);
        register_connections_closed(&mut registry);
        registry.register_collector(Box::new(process::Process));
        Arc::new(NodeMetrics {
            registry: Arc::new(registry),
            started,
            ended,
            in_flight,
            phase_seconds,
            duration_seconds,
            bytes_copied,
            copy_rate,
            synchronized_to_pivoted,
            libvirt_seconds,
            libvirt_errors,
            journal_seconds,
            journal_errors,
            tracked: Mutex::new(HashMap::new()),
        })
    }

    /// The registry to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn rate_labels(event: &Event) -> [(&'static str, String); 3] {
        [
            ("migration_id", event.migration_id.clone()),
            ("domain", event.domain.clone()),
            ("disk", event.disk.clone()),
        ]
    }
}

/// The label value of a phase.
fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Accepted => "accepted",
        Phase::Validating => "validating",
        Phase::PreparingDestination => "preparing_destination",
        Phase::Copying => "copying",
        Phase::Synchronized => "synchronized",
        Phase::Pivoting => "pivoting",
        Phase::Verifying => "verifying",
        Phase::CleaningUp => "cleaning_up",
        Phase::Completed => "completed",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
    }
}

/// The gRPC name of an error code, as the API reports it.
fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Cancelled => "CANCELLED",
        ErrorCode::Unknown => "UNKNOWN",
        ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
        ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
        ErrorCode::NotFound => "NOT_FOUND",
        ErrorCode::AlreadyExists => "ALREADY_EXISTS",
        ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
        ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
        ErrorCode::Aborted => "ABORTED",
        ErrorCode::Unimplemented => "UNIMPLEMENTED",
        ErrorCode::Internal => "INTERNAL",
        ErrorCode::Unavailable => "UNAVAILABLE",
    }
}

impl crate::migration::Observer for NodeMetrics {
    fn event(&self, event: &Event) {
        let now = Instant::now();
        let phase = event.phase;
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tracked
            .entry(event.migration_id.clone())
            .or_insert_with(|| {
                self.started.inc();
                if !phase.is_terminal() {
                    self.in_flight
                        .get_or_create(&[("phase", phase_label(phase))])
                        .inc();
                }
                Tracked {
                    phase,
                    since: now,
                    bytes_done: 0,
                    synchronized_at: (phase == Phase::Synchronized).then_some(now),
                }
            });
        if entry.phase != phase {
            let left = entry.phase;
            self.phase_seconds
                .get_or_create(&[("phase", phase_label(left))])
                .observe(now.duration_since(entry.since).as_secs_f64());
            self.in_flight
                .get_or_create(&[("phase", phase_label(left))])
                .dec();
            if !phase.is_terminal() {
                self.in_flight
                    .get_or_create(&[("phase", phase_label(phase))])
                    .inc();
            }
            if phase == Phase::Synchronized {
                entry.synchronized_at = Some(now);
            }
            if let (Phase::Pivoting, Some(at)) = (left, entry.synchronized_at) {
                self.synchronized_to_pivoted
                    .observe(now.duration_since(at).as_secs_f64());
            }
            entry.phase = phase;
            entry.since = now;
        }
        // A copy restarted (recovery) counts again from zero.
        let done = event.progress.bytes_done;
        let delta = done.checked_sub(entry.bytes_done).unwrap_or(done);
        entry.bytes_done = done;
        self.bytes_copied.inc_by(delta);
        if phase == Phase::Copying {
            let rate = i64::try_from(event.progress.rate).unwrap_or(i64::MAX);
            self.copy_rate
                .get_or_create(&Self::rate_labels(event))
                .set(rate);
        } else {
            self.copy_rate.remove(&Self::rate_labels(event));
        }
        if phase.is_terminal() {
            tracked.remove(&event.migration_id);
            let code = event.failure.as_ref().map_or("OK", |f| code_label(f.code));
            self.ended
                .get_or_create(&[("result", phase_label(phase)), ("code", code)])
                .inc();
            let ms = event.timestamp_ms.saturating_sub(event.started_ms);
            self.duration_seconds
                .get_or_create(&[("result", phase_label(phase))])
                .observe(ms as f64 / 1000.0);
        }
    }

    fn journal_write(&self, elapsed: Duration, failed: bool) {
        self.journal_seconds.observe(elapsed.as_secs_f64());
        if failed {
            self.journal_errors.inc();
        }
    }
}

impl crate::hypervisor::CallObserver for NodeMetrics {
    fn call(&self, call: &'static str, elapsed: Duration, failed: bool) {
        self.libvirt_seconds
            .get_or_create(&[("call", call)])
            .observe(elapsed.as_secs_f64());
        if failed {
            self.libvirt_errors.get_or_create(&[("call", call)]).inc();
        }
    }
}

/// Every node the controller knows: id, up, time since last heard from.
pub type NodeHealth = Vec<(String, bool, Option<Duration>)>;

/// What a controller exposes: its nodes, placement rejections and relay lag.
pub struct ControllerMetrics {
    registry: Arc<Registry>,
    rejections: Family<Labels<1>, Counter>,
    relay_lag: Histogram,
    nodes: Arc<Nodes>,
}

impl ControllerMetrics {
    /// The controller's metrics, all at zero; the node gauges appear once
    /// [`ControllerMetrics::read_nodes_from`] says where to read them.
    pub fn new() -> Arc<ControllerMetrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let rejections = Family::<Labels<1>, Counter>::default();
        registry.register(
            "placement_rejections",
            "Pools a placement rejected for a disk, by the first rule they failed",
            rejections.clone(),
        );
        let relay_lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "relay_lag_seconds",
            "Time from a node stamping a migration event to the controller receiving it (clock skew included)",
            relay_lag.clone(),
        );
        let nodes = Arc::new(Nodes(std::sync::OnceLock::new()));
        registry.register_collector(Box::new(nodes.clone()));
        register_auth_refusals(&mut registry);
        register_connections_closed(&mut registry);
        registry.register_collector(Box::new(process::Process));
        Arc::new(ControllerMetrics {
            registry: Arc::new(registry),
            rejections,
            relay_lag,
            nodes,
        })
    }

    /// Reads the node gauges from `nodes` at each scrape (the controller's
    /// registry is built after its observer, hence this second step). Only
    /// the first source given is used.
    pub fn read_nodes_from(&self, nodes: impl Fn() -> NodeHealth + Send + Sync + 'static) {
        let _ = self.nodes.0.set(Box::new(nodes));
    }

    /// The registry to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

impl crate::controller::ControllerObserver for ControllerMetrics {
    fn placement_rejected(&self, rule: Rule) {
        self.rejections
            .get_or_create(&[("rule", rule.name())])
            .inc();
    }

    fn event_relayed(&self, lag: Duration) {
        self.relay_lag.observe(lag.as_secs_f64());
    }
}

/// The node gauges, read from the controller's registry at scrape time.
struct Nodes(std::sync::OnceLock<Box<dyn Fn() -> NodeHealth + Send + Sync>>);

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nodes")
    }
}

impl Collector for Nodes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.0.get() else {
            return Ok(());
        };
        let nodes = source();
        let up = nodes.iter().filter(|(_, up, _)| *up).count();
        let counts = [("up", up), ("down", nodes.len() - up)];
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "nodes",
            "Nodes the controller knows, by state (down: not heard from within down_after_seconds)",
            None,
            gauge.metric_type(),
        )?;
        for (state, n) in counts {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "node_up",
            "1 when the node was heard from within down_after_seconds, else 0",
            None,
            gauge.metric_type(),
        )?;
        for (id, up, _) in &nodes {
            ConstGauge::new(i64::from(*up))
                .encode(family.encode_family(&[("node", id.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "node_heartbeat_age_seconds",
            "Time since each node was last heard from (no series until it has been)",
            None,
            gauge.metric_type(),
        )?;
        for (id, _, age) in &nodes {
            if let Some(age) = age {
                ConstGauge::new(age.as_secs_f64())
                    .encode(family.encode_family(&[("node", id.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
