//! Finding the node that runs a domain (always a fresh answer) and judging
//! the pools it reaches with the placement rules.

use super::*;

impl ControllerService {
    /// The disk of a domain that `node` runs.
    pub(super) fn found(
        node: NodeEntry,
        domain: &str,
        disk: &str,
        disks: proto::ListDisksResponse,
    ) -> Result<Located, Status> {
        let found = disks
            .disks
            .into_iter()
            .find(|d| d.target == disk || d.source == disk)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "domain '{domain}' on node {} has no disk '{disk}'",
                    node.id
                ))
            })?;
        Ok(Located { node, disk: found })
    }

    /// Finds `disk` of `domain` on the node running it (see [`Self::locate_domain`]).
    pub(super) async fn locate(
        &self,
        domain: &str,
        disk: &str,
        up: &[NodeEntry],
    ) -> Result<Located, Status> {
        let (node, disks) = self.locate_domain(domain, up).await?;
        Self::found(node, domain, disk, disks)
    }

    /// Finds the node running `domain` among the `up` nodes, with its disks.
    /// Only a node's answer now counts: the node that last ran it is asked
    /// first, then, if it does not run it any more, every other up node at once.
    pub(super) async fn locate_domain(
        &self,
        domain: &str,
        up: &[NodeEntry],
    ) -> Result<(NodeEntry, proto::ListDisksResponse), Status> {
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
                Answer::Defined => defined_on.push(node.id.clone()),
                Answer::Invalid(s) => return Err(s),
                Answer::Unreachable => down.push(format!("{} ({})", node.id, node.endpoint)),
                Answer::Absent => {}
            }
        }
        let others: Vec<NodeEntry> = up
            .iter()
            .filter(|n| hinted.as_ref().is_none_or(|h| h.id != n.id))
            .cloned()
            .collect();
        let domain_owned = domain.to_string();
        let mut asked = self.fan_out(others, move |svc, node| {
            let domain = domain_owned.clone();
            async move { svc.ask_disks(&node, &domain).await }
        });
        while let Some(joined) = asked.join_next().await {
            let Ok((node, answer)) = joined else { continue };
            match answer {
                // Dropping `asked` stops asking the others.
                Answer::Running(disks) => {
                    self.inner.registry.learn_domain(domain, &node.id);
                    return Ok((node, disks));
                }
                Answer::Defined => defined_on.push(node.id.clone()),
                Answer::Invalid(s) => return Err(s),
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
        if !defined_on.is_empty() {
            defined_on.sort();
            return Err(Status::failed_precondition(format!(
                "domain '{domain}' is defined on node(s) {} but not running; live migration needs a running guest",
                defined_on.join(", ")
            )));
        }
        if !down.is_empty() {
            down.sort();
            return Err(Status::unavailable(format!(
                "domain '{domain}' runs on no reachable node; unreachable: {}",
                down.join(", ")
            )));
        }
        Err(Status::not_found(format!(
            "domain '{domain}' runs on no known node (see `volmig nodes`)"
        )))
    }

    /// The storage id of the pool the disk is on, from the inventory, asking
    /// the node again when the pool is new to it.
    pub(super) async fn source_storage_id(&self, located: &Located) -> String {
        let find = |pools: &[proto::Pool]| {
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

    /// Resolves the source and judges every pool: the core of PlanMigration and MigrateVolume.
    pub(super) async fn plan(
        &self,
        req: &proto::MigrateVolumeRequest,
    ) -> Result<(Located, String, Arc<Merged>, placement::Plan), Status> {
        if req.domain.is_empty() || req.disk.is_empty() {
            return Err(Status::invalid_argument("domain and disk are required"));
        }
        let (domain, disk) = (req.domain.escape_debug(), req.disk.escape_debug());
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
            let located = self.locate(&req.domain, &req.disk, &up).await?;
            Ok::<_, Status>((up, located))
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
                    req.destination_format,
                    &req.required_tags,
                    &req.destination_pool,
                    shallow(req.options.as_ref()),
                )
                .await?;
            let plan = placement::plan(&choices.disk, &choices.pools, self.policy());
            self.observe_rejections(&plan);
            Ok::<_, Status>((pools, plan))
        }
        .instrument(span.clone())
        .await;
        let (pools, plan) = spanned(&span, planned)?;
        if let Some(chosen) = plan.chosen() {
            span.record("pool.chosen", chosen.name.as_str());
        }
        let source_pool = located.disk.pool.clone();
        Ok((located, source_pool, pools, plan))
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
        destination_format: i32,
        required_tags: &[String],
        named: &str,
        shallow: bool,
    ) -> Result<DiskChoices, Status> {
        let source_storage_id = self.source_storage_id(located).await;
        let requested_format = match proto::VolumeFormat::try_from(destination_format) {
            Ok(proto::VolumeFormat::Raw) => Some(ImageFormat::Raw),
            Ok(proto::VolumeFormat::Qcow2) => Some(ImageFormat::Qcow2),
            Ok(proto::VolumeFormat::Unspecified) => None,
            Err(_) => {
                return Err(Status::invalid_argument(
                    "invalid destination_format: unknown value",
                ))
            }
        };
        let disk = DiskToPlace {
            node_id: located.node.id.clone(),
            source_storage_id,
            virtual_size: located.disk.capacity_bytes,
            allocation: located.disk.allocation_bytes,
            requested_format,
            required_tags: required_tags.to_vec(),
            shallow_layers: if shallow {
                located
                    .disk
                    .backing_layers
                    .iter()
                    .map(|l| LayerToPlace {
                        allocation: l.allocation_bytes,
                        present_in: l.present_in_pools.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
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
            return Err(Status::not_found(format!(
                "storage pool '{named}' is not known on any up node (see `volmig pools --controller …`)"
            )));
        }
        let in_flight = self.in_flight();
        let candidates: Vec<PoolCandidate> = considered
            .into_iter()
            .map(|cp| PoolCandidate {
                storage_id: cp.storage_id.clone(),
                name: cp.name_on(node_id).to_string(),
                pool_type: cp.pool.r#type.clone(),
                active: cp.pool.state == proto::PoolState::Running as i32,
                capacity: cp.pool.capacity_bytes,
                allocation: cp.pool.allocation_bytes,
                available: cp.pool.available_bytes,
                provisioned: cp.pool.provisioned_bytes,
                reachable_from: cp.names.keys().cloned().collect(),
                tags: self
                    .inner
                    .config
                    .pool_settings(&cp.pool.name, &cp.storage_id)
                    .tags,
                in_flight: in_flight.get(&cp.storage_id).copied().unwrap_or(0),
            })
            .collect();
        Ok(DiskChoices {
            disk,
            pools: candidates,
        })
    }

    pub(super) fn plan_response(
        located: &Located,
        source_pool: &str,
        plan: &placement::Plan,
    ) -> proto::PlanMigrationResponse {
        proto::PlanMigrationResponse {
            node_id: located.node.id.clone(),
            disk: Some(located.disk.clone()),
            source_pool: source_pool.to_string(),
            candidates: plan
                .decisions
                .iter()
                .map(|d| match &d.verdict {
                    Verdict::Accepted(fit) => proto::PlacementCandidate {
                        pool: d.name.clone(),
                        storage_id: d.storage_id.clone(),
                        accepted: true,
                        rejected_by: String::new(),
                        reason: String::new(),
                        score: fit.score,
                        free_after_bytes: fit.free_after,
                    },
                    Verdict::Rejected(r) => proto::PlacementCandidate {
                        pool: d.name.clone(),
                        storage_id: d.storage_id.clone(),
                        accepted: false,
                        rejected_by: r.rule.name().to_string(),
                        reason: r.reason.clone(),
                        score: 0.0,
                        free_after_bytes: 0,
                    },
                })
                .collect(),
            chosen_pool: plan.chosen().map(|d| d.name.clone()).unwrap_or_default(),
            disks: Vec::new(),
        }
    }
}

/// Whether a request keeps the disk's backing chain (placement then counts
/// the layers a pool lacks).
pub(super) fn shallow(options: Option<&proto::MigrationOptions>) -> bool {
    options.is_some_and(|o| o.chain_policy == proto::ChainPolicy::Shallow as i32)
}

/// `result`, its error also recorded as `span`'s status.
fn spanned<T>(span: &tracing::Span, result: Result<T, Status>) -> Result<T, Status> {
    if let Err(status) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", status.message());
    }
    result
}
