//! Before a migration deletes its source on shared storage, the controller asks
//! every other node that reaches the source's pool what uses the image there: a
//! node sees only its own domains and pools.

use tonic::Status;

use super::ControllerService;
use crate::controller::inventory::Merged;
use crate::controller::registry::NodeEntry;
use crate::proto;

impl ControllerService {
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
        let others: Vec<NodeEntry> = self
            .inner
            .registry
            .all()
            .into_iter()
            .filter(|n| n.id != node.id && shared.names.contains_key(&n.id))
            .collect();
        let request = proto::FindVolumeUsersRequest {
            source: source.to_string(),
            exclude_domain: domain.to_string(),
        };
        let mut asks = self.fan_out(others, move |svc, other| {
            let request = request.clone();
            async move {
                let mut client = svc.client(&other).await?;
                let reply = svc.timed(client.find_volume_users(request)).await?;
                Ok::<_, Status>(reply.into_inner().users)
            }
        });
        let mut lines = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let Ok((other, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(users) => lines.extend(users.into_iter().map(|u| format!("node {}: {u}", other.id))),
                Err(status) => lines.push(format!(
                    "node {} reaches pool '{}' but could not be asked whether it uses the source ({})",
                    other.id,
                    shared.name_on(&other.id),
                    status.message()
                )),
            }
        }
        lines.sort();
        lines
    }
}
