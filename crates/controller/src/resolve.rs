//! Finding the node that runs a domain (always a fresh answer) and judging
//! the pools it reaches with the placement rules.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::Instrument;

use super::error::{ControllerError, NodeErrorKind};
use super::group_placement::{self, DiskChoices};
use super::inventory::{ClusterPool, Merged};
use super::model::{DiskInfo, DiskOrder, DomainInfo, Order};
use super::nodes::find_disk;
use super::placement::{self, DiskToPlace, LayerToPlace, PoolCandidate, PoolPolicy, PoolVerdict};
use super::registry::NodeEntry;
use super::Controller;

/// Where a domain's disk is, as its node reports it.
#[derive(Debug, Clone)]
pub struct Located {
    /// The node running the domain.
    pub node: Arc<NodeEntry>,
    /// The disk.
    pub disk: DiskInfo,
}

/// One disk placed: where it is and every pool's verdict.
#[derive(Debug, Clone)]
pub struct SinglePlan {
    /// The disk and its node.
    pub located: Located,
    /// The pool the disk is on now.
    pub source_pool: String,
    /// Every pool's verdict.
    pub plan: placement::PlacementPlan,
}

/// Every disk of a multi-disk request, located and placed.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// The node running the domain.
    pub node: Arc<NodeEntry>,
    /// Each disk with its request entry and plan, in pivot order.
    pub disks: Vec<(Located, DiskOrder, placement::PlacementPlan)>,
    /// The cluster's pools.
    pub pools: Arc<Merged>,
}

/// What PlanMigration answers.
#[derive(Debug, Clone)]
pub enum Planned {
    /// A single-disk request.
    Single(Box<SinglePlan>),
    /// A multi-disk request.
    Group(Box<GroupPlan>),
}

/// One node's answer to "do you run this domain?".
enum Answer {
    Running(DomainInfo),
    /// Defined there but not running.
    Defined(DomainInfo),
    Absent,
    /// The request itself is wrong; every node would say so.
    Invalid(ControllerError),
    Unreachable,
}

impl Controller {
    /// Plans a request without starting it.
    pub async fn plan(&self, order: &Order) -> Result<Planned, ControllerError> {
        if order.is_group() {
            return Ok(Planned::Group(Box::new(self.plan_group(order).await?)));
        }
        let (single, _) = self.plan_single(order).await?;
        Ok(Planned::Single(Box::new(single)))
    }

    /// The disk of a domain that `node` runs.
    pub(super) fn found(
        node: Arc<NodeEntry>,
        domain: &str,
        disk: &str,
        disks: &DomainInfo,
    ) -> Result<Located, ControllerError> {
        let found = find_disk(disks, disk).cloned().ok_or_else(|| {
            ControllerError::NotFound(format!(
                "domain '{domain}' on node {} has no disk '{disk}'",
                node.id
            ))
        })?;
        Ok(Located { node, disk: found })
    }

    /// Asks one node whether it runs `domain`.
    async fn ask_disks(&self, node: &NodeEntry, domain: &str) -> Answer {
        match self.inner.nodes.list_disks(node, domain).await {
            Ok(disks) if disks.running => Answer::Running(disks),
            Ok(disks) => Answer::Defined(disks),
            Err(e) if e.kind == NodeErrorKind::NotFound => Answer::Absent,
            Err(e) if e.kind == NodeErrorKind::InvalidArgument => {
                Answer::Invalid(ControllerError::Node(e))
            }
            Err(e) => {
                self.node_failed(&node.id, e.message);
                Answer::Unreachable
            }
        }
    }

    /// Finds the node running `domain` among the `up` nodes, with its disks.
    /// Only a node's answer now counts: the node that last ran it is asked
    /// first, then, if it does not run it any more, every other up node at once.
    /// With `allow_stopped`, a domain that runs nowhere but is defined on
    /// exactly one node is found there (to be moved offline); defined on
    /// several, which definition to change is not clear, so it is refused.
    pub(super) async fn locate_domain(
        &self,
        domain: &str,
        up: &[Arc<NodeEntry>],
        allow_stopped: bool,
    ) -> Result<(Arc<NodeEntry>, DomainInfo), ControllerError> {
        let mut down = Vec::new();
        let mut defined_on = Vec::new();
        let hinted = self
            .inner
            .registry
            .domain_hint(domain)
            .and_then(|id| up.iter().find(|n| n.id == id).cloned());
        if let Some(node) = &hinted {
            match self.ask_disks(node, domain).await {
                Answer::Running(disks) => {
                    self.inner.registry.learn_domain(domain, &node.id);
                    return Ok((node.clone(), disks));
                }
                Answer::Defined(disks) => defined_on.push((node.clone(), disks)),
                Answer::Invalid(e) => return Err(e),
                Answer::Unreachable => down.push(format!("{} ({})", node.id, node.endpoint)),
                Answer::Absent => {}
            }
        }
        let others: Vec<Arc<NodeEntry>> = up
            .iter()
            .filter(|n| hinted.as_ref().is_none_or(|h| h.id != n.id))
            .cloned()
            .collect();
        let domain_owned = domain.to_string();
        let mut asked = self.fan_out(others, move |c, node| {
            let domain = domain_owned.clone();
            async move { c.ask_disks(&node, &domain).await }
        });
        while let Some(joined) = asked.join_next().await {
            let Ok((node, answer)) = joined else { continue };
            match answer {
                // Dropping `asked` stops asking the others.
                Answer::Running(disks) => {
                    self.inner.registry.learn_domain(domain, &node.id);
                    return Ok((node, disks));
                }
                Answer::Defined(disks) => defined_on.push((node.clone(), disks)),
                Answer::Invalid(e) => return Err(e),
                Answer::Unreachable => down.push(format!("{} ({})", node.id, node.endpoint)),
                Answer::Absent => {}
            }
        }
        let up_ids: HashSet<&str> = up.iter().map(|n| n.id.as_str()).collect();
        down.extend(
            self.inner
                .registry
                .all()
                .into_iter()
                .filter(|n| !up_ids.contains(n.id.as_str()))
                .map(|n| format!("{} ({})", n.id, n.endpoint)),
        );
        if allow_stopped && defined_on.len() == 1 && down.is_empty() {
            if let Some(found) = defined_on.pop() {
                return Ok(found);
            }
        }
        if !defined_on.is_empty() {
            let mut nodes: Vec<&str> = defined_on.iter().map(|(n, _)| n.id.as_str()).collect();
            nodes.sort();
            return Err(ControllerError::NotRunning {
                domain: domain.to_string(),
                nodes: nodes.join(", "),
            });
        }
        if !down.is_empty() {
            down.sort();
            return Err(ControllerError::NoReachableNode {
                domain: domain.to_string(),
                unreachable: down.join(", "),
            });
        }
        Err(ControllerError::NotFound(format!(
            "domain '{domain}' runs on no known node (see `volmig nodes`)"
        )))
    }

    /// The storage id of the pool the disk is on, from the inventory, asking
    /// the node again when the pool is new to it.
    async fn source_storage_id(&self, located: &Located) -> String {
        let find = |pools: &[super::model::PoolInfo]| {
            pools
                .iter()
                .find(|p| p.name == located.disk.pool)
                .map(|p| p.storage_id.clone())
        };
        if located.disk.pool.is_empty() {
            return String::new();
        }
        if let Some(id) = self
            .inner
            .inventory
            .pools_of(&located.node.id)
            .and_then(|ps| find(&ps))
        {
            return id;
        }
        match self.fetch_pools(&located.node).await {
            Ok(pools) => find(&pools).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Resolves the source and judges every pool: the core of planning and
    /// starting a single-disk migration.
    pub(super) async fn plan_single(
        &self,
        order: &Order,
    ) -> Result<(SinglePlan, Arc<Merged>), ControllerError> {
        if order.domain.is_empty() || order.disk.is_empty() {
            return Err(ControllerError::InvalidArgument {
                field: "request",
                reason: "domain and disk are required".into(),
            });
        }
        let (domain, disk) = (order.domain.escape_debug(), order.disk.escape_debug());
        // Two spans an operator finds in the migration's trace: which node
        // runs the domain, then which pool placement chose.
        let resolve = tracing::info_span!(
            "controller.resolve",
            domain = %domain,
            disk = %disk,
            node.id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let located = async {
            let up = self.up_nodes().await;
            let (node, disks) = self
                .locate_domain(&order.domain, &up, order.offline_if_stopped)
                .await?;
            let located = Self::found(node, &order.domain, &order.disk, &disks)?;
            Ok((up, located))
        }
        .instrument(resolve.clone())
        .await;
        let (up, located) = spanned(&resolve, located)?;
        resolve.record("node.id", located.node.id.as_str());
        let span = tracing::info_span!(
            "controller.plan",
            domain = %domain,
            disk = %disk,
            node.id = %located.node.id,
            pool.chosen = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let planned = async {
            let pools = self.cluster_pools(&up).await;
            let choices = self
                .choices(
                    &located,
                    &pools,
                    order.destination_format,
                    &order.required_tags,
                    &order.destination_pool,
                    order.shallow,
                )
                .await?;
            let plan = placement::plan(&choices.disk, &choices.pools, self.policy());
            self.observe_rejections(&plan);
            Ok((pools, plan))
        }
        .instrument(span.clone())
        .await;
        let (pools, plan) = spanned(&span, planned)?;
        if let Some(chosen) = plan.chosen() {
            span.record("pool.chosen", chosen.name.as_str());
        }
        let source_pool = located.disk.pool.clone();
        Ok((
            SinglePlan {
                located,
                source_pool,
                plan,
            },
            pools,
        ))
    }

    /// Reports the pools `plan` rejected, by rule.
    pub(super) fn observe_rejections(&self, plan: &placement::PlacementPlan) {
        for decision in &plan.decisions {
            if let PoolVerdict::Rejected(rejection) = &decision.verdict {
                self.inner.observer.placement_rejected(rejection.rule);
            }
        }
    }

    /// The operator's limits for a pool.
    pub(super) fn policy(&self) -> impl Fn(&PoolCandidate) -> PoolPolicy + '_ {
        |c: &PoolCandidate| {
            let s = self.inner.config.pool_settings(&c.name, &c.storage_id);
            PoolPolicy {
                used_threshold: s.used_threshold,
                overprovision_factor: s.overprovision_factor,
                max_in_flight: s.max_in_flight,
            }
        }
    }

    /// A located disk as placement sees it, and the pools it may go to: every
    /// pool its node reaches, or only the pool `named`.
    pub(super) async fn choices(
        &self,
        located: &Located,
        pools: &Merged,
        requested_format: Option<volmig_types::host::ImageFormat>,
        required_tags: &[String],
        named: &str,
        shallow: bool,
    ) -> Result<DiskChoices, ControllerError> {
        let source_storage_id = self.source_storage_id(located).await;
        let disk = DiskToPlace {
            node_id: located.node.id.clone(),
            source_storage_id,
            virtual_size: located.disk.capacity,
            allocation: located.disk.allocation,
            requested_format,
            required_tags: required_tags.to_vec(),
            shallow_layers: if shallow {
                located
                    .disk
                    .backing_layers
                    .iter()
                    .map(|l| LayerToPlace {
                        allocation: l.allocation,
                        present_in: l.present_in_pools.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            flattened_layers: if shallow {
                Vec::new()
            } else {
                located
                    .disk
                    .backing_layers
                    .iter()
                    .map(|l| l.allocation)
                    .collect()
            },
            checkpoints: located.disk.checkpoints.clone(),
        };
        let node_id = located.node.id.as_str();
        // A pool the domain's node does not reach can never be chosen, so only
        // a pool the caller names is judged (and explained) wherever it is:
        // with a thousand hosts of local pools, the rest would be thousands of
        // "unreachable" rows.
        let considered: Vec<&ClusterPool> = if named.is_empty() {
            pools.reachable_from(node_id).collect()
        } else {
            pools
                .pools
                .iter()
                .filter(|cp| cp.name_on(node_id) == named || cp.storage_id == *named)
                .collect()
        };
        if !named.is_empty() && considered.is_empty() {
            return Err(ControllerError::NotFound(format!(
                "storage pool '{named}' is not known on any up node (see `volmig pools --controller …`)"
            )));
        }
        let in_flight = self.in_flight().await?;
        // Read on every placement, never cached, so that a flag set through
        // another controller counts from the next placement (see `maintenance`).
        let mut maintenance = self.maintenance().await?;
        let candidates: Vec<PoolCandidate> = considered
            .into_iter()
            .map(|cp| PoolCandidate {
                storage_id: cp.storage_id.clone(),
                name: cp.name_on(node_id).to_string(),
                pool_type: cp.pool.pool_type.clone(),
                active: cp.pool.running(),
                capacity: cp.pool.capacity,
                allocation: cp.pool.allocation,
                available: cp.pool.available,
                provisioned: cp.pool.provisioned,
                reachable_from: cp.names.keys().cloned().collect(),
                tags: self
                    .inner
                    .config
                    .pool_settings(&cp.pool.name, &cp.storage_id)
                    .tags,
                in_flight: in_flight.get(&cp.storage_id).copied().unwrap_or(0),
                maintenance: maintenance.remove(&cp.storage_id).filter(|m| m.on),
            })
            .collect();
        Ok(DiskChoices {
            disk,
            pools: candidates,
        })
    }

    /// Locates the domain and places each disk of a multi-disk request.
    pub(super) async fn plan_group(&self, order: &Order) -> Result<GroupPlan, ControllerError> {
        if order.domain.is_empty() {
            return Err(ControllerError::InvalidArgument {
                field: "domain",
                reason: "required".into(),
            });
        }
        let up = self.up_nodes().await;
        let (node, listed) = self
            .locate_domain(&order.domain, &up, order.offline_if_stopped)
            .await?;
        let entries: Vec<DiskOrder> = if order.all_disks {
            listed
                .disks
                .iter()
                .filter(|d| d.movable())
                .map(|d| {
                    order
                        .disks
                        .iter()
                        .find(|e| e.disk == d.target)
                        .cloned()
                        .unwrap_or_else(|| DiskOrder {
                            disk: d.target.clone(),
                            ..Default::default()
                        })
                })
                .collect()
        } else {
            order.disks.clone()
        };
        if entries.is_empty() {
            return Err(ControllerError::Precondition(format!(
                "domain '{}' has no disk volmig can move (cdroms, empty, read-only and shareable disks are skipped)",
                order.domain
            )));
        }
        let pools = self.cluster_pools(&up).await;
        let mut located = Vec::new();
        let mut choices = Vec::new();
        for entry in &entries {
            let disk = Self::found(node.clone(), &order.domain, &entry.disk, &listed)?;
            let named = if entry.destination_pool.is_empty() {
                &order.destination_pool
            } else {
                &entry.destination_pool
            };
            let format = entry.destination_format.or(order.destination_format);
            choices.push(
                self.choices(
                    &disk,
                    &pools,
                    format,
                    &order.required_tags,
                    named,
                    order.shallow,
                )
                .await?,
            );
            located.push(disk);
        }
        let plans = group_placement::plan_together(&choices, self.policy(), order.same_pool);
        plans.iter().for_each(|p| self.observe_rejections(p));
        let disks = located
            .into_iter()
            .zip(entries)
            .zip(plans)
            .map(|((l, e), p)| (l, e, p))
            .collect();
        Ok(GroupPlan { node, disks, pools })
    }
}

/// `result`, its error also recorded as `span`'s status.
fn spanned<T>(
    span: &tracing::Span,
    result: Result<T, ControllerError>,
) -> Result<T, ControllerError> {
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", error.to_string().as_str());
    }
    result
}
