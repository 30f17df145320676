//! The nodes the controller knows: listed in its configuration or registered
//! by heartbeat. A node is up while it was heard from (a heartbeat or any
//! successful call) within `down_after`; the pools of a down node are not chosen.
//!
//! It also remembers which node last ran each domain. That is only a hint of
//! whom to ask first: the controller trusts no answer but the node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::migration::model::now_ms;

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
    pub facts: Option<NodeFacts>,
    /// Last contact, for the up/down decision.
    pub last_seen: Option<Instant>,
    /// Last contact, Unix ms, for display.
    pub last_seen_ms: u64,
    /// The last failure to reach it.
    pub last_error: Option<String>,
}

/// Known nodes, thread-safe.
pub struct Registry {
    nodes: Mutex<BTreeMap<String, NodeEntry>>,
    domain_hints: Mutex<HashMap<String, String>>,
    down_after: Duration,
}

impl Registry {
    /// A registry with the configured nodes.
    pub fn new(
        configured: impl IntoIterator<Item = (String, String)>,
        down_after: Duration,
    ) -> Self {
        let nodes = configured
            .into_iter()
            .map(|(id, endpoint)| {
                (
                    id.clone(),
                    NodeEntry {
                        id,
                        endpoint,
                        configured: true,
                        facts: None,
                        last_seen: None,
                        last_seen_ms: 0,
                        last_error: None,
                    },
                )
            })
            .collect();
        Registry {
            nodes: Mutex::new(nodes),
            domain_hints: Mutex::new(HashMap::new()),
            down_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeEntry>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a registration or heartbeat. True when the node is new, moved
    /// to another endpoint or was down: its pools are worth asking for now.
    pub fn register(&self, id: &str, endpoint: &str, facts: NodeFacts) -> bool {
        let mut nodes = self.lock();
        let news = nodes
            .get(id)
            .is_none_or(|e| e.endpoint != endpoint || !self.is_up(e));
        let entry = nodes.entry(id.to_string()).or_insert_with(|| NodeEntry {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
            configured: false,
            facts: None,
            last_seen: None,
            last_seen_ms: 0,
            last_error: None,
        });
        entry.endpoint = endpoint.to_string();
        entry.facts = Some(facts);
        entry.last_seen = Some(Instant::now());
        entry.last_seen_ms = now_ms();
        entry.last_error = None;
        news
    }

    /// Records a successful call to the node.
    pub fn seen(&self, id: &str, facts: Option<NodeFacts>) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.last_seen = Some(Instant::now());
            entry.last_seen_ms = now_ms();
            entry.last_error = None;
            if facts.is_some() {
                entry.facts = facts;
            }
        }
    }

    /// Records a failed call: the node is down until heard from again.
    pub fn failed(&self, id: &str, error: String) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.last_seen = None;
            entry.last_error = Some(error);
        }
    }

    /// Whether the node is up now.
    pub fn is_up(&self, entry: &NodeEntry) -> bool {
        entry
            .last_seen
            .is_some_and(|t| t.elapsed() <= self.down_after)
    }

    /// Whether the node was heard from within `fresh` (no need to probe it).
    pub fn is_fresh(&self, entry: &NodeEntry, fresh: Duration) -> bool {
        entry.last_seen.is_some_and(|t| t.elapsed() <= fresh)
    }

    /// The ids of the nodes up now.
    pub fn up_ids(&self) -> std::collections::BTreeSet<String> {
        self.lock()
            .values()
            .filter(|e| self.is_up(e))
            .map(|e| e.id.clone())
            .collect()
    }

    /// Every node, by id.
    pub fn all(&self) -> Vec<NodeEntry> {
        self.lock().values().cloned().collect()
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<NodeEntry> {
        self.lock().get(id).cloned()
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

    #[test]
    fn nodes_are_up_only_while_heard_from() {
        let reg = Registry::new(
            [("a".to_string(), "unix:///a.sock".to_string())],
            Duration::from_millis(50),
        );
        let a = reg.get("a").expect("configured");
        assert!(a.configured && !reg.is_up(&a), "never heard from");
        reg.seen("a", None);
        assert!(reg.is_up(&reg.get("a").expect("a")));
        reg.failed("a", "connection refused".into());
        assert!(!reg.is_up(&reg.get("a").expect("a")));
        assert!(reg.register("b", "http://10.0.0.2:7451", NodeFacts::default()));
        assert!(reg.is_up(&reg.get("b").expect("b")));
        assert!(
            !reg.register("b", "http://10.0.0.2:7451", NodeFacts::default()),
            "heartbeat"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(!reg.is_up(&reg.get("b").expect("b")), "missed heartbeats");
        assert_eq!(reg.all().len(), 2);
    }
}
