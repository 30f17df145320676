//! The nodes the controller knows: listed in its configuration or registered
//! by heartbeat. A node is up while it was heard from (a heartbeat or any
//! successful call) within `down_after`; the pools of a down node are not chosen.
//!
//! A registered node not heard from for `forget_lapsed_nodes_after_seconds`
//! is forgotten, so the places under `max_nodes` that a flood of
//! registrations took are free again once they lapse; configured nodes stay.
//!
//! It also remembers which node last ran each domain. That is only a hint of
//! whom to ask first: the controller trusts no answer but the node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::advertise::{check_endpoint, MAX_ENDPOINT};
use super::advertise::{AdvertisePolicy, Registrant};
pub use super::error::RegistryError;
use volmig_config::ControllerConfig;
use volmig_types::phase::now_ms;

/// The registry's time source; unit tests step one by hand.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// What a node said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Host name.
    pub hostname: String,
    /// libvirt version.
    pub libvirt_version: String,
    /// QEMU version.
    pub hypervisor_version: String,
    /// volmig version.
    pub volmig_version: String,
}

/// One known node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// Node id.
    pub id: String,
    /// Where the controller reaches it.
    pub endpoint: String,
    /// Listed in the configuration (rather than only registered).
    pub configured: bool,
    /// Its facts, once heard from.
    pub facts: Option<Arc<NodeFacts>>,
    /// Last contact, for the up/down decision (cleared by a failed call).
    pub last_seen: Option<Instant>,
    /// Last contact, kept through failures: when a registered node lapsed.
    pub last_heard: Option<Instant>,
    /// Last contact, Unix ms, for display.
    pub last_seen_ms: u64,
    /// The last failure to reach it.
    pub last_error: Option<String>,
}

/// Known nodes, thread-safe, at most `max_nodes` of them.
pub struct NodeRegistry {
    nodes: Mutex<Table>,
    domain_hints: Mutex<HashMap<String, String>>,
    down_after: Duration,
    max_nodes: usize,
    forget_after: Duration,
    advertise: AdvertisePolicy,
    clock: Clock,
}

/// The nodes, and when the earliest registered one could lapse.
struct Table {
    by_id: BTreeMap<String, Arc<NodeEntry>>,
    /// No registered node can be forgotten before this (`None`: none is registered).
    next_lapse: Option<Instant>,
}

impl NodeRegistry {
    /// A registry with the configured nodes, holding at most `max_nodes`
    /// (registered ones are refused beyond it; configured ones always count).
    /// Registered nodes are forgotten an hour after they were last heard
    /// from, and any endpoint [`check_endpoint`] accepts may be advertised.
    pub fn new(
        configured: impl IntoIterator<Item = (String, String)>,
        down_after: Duration,
        max_nodes: usize,
    ) -> Self {
        let by_id = configured
            .into_iter()
            .map(|(id, endpoint)| {
                (
                    id.clone(),
                    Arc::new(NodeEntry {
                        id,
                        endpoint,
                        configured: true,
                        facts: None,
                        last_seen: None,
                        last_heard: None,
                        last_seen_ms: 0,
                        last_error: None,
                    }),
                )
            })
            .collect();
        NodeRegistry {
            nodes: Mutex::new(Table {
                by_id,
                next_lapse: None,
            }),
            domain_hints: Mutex::new(HashMap::new()),
            down_after,
            max_nodes,
            forget_after: Duration::from_secs(3600).max(down_after),
            advertise: AdvertisePolicy::default(),
            clock: Arc::new(Instant::now),
        }
    }

    /// The registry `config` describes: its nodes, its limits, and the
    /// endpoints nodes may advertise (`https://` once the controller serves
    /// TLS, within `advertise_allow`); a malformed `advertise_allow` is refused.
    pub fn from_config(config: &ControllerConfig) -> Result<NodeRegistry, RegistryError> {
        let mut registry = NodeRegistry::new(
            config
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.endpoint.clone())),
            Duration::from_secs(u64::from(config.down_after_seconds.max(1))),
            config.max_nodes.max(config.nodes.len()),
        );
        // Never before the node is down: a lapsed node is a down one.
        registry.forget_after =
            Duration::from_secs(config.forget_lapsed_nodes_after_seconds).max(registry.down_after);
        registry.advertise =
            AdvertisePolicy::new(config.tls_cert.is_some(), &config.advertise_allow)?;
        Ok(registry)
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock, forget_after: Duration) -> Self {
        self.clock = clock;
        self.forget_after = forget_after;
        self
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the endpoint `registrant` advertises (see [`AdvertisePolicy`]).
    pub fn admit(&self, endpoint: &str, registrant: &Registrant) -> Result<(), RegistryError> {
        self.advertise.check(endpoint, registrant)
    }

    /// Records a registration or heartbeat. True when the node is new, moved
    /// to another endpoint or was down: its pools are worth asking for now.
    /// A configured node keeps its configured endpoint whatever it registers
    /// with: the configuration is the operator's word, a registration is not.
    pub fn register(
        &self,
        id: &str,
        endpoint: &str,
        facts: NodeFacts,
    ) -> Result<bool, RegistryError> {
        let now = self.now();
        let mut table = self.lock();
        let known = table.by_id.get(id).cloned();
        if known.is_none() {
            if table.by_id.len() >= self.max_nodes {
                return Err(RegistryError::Full(self.max_nodes));
            }
            let lapse = now + self.forget_after;
            table.next_lapse = Some(table.next_lapse.map_or(lapse, |t| t.min(lapse)));
        }
        let endpoint = match &known {
            Some(e) if e.configured => e.endpoint.clone(),
            _ => endpoint.to_string(),
        };
        let news = known.is_none_or(|e| e.endpoint != endpoint || !self.is_up(&e));
        let entry = Arc::make_mut(table.by_id.entry(id.to_string()).or_insert_with(|| {
            Arc::new(NodeEntry {
                id: id.to_string(),
                endpoint: endpoint.clone(),
                configured: false,
                facts: None,
                last_seen: None,
                last_heard: None,
                last_seen_ms: 0,
                last_error: None,
            })
        }));
        entry.endpoint = endpoint;
        if entry.facts.as_deref() != Some(&facts) {
            entry.facts = Some(Arc::new(facts));
        }
        entry.last_seen = Some(now);
        entry.last_heard = Some(now);
        entry.last_seen_ms = now_ms();
        entry.last_error = None;
        Ok(news)
    }

    /// Records a successful call to the node.
    pub fn seen(&self, id: &str, facts: Option<NodeFacts>) {
        let now = self.now();
        if let Some(entry) = self.lock().by_id.get_mut(id) {
            let entry = Arc::make_mut(entry);
            entry.last_seen = Some(now);
            entry.last_heard = Some(now);
            entry.last_seen_ms = now_ms();
            entry.last_error = None;
            if let Some(facts) = facts {
                entry.facts = Some(Arc::new(facts));
            }
        }
    }

    /// Records a failed call: the node is down until heard from again.
    pub fn failed(&self, id: &str, error: String) {
        if let Some(entry) = self.lock().by_id.get_mut(id) {
            let entry = Arc::make_mut(entry);
            entry.last_seen = None;
            entry.last_error = Some(error);
        }
    }

    /// Forgets the registered nodes not heard from for
    /// `forget_lapsed_nodes_after_seconds`, freeing their places; their ids.
    /// Cheap until the earliest possible lapse, so every registration may
    /// call it.
    pub fn forget_lapsed(&self) -> Vec<String> {
        let now = self.now();
        let mut table = self.lock();
        if table.next_lapse.is_none_or(|t| now < t) {
            return Vec::new();
        }
        let lapsed: Vec<String> = table
            .by_id
            .values()
            .filter(|e| {
                !e.configured
                    && e.last_heard
                        .is_none_or(|t| now.saturating_duration_since(t) >= self.forget_after)
            })
            .map(|e| e.id.clone())
            .collect();
        for id in &lapsed {
            table.by_id.remove(id);
        }
        // Heartbeats only move a lapse later, so this stays a lower bound.
        table.next_lapse = table
            .by_id
            .values()
            .filter(|e| !e.configured)
            .filter_map(|e| e.last_heard)
            .min()
            .map(|t| t + self.forget_after);
        drop(table);
        if !lapsed.is_empty() {
            let gone: std::collections::HashSet<&str> = lapsed.iter().map(String::as_str).collect();
            self.hints().retain(|_, node| !gone.contains(node.as_str()));
        }
        lapsed
    }

    /// Whether the node is up now.
    pub fn is_up(&self, entry: &NodeEntry) -> bool {
        self.is_fresh(entry, self.down_after)
    }

    /// Whether the node was heard from within `fresh` (no need to probe it).
    pub fn is_fresh(&self, entry: &NodeEntry, fresh: Duration) -> bool {
        let now = self.now();
        entry
            .last_seen
            .is_some_and(|t| now.saturating_duration_since(t) <= fresh)
    }

    /// Every node, by id (shared: a plan copies a thousand of them).
    pub fn all(&self) -> Vec<Arc<NodeEntry>> {
        self.lock().by_id.values().cloned().collect()
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<Arc<NodeEntry>> {
        self.lock().by_id.get(id).cloned()
    }
    fn hints(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.domain_hints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node that last ran `domain`, if any: whom to ask first.
    pub fn domain_hint(&self, domain: &str) -> Option<String> {
        self.hints().get(domain).cloned()
    }

    /// Remembers that `node_id` runs `domain`, as that node just said.
    pub fn learn_domain(&self, domain: &str, node_id: &str) {
        let mut hints = self.hints();
        if hints.get(domain).map(String::as_str) != Some(node_id) {
            hints.insert(domain.to_string(), node_id.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand, and the function that moves it.
    fn manual_clock() -> (Clock, impl Fn(Duration)) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().expect("clock"))
        };
        (clock, move |by| *now.lock().expect("clock") += by)
    }

    #[test]
    fn nodes_are_up_only_while_heard_from() {
        let (clock, step) = manual_clock();
        let reg = NodeRegistry::new(
            [("a".to_string(), "unix:///a.sock".to_string())],
            Duration::from_millis(50),
            10,
        )
        .with_clock(clock, Duration::from_secs(3600));
        let a = reg.get("a").expect("configured");
        assert!(a.configured && !reg.is_up(&a), "never heard from");
        reg.seen("a", None);
        assert!(reg.is_up(&reg.get("a").expect("a")));
        reg.failed("a", "connection refused".into());
        assert!(!reg.is_up(&reg.get("a").expect("a")));
        assert_eq!(
            reg.register("b", "http://10.0.0.2:7451", NodeFacts::default()),
            Ok(true)
        );
        assert!(reg.is_up(&reg.get("b").expect("b")));
        assert_eq!(
            reg.register("b", "http://10.0.0.2:7451", NodeFacts::default()),
            Ok(false),
            "heartbeat"
        );
        step(Duration::from_millis(80));
        assert!(!reg.is_up(&reg.get("b").expect("b")), "missed heartbeats");
        assert_eq!(reg.all().len(), 2);
    }

    #[test]
    fn registered_endpoints_are_http_host_port() {
        for good in [
            "http://10.0.0.2:7451",
            "https://kvm1.example:7451",
            "https://[::1]:7451/",
        ] {
            assert_eq!(check_endpoint(good, false), Ok(()), "{good}");
        }
        let long = format!("http://{}:1", "a".repeat(400));
        for bad in [
            "",
            "unix:///run/volmig/node.sock",
            "http://10.0.0.2",
            "ftp://h:1",
            "http://u:p@h:1",
            "http://h:1/path",
            "http://h:1?q",
            "http://h:1\n",
            "10.0.0.2:7451",
            long.as_str(),
        ] {
            assert!(check_endpoint(bad, false).is_err(), "{bad:?}");
        }
        assert_eq!(check_endpoint("unix:///run/volmig/node.sock", true), Ok(()));
        assert!(check_endpoint("unix://rel.sock", true).is_err());
    }

    #[test]
    fn configured_endpoints_stay_and_the_registry_is_bounded() {
        let reg = NodeRegistry::new(
            [("a".to_string(), "https://a.example:7451".to_string())],
            Duration::from_secs(5),
            2,
        );
        reg.register("a", "http://evil.example:1", NodeFacts::default())
            .expect("heartbeat of a configured node");
        assert_eq!(reg.get("a").expect("a").endpoint, "https://a.example:7451");
        reg.register("b", "http://10.0.0.2:7451", NodeFacts::default())
            .expect("room for b");
        assert_eq!(
            reg.register("c", "http://10.0.0.3:7451", NodeFacts::default()),
            Err(RegistryError::Full(2))
        );
        // Known nodes still heartbeat when the registry is full.
        assert!(reg
            .register("b", "http://10.0.0.2:7451", NodeFacts::default())
            .is_ok());
    }

    #[test]
    fn registered_nodes_not_heard_from_are_forgotten_and_free_their_places() {
        let (clock, step) = manual_clock();
        let step = |secs: u64| step(Duration::from_secs(secs));
        let reg = NodeRegistry::new(
            [("s".to_string(), "unix:///s.sock".to_string())],
            Duration::from_secs(5),
            3,
        )
        .with_clock(clock, Duration::from_secs(60));
        let register = |id: &str| reg.register(id, "https://10.0.0.2:7451", NodeFacts::default());
        register("a").expect("room for a");
        register("b").expect("room for b");
        assert_eq!(register("c"), Err(RegistryError::Full(3)));
        reg.learn_domain("vm-b", "b");
        reg.learn_domain("vm-a", "a");

        step(30);
        register("a").expect("heartbeat");
        assert!(reg.forget_lapsed().is_empty(), "nothing lapsed yet");
        step(31);
        // b was last heard 61 s ago; a 31 s ago; the configured node, never
        // heard from, is never forgotten.
        assert_eq!(reg.forget_lapsed(), ["b"]);
        assert!(reg.get("b").is_none() && reg.get("s").is_some());
        assert_eq!(reg.domain_hint("vm-b"), None);
        assert_eq!(reg.domain_hint("vm-a").as_deref(), Some("a"));
        register("c").expect("b's place is free");
        assert_eq!(register("d"), Err(RegistryError::Full(3)));

        // A failed call marks a node down but does not restart its lapse.
        reg.failed("a", "connection refused".into());
        step(30);
        assert_eq!(reg.forget_lapsed(), ["a"]);
        register("d").expect("a's place is free");
        assert_eq!(reg.all().len(), 3);
    }
}
