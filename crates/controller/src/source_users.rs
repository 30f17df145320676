//! Before a migration deletes its source on shared storage, the controller asks
//! every other node that reaches the source's pool what uses the image there: a
//! node sees only its own domains and pools.

use std::sync::Arc;

use super::inventory::Merged;
use super::registry::NodeEntry;
use super::Controller;

impl Controller {
    /// Users of `source` (in pool `pool` of `node`) on the other nodes that
    /// reach the same storage, one line each. A node that cannot be asked is a
    /// line too: what cannot be checked is not deleted.
    pub(super) async fn source_users_elsewhere(
        &self,
        node: &NodeEntry,
        pool: &str,
        source: &str,
        domain: &str,
        pools: &Merged,
    ) -> Vec<String> {
        let Some(shared) = pools
            .reachable_from(&node.id)
            .find(|p| p.name_on(&node.id) == pool)
        else {
            return Vec::new();
        };
        let others: Vec<Arc<NodeEntry>> = self
            .inner
            .registry
            .all()
            .into_iter()
            .filter(|n| n.id != node.id && shared.names.contains_key(&n.id))
            .collect();
        let (source, domain) = (source.to_string(), domain.to_string());
        let mut asks = self.fan_out(others, move |c, other| {
            let (source, domain) = (source.clone(), domain.clone());
            async move {
                c.inner
                    .nodes
                    .find_volume_users(&other, &source, &domain)
                    .await
            }
        });
        let mut lines = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let Ok((other, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(users) => lines.extend(users.into_iter().map(|u| format!("node {}: {u}", other.id))),
                Err(e) => lines.push(format!(
                    "node {} reaches pool '{}' but could not be asked whether it uses the source ({})",
                    other.id,
                    shared.name_on(&other.id),
                    e.message
                )),
            }
        }
        lines.sort();
        lines
    }
}
