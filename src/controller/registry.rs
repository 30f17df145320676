//! The nodes the controller knows: listed in its configuration or registered
//! by heartbeat. A node is up while it was heard from (a heartbeat or any
//! successful call) within `down_after`; the pools of a down node are not chosen.
//!
//! It also remembers which node last ran each domain. That is only a hint of
//! whom to ask first: the controller trusts no answer but the node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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
    pub facts: Option<Arc<NodeFacts>>,
    /// Last contact, for the up/down decision.
    pub last_seen: Option<Instant>,
    /// Last contact, Unix ms, for display.
    pub last_seen_ms: u64,
    /// The last failure to reach it.
    pub last_error: Option<String>,
}

/// Known nodes, thread-safe, at most `max_nodes` of them.
pub struct Registry {
    nodes: Mutex<BTreeMap<String, Arc<NodeEntry>>>,
    domain_hints: Mutex<HashMap<String, String>>,
    down_after: Duration,
    max_nodes: usize,
}

/// Why a registration was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry holds its limit of nodes and this one is new.
    #[error("the controller already knows its limit of {0} nodes (max_nodes)")]
    Full(usize),
    /// The endpoint a node registered with is not one the controller may dial.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// The caller may not register as this node.
    #[error("{caller} may not register as node '{node_id}'{}", bound.as_ref().map(|b| format!(": its identity is bound to node '{b}'")).unwrap_or_default())]
    NotThisNode {
        /// Who asked.
        caller: String,
        /// The node id it asked for.
        node_id: String,
        /// The node id it may register as, if any.
        bound: Option<String>,
    },
}

/// Longest endpoint a node may register: a DNS name (253) plus scheme and port.
pub const MAX_ENDPOINT: usize = 300;

/// Checks an endpoint a node registers with: `http(s)://host:port` and
/// nothing else (no path, user info or query), at most [`MAX_ENDPOINT`]
/// bytes. `unix:///path` is accepted only from a caller on the controller's
/// own unix socket, who can reach that socket anyway; from the network it
/// would let a node identity point the controller at local sockets.
pub fn check_endpoint(endpoint: &str, local_caller: bool) -> Result<(), RegistryError> {
    let bad = |why: &str| Err(RegistryError::Endpoint(why.to_string()));
    if endpoint.is_empty() {
        return bad("required: how the controller reaches the node");
    }
    if endpoint.len() > MAX_ENDPOINT {
        return bad(&format!(
            "{} bytes long; the limit is {MAX_ENDPOINT}",
            endpoint.len()
        ));
    }
    if endpoint
        .chars()
        .any(|c| crate::migration::validate::is_unsafe_char(c) || c.is_whitespace())
    {
        return bad("contains control or space characters");
    }
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !local_caller {
            return bad("unix:// endpoints are accepted only from the controller's unix socket; register an http(s)://host:port endpoint");
        }
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return bad("a unix endpoint needs an absolute path without '..'");
        }
        return Ok(());
    }
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return bad("not a URI; expected http(s)://host:port");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("expected http(s)://host:port");
    }
    let Some(authority) = uri.authority() else {
        return bad("expected http(s)://host:port");
    };
    if authority.as_str().contains('@') {
        return bad("user information is not allowed");
    }
    if authority.port_u16().is_none() || authority.host().is_empty() {
        return bad("a host and a port are required: http(s)://host:port");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad("no path or query: http(s)://host:port");
    }
    Ok(())
}

impl Registry {
    /// A registry with the configured nodes, holding at most `max_nodes`
    /// (registered ones are refused beyond it; configured ones always count).
    pub fn new(
        configured: impl IntoIterator<Item = (String, String)>,
        down_after: Duration,
        max_nodes: usize,
    ) -> Self {
        let nodes = configured
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
                        last_seen_ms: 0,
                        last_error: None,
                    }),
                )
            })
            .collect();
        Registry {
            nodes: Mutex::new(nodes),
            domain_hints: Mutex::new(HashMap::new()),
            down_after,
            max_nodes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<NodeEntry>>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut nodes = self.lock();
        if !nodes.contains_key(id) && nodes.len() >= self.max_nodes {
            return Err(RegistryError::Full(self.max_nodes));
        }
        let endpoint = match nodes.get(id) {
            Some(e) if e.configured => e.endpoint.clone(),
            _ => endpoint.to_string(),
        };
        let endpoint = endpoint.as_str();
        let news = nodes
            .get(id)
            .is_none_or(|e| e.endpoint != endpoint || !self.is_up(e));
        let entry = Arc::make_mut(nodes.entry(id.to_string()).or_insert_with(|| {
            Arc::new(NodeEntry {
                id: id.to_string(),
                endpoint: endpoint.to_string(),
                configured: false,
                facts: None,
                last_seen: None,
                last_seen_ms: 0,
                last_error: None,
            })
        }));
        entry.endpoint = endpoint.to_string();
        if entry.facts.as_deref() != Some(&facts) {
            entry.facts = Some(Arc::new(facts));
        }
        entry.last_seen = Some(Instant::now());
        entry.last_seen_ms = now_ms();
        entry.last_error = None;
        Ok(news)
    }

    /// Records a successful call to the node.
    pub fn seen(&self, id: &str, facts: Option<NodeFacts>) {
        if let Some(entry) = self.lock().get_mut(id) {
            let entry = Arc::make_mut(entry);
            entry.last_seen = Some(Instant::now());
            entry.last_seen_ms = now_ms();
            entry.last_error = None;
            if let Some(facts) = facts {
                entry.facts = Some(Arc::new(facts));
            }
        }
    }

    /// Records a failed call: the node is down until heard from again.
    pub fn failed(&self, id: &str, error: String) {
        if let Some(entry) = self.lock().get_mut(id) {
            let entry = Arc::make_mut(entry);
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

    /// Every node, by id (shared: a plan copies a thousand of them).
    pub fn all(&self) -> Vec<Arc<NodeEntry>> {
        self.lock().values().cloned().collect()
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<Arc<NodeEntry>> {
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
            10,
        );
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
        std::thread::sleep(Duration::from_millis(80));
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
        let reg = Registry::new(
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
}
