//! Starting a migration: place it, reserve its pools' in-flight slots in one
//! transaction (so controllers sharing a store cannot overfill a pool), ask
//! the node, record the migration before relaying anything, then follow it.

use super::error::ControllerError;
use super::inventory::Merged;
use super::model::{MigrationEntry, Order};
use super::placement::{self, PoolVerdict};
use super::registry::NodeEntry;
use super::reservations::{Refused, Slots};
use super::resolve::Located;
use super::{Controller, WatchStream};
use volmig_types::phase::now_ms;

/// The first rule that refused a pool of `plan`, as `rule: reason`.
pub(crate) fn first_refusal(plan: &placement::PlacementPlan) -> String {
    plan.decisions
        .first()
        .map(|d| match &d.verdict {
            PoolVerdict::Rejected(r) => format!("{}: {}", r.rule.name(), r.reason),
            PoolVerdict::Accepted(_) => String::new(),
        })
        .unwrap_or_default()
}

impl Controller {
    /// Places and starts a migration; its id and the caller's event stream.
    pub async fn start_migration(
        &self,
        actor: Option<&str>,
        mut order: Order,
    ) -> Result<(String, WatchStream), ControllerError> {
        if order.is_group() {
            return self.start_group(actor, order).await;
        }
        let (single, pools) = self.plan_single(&order).await?;
        let located = single.located;
        let chosen = match single.plan.chosen() {
            Some(d) => d.clone(),
            None if !order.destination_pool.is_empty() => {
                return Err(ControllerError::Precondition(format!(
                    "pool '{}' cannot take disk {} of '{}': {}",
                    order.destination_pool,
                    order.disk,
                    order.domain,
                    first_refusal(&single.plan)
                )));
            }
            None => {
                return Err(ControllerError::Exhausted(format!(
                    "no pool can take disk {} of '{}'; see `volmig plan` for each pool's reason",
                    order.disk, order.domain
                )))
            }
        };
        let (pool, elsewhere) = self
            .destination(
                &located,
                &chosen,
                &pools,
                &order.domain,
                order.delete_source,
            )
            .await;
        order.destination_pool = pool;
        order.source_users_elsewhere.extend(elsewhere);
        let node = located.node;
        let entry = MigrationEntry {
            migration_id: String::new(),
            node_id: node.id.clone(),
            order,
            latest: Default::default(),
            source_pool: located.disk.pool.clone(),
            previous_source: located.disk.source.clone(),
            dest_storage_id: chosen.storage_id.clone(),
            more_storage_ids: Vec::new(),
        };
        let (id, stream) = self.launch(actor, &node, entry).await?;
        let span = tracing::Span::current();
        span.record("migration.id", id.as_str());
        span.record("node.id", node.id.as_str());
        tracing::info!(migration_id = %id, node = %node.id, pool = %chosen.name, at = now_ms(), "migration relayed");
        Ok((id, stream))
    }

    /// Places every disk and starts the migration on the node; its id and the
    /// caller's event stream.
    async fn start_group(
        &self,
        actor: Option<&str>,
        mut order: Order,
    ) -> Result<(String, WatchStream), ControllerError> {
        let plan = self.plan_group(&order).await?;
        let node = plan.node.clone();
        let mut placed = Vec::new();
        let mut storage_ids = Vec::new();
        for (located, entry, p) in &plan.disks {
            let Some(chosen) = p.chosen() else {
                // A pool the caller named is refused as in a single-disk
                // request: the named pool's state, with its rule.
                let named = [&entry.destination_pool, &order.destination_pool]
                    .into_iter()
                    .find(|n| !n.is_empty());
                if let Some(named) = named {
                    return Err(ControllerError::Precondition(format!(
                        "pool '{named}' cannot take disk {} of '{}': {}",
                        entry.disk,
                        order.domain,
                        first_refusal(p)
                    )));
                }
                let why = match first_refusal(p) {
                    w if w.is_empty() => w,
                    w => format!(": {w}"),
                };
                let together = if order.same_pool {
                    " together with the disks before it on one pool"
                } else {
                    " together with the disks before it"
                };
                return Err(ControllerError::Exhausted(format!(
                    "no pool can take disk {} of '{}'{together}{why}; see `volmig plan` for each disk and pool",
                    entry.disk, order.domain
                )));
            };
            let mut entry = entry.clone();
            let (pool, elsewhere) = self
                .destination(
                    located,
                    chosen,
                    &plan.pools,
                    &order.domain,
                    order.delete_source,
                )
                .await;
            entry.destination_pool = pool;
            entry.source_users_elsewhere.extend(elsewhere);
            storage_ids.push(chosen.storage_id.clone());
            placed.push(entry);
        }
        order.disks = placed;
        let disks = order.disks.len();
        let mut ids = storage_ids.into_iter();
        let entry = MigrationEntry {
            migration_id: String::new(),
            node_id: node.id.clone(),
            order,
            latest: Default::default(),
            source_pool: String::new(),
            previous_source: String::new(),
            dest_storage_id: ids.next().unwrap_or_default(),
            more_storage_ids: ids.collect(),
        };
        let (id, stream) = self.launch(actor, &node, entry).await?;
        tracing::info!(migration_id = %id, node = %node.id, disks, "multi-disk migration relayed");
        Ok((id, stream))
    }

    /// The chosen pool's name on the disk's node and, when the source is to
    /// be deleted, its users on the other nodes that reach it.
    async fn destination(
        &self,
        located: &Located,
        chosen: &placement::Decision,
        pools: &Merged,
        domain: &str,
        delete_source: bool,
    ) -> (String, Vec<String>) {
        let node = &located.node;
        let name = pools
            .pools
            .iter()
            .find(|cp| cp.storage_id == chosen.storage_id)
            .map(|cp| cp.name_on(&node.id).to_string())
            .unwrap_or(chosen.name.clone());
        let elsewhere = if delete_source {
            self.source_users_elsewhere(
                node,
                &located.disk.pool,
                &located.disk.source,
                domain,
                pools,
            )
            .await
        } else {
            Vec::new()
        };
        (name, elsewhere)
    }

    /// Reserves the entry's pools, starts it on the node, records it and
    /// follows it. The slots are given back when the node does not start it.
    async fn launch(
        &self,
        actor: Option<&str>,
        node: &NodeEntry,
        mut entry: MigrationEntry,
    ) -> Result<(String, WatchStream), ControllerError> {
        let slots = self.reserve(&entry).await?;
        let started = self.inner.nodes.migrate(node, actor, &entry.order).await;
        let (first, stream) = match started {
            Ok(started) => started,
            Err(e) => {
                self.give_back(&slots).await;
                return Err(ControllerError::from_node(&node.id, &node.endpoint, e));
            }
        };
        // The first event carries the migration id the node chose; record it
        // before relaying anything so the history never misses a migration.
        let first = match first {
            Some(first)
                if volmig_types::validate::migration_id(&first.migration_id).is_ok()
                    && first.node_id == node.id =>
            {
                first
            }
            other => {
                self.give_back(&slots).await;
                return Err(ControllerError::NodeMisbehaved(match other {
                    None => format!("node {} ended the stream without an event", node.id),
                    Some(_) => format!(
                        "node {} answered with an event that is not its own migration",
                        node.id
                    ),
                }));
            }
        };
        entry.migration_id = first.migration_id.clone();
        entry.latest = first;
        let first_recorded = entry.clone();
        let recorded = self.inner.history.create(entry.clone()).await;
        let entry = match recorded {
            Ok(prior) if prior.node_id != node.id => {
                self.give_back(&slots).await;
                return Err(ControllerError::NodeMisbehaved(format!(
                    "node {} answered with migration {}, which node {} runs",
                    node.id, entry.migration_id, prior.node_id
                )));
            }
            Ok(recorded) => recorded,
            Err(e) => {
                self.give_back(&slots).await;
                return Err(e.into());
            }
        };
        if entry == first_recorded {
            if let Err(e) = self
                .inner
                .reservations
                .bind(&slots, &entry.migration_id)
                .await
            {
                tracing::warn!(error = %e, "cannot bind the in-flight slots to the migration");
            }
        } else {
            // A retry that attached to a migration already recorded: its
            // slots are held already.
            self.give_back(&slots).await;
        }
        let follower = self.follow(&entry, Some(stream));
        Ok((entry.migration_id.clone(), self.watch_stream(&follower)?))
    }

    /// Takes an in-flight slot on each destination pool, refusing when one
    /// is at its limit (another controller may have just filled it).
    async fn reserve(&self, entry: &MigrationEntry) -> Result<Slots, ControllerError> {
        // The pool names, in the order of the storage ids.
        let names: Vec<&str> = if entry.order.disks.is_empty() {
            vec![entry.order.destination_pool.as_str()]
        } else {
            entry
                .order
                .disks
                .iter()
                .map(|d| d.destination_pool.as_str())
                .collect()
        };
        let wants: Vec<(String, Option<u32>)> = entry
            .storage_ids()
            .zip(names.into_iter().chain(std::iter::repeat("")))
            .filter(|(sid, _)| !sid.is_empty())
            .map(|(sid, name)| {
                let limit = self.inner.config.pool_settings(name, sid).max_in_flight;
                (sid.clone(), limit)
            })
            .collect();
        match self.inner.reservations.reserve(&wants).await? {
            Ok(slots) => Ok(slots),
            Err(Refused::Full { storage_id, limit }) => Err(ControllerError::Exhausted(format!(
                "pool '{storage_id}' already has its limit of {limit} migrations in flight (in_flight_limit); try again when one has ended"
            ))),
            Err(Refused::InMaintenance { storage_id, flag }) => {
                Err(ControllerError::Precondition(format!(
                    "maintenance: pool '{storage_id}' was put in maintenance by {} at {} while this migration was being placed; choose another pool or turn it off with `volmig pool maintenance {storage_id} off`",
                    flag.actor,
                    volmig_types::units::utc_time(flag.since_ms)
                )))
            }
        }
    }

    async fn give_back(&self, slots: &Slots) {
        if let Err(e) = self.inner.reservations.release(slots).await {
            tracing::warn!(error = %e, "cannot give back in-flight slots; the leader's sweep will");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use volmig_config::ControllerConfig;
    use volmig_types::host::{DiskKind, ImageFormat, PoolRunState};

    use crate::advertise::Registrant;
    use crate::error::ControllerError;
    use crate::model::{DiskInfo, DiskOrder, DomainInfo, Order, PoolInfo};
    use crate::placement::PoolVerdict;
    use crate::registry::NodeFacts;
    use crate::store::file::FileStore;
    use crate::testing::{FakeNode, FakeNodes};
    use crate::{Controller, Planned};

    const GIB: u64 = 1 << 30;

    fn dir_pool(name: &str, available: u64) -> PoolInfo {
        PoolInfo {
            name: name.to_string(),
            pool_type: "dir".to_string(),
            state: Some(PoolRunState::Running),
            capacity: 1000 * GIB,
            allocation: 1000 * GIB - available,
            available,
            disk_kind: Some(DiskKind::File),
            storage_id: format!("s-{name}"),
            ..PoolInfo::default()
        }
    }

    fn running_vm1() -> DomainInfo {
        DomainInfo {
            name: "vm1".to_string(),
            uuid: "u-vm1".to_string(),
            running: true,
            disks: vec![DiskInfo {
                target: "vda".to_string(),
                kind: Some(DiskKind::File),
                device: "disk".to_string(),
                format: Some(ImageFormat::Qcow2),
                source: "/pools/src/vm1.qcow2".to_string(),
                pool: "src".to_string(),
                volume: "vm1.qcow2".to_string(),
                capacity: 20 * GIB,
                allocation: 8 * GIB,
                ..DiskInfo::default()
            }],
        }
    }

    /// n1: vm1 on pool src, and pools small and big (the roomier).
    fn n1_running_vm1() -> FakeNode {
        FakeNode {
            pools: vec![
                dir_pool("src", 900 * GIB),
                dir_pool("small", 300 * GIB),
                dir_pool("big", 600 * GIB),
            ],
            domains: vec![running_vm1()],
            ..FakeNode::default()
        }
    }

    /// A controller with a file store in `dir` and `ids` registered.
    async fn registered(
        dir: &tempfile::TempDir,
        nodes: Arc<FakeNodes>,
        ids: &[&str],
    ) -> Controller {
        let store = Arc::new(FileStore::open(dir.path()).expect("open the store"));
        let controller = Controller::start(ControllerConfig::default(), store, nodes, Arc::new(()))
            .await
            .expect("start");
        for node in ids {
            let endpoint = format!("unix:///run/{node}.sock");
            controller
                .register(node, &endpoint, NodeFacts::default(), &Registrant::Local)
                .await
                .expect("register");
        }
        controller
    }

    /// n1 runs vm1; n2 does not, though its pool has the most room.
    #[tokio::test(start_paused = true)]
    async fn a_migration_goes_to_the_node_running_the_domain_onto_its_roomiest_pool() {
        let nodes = Arc::new(FakeNodes::default().with("n1", n1_running_vm1()).with(
            "n2",
            FakeNode {
                pools: vec![dir_pool("huge", 950 * GIB)],
                ..FakeNode::default()
            },
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let controller = registered(&dir, nodes.clone(), &["n1", "n2"]).await;
        let order = Order {
            domain: "vm1".to_string(),
            disk: "vda".to_string(),
            ..Order::default()
        };

        let Ok(Planned::Single(plan)) = controller.plan(&order).await else {
            panic!("a single-disk plan");
        };
        assert_eq!(plan.located.node.id, "n1");
        let judged: Vec<(&str, bool)> = plan
            .plan
            .decisions
            .iter()
            .map(|d| {
                let accepted = matches!(d.verdict, PoolVerdict::Accepted(_));
                (d.name.as_str(), accepted)
            })
            .collect();
        assert_eq!(
            judged,
            [("big", true), ("small", true), ("src", false)],
            "only n1's pools, best first, the source rejected"
        );

        let (id, _events) = controller
            .start_migration(None, order)
            .await
            .expect("started");
        let started = nodes.started();
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0].0, "n1");
        assert_eq!(started[0].1.destination_pool, "big");
        assert_eq!(controller.entry(&id).await.expect("recorded").node_id, "n1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_in_maintenance_is_explained_refused_by_name_and_skipped() {
        let nodes = Arc::new(FakeNodes::default().with("n1", n1_running_vm1()));
        let dir = tempfile::tempdir().expect("tempdir");
        let controller = registered(&dir, nodes.clone(), &["n1"]).await;
        let set = controller
            .set_pool_maintenance(Some("alice"), "big", true, Some("new disks".into()))
            .await
            .expect("set");
        assert_eq!((set.storage_id.as_str(), set.flag.on), ("s-big", true));
        let order = |pool: &str| Order {
            domain: "vm1".to_string(),
            disk: "vda".to_string(),
            destination_pool: pool.to_string(),
            ..Order::default()
        };

        let Ok(Planned::Single(plan)) = controller.plan(&order("")).await else {
            panic!("a single-disk plan");
        };
        assert_eq!(plan.plan.chosen().map(|d| d.name.as_str()), Some("small"));
        let big = plan.plan.decisions.iter().find(|d| d.name == "big");
        let Some(PoolVerdict::Rejected(r)) = big.map(|d| &d.verdict) else {
            panic!("big not rejected: {:?}", plan.plan);
        };
        assert_eq!(r.rule.name(), "maintenance");
        assert!(
            r.reason.contains("(set by alice: new disks)"),
            "{}",
            r.reason
        );

        let refused = controller.start_migration(None, order("big")).await;
        let Err(ControllerError::Precondition(why)) = refused.map(|(id, _)| id) else {
            panic!("a named pool in maintenance is not refused as a precondition");
        };
        assert!(
            why.contains("maintenance: pool 'big' is in maintenance"),
            "{why}"
        );
        let group = Order {
            disks: vec![DiskOrder {
                disk: "vda".to_string(),
                destination_pool: "big".to_string(),
                ..DiskOrder::default()
            }],
            ..order("")
        };
        let refused = controller.start_migration(None, group).await;
        let Err(ControllerError::Precondition(why)) = refused.map(|(id, _)| id) else {
            panic!("a multi-disk request naming a pool in maintenance is not refused");
        };
        assert!(why.contains("maintenance"), "{why}");
        assert!(nodes.started().is_empty());

        let listed = controller.list_pools().await.expect("pools");
        let flag = |name: &str| {
            listed
                .iter()
                .find(|p| p.pool.pool.name == name)
                .and_then(|p| p.maintenance.as_ref().map(|m| m.on))
        };
        assert_eq!((flag("big"), flag("small")), (Some(true), None));

        controller
            .set_pool_maintenance(Some("alice"), "s-big", false, None)
            .await
            .expect("off");
        controller
            .start_migration(None, order("big"))
            .await
            .expect("started once the flag is off");
        assert_eq!(nodes.started()[0].1.destination_pool, "big");

        // A flagged pool that no up node reports any more can still be turned off.
        let gone = crate::maintenance::PoolMaintenance::sample(true);
        crate::maintenance::set(controller.inner.store.as_ref(), "s-gone", &gone)
            .await
            .expect("set");
        let off = controller
            .set_pool_maintenance(None, "s-gone", false, None)
            .await
            .expect("a flagged storage id");
        assert!(!off.flag.on);
        assert!(matches!(
            controller
                .set_pool_maintenance(None, "s-never", true, None)
                .await,
            Err(ControllerError::NotFound(_))
        ));
    }
}
