//! The controller's view of its nodes: liveness probes, reused channels,
//! fan-out calls and the background refresh of the pool inventory.

use super::*;

impl ControllerService {
    pub(super) fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.inner.config.heartbeat_interval_seconds.max(1),
        ))
    }

    /// A node heard from within this window is not probed. Two heartbeat
    /// intervals, because a node sends its next heartbeat one interval after
    /// the previous one returned: with one interval, every node would be
    /// probed for a moment every interval. Never more than `down_after`.
    pub(super) fn fresh_window(&self) -> Duration {
        let down_after =
            Duration::from_secs(u64::from(self.inner.config.down_after_seconds.max(1)));
        (self.heartbeat() * 2).min(down_after)
    }

    /// Refreshes the pools of the up and configured nodes every heartbeat
    /// interval, until the service is dropped.
    pub(super) fn spawn_refresher(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.heartbeat();
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let svc = ControllerService { inner };
                    let nodes = svc
                        .inner
                        .registry
                        .all()
                        .into_iter()
                        .filter(|n| n.configured || svc.inner.registry.is_up(n))
                        .collect();
                    let mut set = svc.fan_out(nodes, |svc, node| async move {
                        let _ = svc.fetch_pools(&node).await;
                    });
                    while set.join_next().await.is_some() {}
                }
            }
            .instrument(tracing::info_span!("inventory_refresh")),
        );
    }

    pub(super) fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenChannel>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A client for `node`, over its open channel or a new one.
    pub(super) async fn client(&self, node: &NodeEntry) -> Result<NodeClient<AuthChannel>, Status> {
        let generation = self
            .inner
            .credentials
            .tls
            .as_ref()
            .map(crate::api::tls::generation)
            .unwrap_or_default();
        if let Some(open) = self.channels().get(&node.id) {
            if open.endpoint == node.endpoint && open.generation == generation {
                return Ok(NodeClient::new(open.channel.clone()));
            }
        }
        match client::connect_with(client::Peer::Node, &node.endpoint, &self.inner.credentials)
            .await
        {
            Ok(channel) => {
                self.channels().insert(
                    node.id.clone(),
                    OpenChannel {
                        endpoint: node.endpoint.clone(),
                        generation,
                        channel: channel.clone(),
                    },
                );
                Ok(NodeClient::new(channel))
            }
            Err(e) => {
                self.node_failed(&node.id, e.to_string());
                Err(node_unavailable(node, e))
            }
        }
    }

    /// Marks a node down and drops its channel, so the next call reconnects.
    pub(super) fn node_failed(&self, id: &str, error: String) {
        self.inner.registry.failed(id, error);
        self.channels().remove(id);
    }

    /// Runs `call` for every node, at most [`FAN_OUT`] at once, each in its own task.
    pub(super) fn fan_out<T, F, Fut>(
        &self,
        nodes: Vec<NodeEntry>,
        call: F,
    ) -> JoinSet<(NodeEntry, T)>
    where
        F: Fn(ControllerService, NodeEntry) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(FAN_OUT));
        let mut set = JoinSet::new();
        for node in nodes {
            let limit = limit.clone();
            let work = call(self.clone(), node.clone());
            set.spawn(
                async move {
                    let _permit = limit.acquire_owned().await;
                    (node, work.await)
                }
                .in_current_span(),
            );
        }
        set
    }

    /// Nodes that answer now: fresh ones as they are, stale ones probed
    /// (concurrently).
    pub(super) async fn up_nodes(&self) -> Vec<NodeEntry> {
        let fresh = self.fresh_window();
        let (mut up, stale): (Vec<NodeEntry>, Vec<NodeEntry>) = self
            .inner
            .registry
            .all()
            .into_iter()
            .partition(|n| self.inner.registry.is_fresh(n, fresh));
        let mut probes = self.fan_out(stale, |svc, node| async move {
            let mut c = svc.client(&node).await?;
            svc.timed(c.get_info(proto::GetInfoRequest {})).await
        });
        while let Some(joined) = probes.join_next().await {
            let Ok((node, probe)) = joined else { continue };
            match probe {
                Ok(info) => {
                    self.inner
                        .registry
                        .seen(&node.id, Some(facts_of(info.get_ref())));
                    up.push(node);
                }
                Err(e) => self.node_failed(&node.id, e.message().to_string()),
            }
        }
        up.sort_by(|a, b| a.id.cmp(&b.id));
        up
    }

    /// Asks a node for its pools and records them in the inventory.
    pub(super) async fn fetch_pools(&self, node: &NodeEntry) -> Result<Vec<proto::Pool>, Status> {
        let listed = async {
            let mut c = self.client(node).await?;
            self.timed(c.list_pools(proto::ListPoolsRequest {})).await
        };
        match listed.await {
            Ok(resp) => {
                let pools = resp.into_inner().pools;
                self.inner.registry.seen(&node.id, None);
                self.inner.inventory.set(&node.id, pools.clone());
                Ok(pools)
            }
            Err(e) => {
                self.node_failed(&node.id, e.message().to_string());
                Err(e)
            }
        }
    }

    /// The merged pools of the up nodes, asking those never asked yet (e.g. a
    /// configured node just probed) first.
    pub(super) async fn cluster_pools(&self, up: &[NodeEntry]) -> Arc<Merged> {
        let unknown: Vec<NodeEntry> = up
            .iter()
            .filter(|n| !self.inner.inventory.knows(&n.id))
            .cloned()
            .collect();
        let mut fetches = self.fan_out(unknown, |svc, node| async move {
            let _ = svc.fetch_pools(&node).await;
        });
        while fetches.join_next().await.is_some() {}
        // Up now: `up` less the nodes that just failed to list their pools.
        let up_ids: BTreeSet<String> = self.inner.registry.up_ids();
        self.inner.inventory.merged(&up_ids)
    }

    /// Migrations writing to each storage id now.
    pub(super) fn in_flight(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for e in self.inner.history.all() {
            if !e.is_terminal() {
                for id in std::iter::once(e.dest_storage_id).chain(e.more_storage_ids) {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Asks one node whether it runs `domain`.
    pub(super) async fn ask_disks(&self, node: &NodeEntry, domain: &str) -> Answer {
        let Ok(mut c) = self.client(node).await else {
            return Answer::Unreachable;
        };
        let answer = self
            .timed(c.list_disks(proto::ListDisksRequest {
                domain: domain.to_string(),
            }))
            .await;
        match answer {
            Ok(resp) => {
                let disks = resp.into_inner();
                if disks.running {
                    Answer::Running(disks)
                } else {
                    Answer::Defined
                }
            }
            Err(s) if s.code() == Code::NotFound => Answer::Absent,
            Err(s) if s.code() == Code::InvalidArgument => Answer::Invalid(s),
            Err(s) => {
                self.node_failed(&node.id, s.message().to_string());
                Answer::Unreachable
            }
        }
    }
}
