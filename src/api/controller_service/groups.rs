//! Multi-disk requests at the controller: every disk is placed by the same
//! rules as a single disk, together (see [`group_placement`]), and the node
//! gets one request naming each disk's pool.

use super::*;

/// Every disk of a multi-disk request, located and placed.
pub(super) struct GroupPlan {
    /// The node running the domain.
    pub node: NodeEntry,
    /// Each disk with its request entry and plan, in pivot order.
    pub disks: Vec<(Located, proto::DiskDestination, placement::Plan)>,
    /// The cluster's pools.
    pub pools: Arc<Merged>,
}

/// Whether a request names several disks (or all of them).
pub(super) fn is_group(req: &proto::MigrateVolumeRequest) -> bool {
    !req.disks.is_empty() || req.all_disks
}

/// Whether the node would move this disk with `all_disks` (the node skips the others).
fn eligible(d: &proto::Disk) -> bool {
    d.device == "disk" && !d.source.is_empty() && !d.read_only && !d.shareable
}

impl ControllerService {
    /// Locates the domain and places each disk of a multi-disk request.
    pub(super) async fn plan_group(
        &self,
        req: &proto::MigrateVolumeRequest,
    ) -> Result<GroupPlan, Status> {
        if req.domain.is_empty() {
            return Err(Status::invalid_argument("invalid domain: required"));
        }
        // The same shape rules the node applies (one way of naming disks,
        // volumes per disk, known enum values), refused before any node is asked.
        crate::api::convert::requested_from_proto(req.clone())?;
        let up = self.up_nodes().await;
        let (node, listed) = self.locate_domain(&req.domain, &up).await?;
        let entries: Vec<proto::DiskDestination> = if req.all_disks {
            listed
                .disks
                .iter()
                .filter(|d| eligible(d))
                .map(|d| {
                    req.disks
                        .iter()
                        .find(|e| e.disk == d.target)
                        .cloned()
                        .unwrap_or_else(|| proto::DiskDestination {
                            disk: d.target.clone(),
                            ..Default::default()
                        })
                })
                .collect()
        } else {
            req.disks.clone()
        };
        if entries.is_empty() {
            return Err(Status::failed_precondition(format!(
                "domain '{}' has no disk volmig can move (cdroms, empty, read-only and shareable disks are skipped)",
                req.domain
            )));
        }
        let pools = self.cluster_pools(&up).await;
        let mut located = Vec::new();
        let mut choices = Vec::new();
        for entry in &entries {
            let disk = Self::found(node.clone(), &req.domain, &entry.disk, listed.clone())?;
            let named = if entry.destination_pool.is_empty() {
                &req.destination_pool
            } else {
                &entry.destination_pool
            };
            let format = if entry.destination_format == 0 {
                req.destination_format
            } else {
                entry.destination_format
            };
            choices.push(
                self.choices(
                    &disk,
                    &pools,
                    format,
                    &req.required_tags,
                    named,
                    shallow(req.options.as_ref()),
                )
                .await?,
            );
            located.push(disk);
        }
        let plans = group_placement::plan_together(&choices, self.policy(), req.same_pool);
        plans.iter().for_each(|p| self.observe_rejections(p));
        let disks = located
            .into_iter()
            .zip(entries)
            .zip(plans)
            .map(|((l, e), p)| (l, e, p))
            .collect();
        Ok(GroupPlan { node, disks, pools })
    }

    /// PlanMigration of a multi-disk request: one plan per disk.
    pub(super) fn group_plan_response(plan: &GroupPlan) -> proto::PlanMigrationResponse {
        proto::PlanMigrationResponse {
            node_id: plan.node.id.clone(),
            disks: plan
                .disks
                .iter()
                .map(|(located, _, p)| Self::plan_response(located, &located.disk.pool, p))
                .collect(),
            ..Default::default()
        }
    }

    /// Places every disk and starts the migration on the node; its id and the
    /// caller's event stream.
    pub(super) async fn start_group_migration(
        &self,
        caller: Option<&Caller>,
        mut req: proto::MigrateVolumeRequest,
    ) -> Result<(String, EventStream), Status> {
        let plan = self.plan_group(&req).await?;
        let node = plan.node.clone();
        let mut placed = Vec::new();
        let mut storage_ids = Vec::new();
        for (located, entry, p) in &plan.disks {
            let Some(chosen) = p.chosen() else {
                let why = p
                    .decisions
                    .first()
                    .map(|d| match &d.verdict {
                        Verdict::Rejected(r) => format!(": {}: {}", r.rule.name(), r.reason),
                        Verdict::Accepted(_) => String::new(),
                    })
                    .unwrap_or_default();
                let together = if req.same_pool {
                    " together with the disks before it on one pool"
                } else {
                    " together with the disks before it"
                };
                return Err(Status::resource_exhausted(format!(
                    "no pool can take disk {} of '{}'{together}{why}; see `volmig plan` for each disk and pool",
                    entry.disk, req.domain
                )));
            };
            let pool_name = plan
                .pools
                .pools
                .iter()
                .find(|cp| cp.storage_id == chosen.storage_id)
                .map(|cp| cp.name_on(&node.id).to_string())
                .unwrap_or(chosen.name.clone());
            let mut entry = entry.clone();
            entry.destination_pool = pool_name;
            let delete = req
                .options
                .as_ref()
                .is_some_and(|o| o.source_policy == proto::SourcePolicy::Delete as i32);
            if delete {
                let elsewhere = self
                    .source_users_elsewhere(
                        &node,
                        &located.disk.pool,
                        &located.disk.source,
                        &req.domain,
                        &plan.pools,
                    )
                    .await;
                entry.source_users_elsewhere.extend(elsewhere);
            }
            storage_ids.push(chosen.storage_id.clone());
            placed.push(entry);
        }
        req.disks = placed;
        let first = self.start_on_node(caller, &node, &req).await?;
        let (stream, first) = first;
        let mut ids = storage_ids.into_iter();
        let record = proto::MigrationRecord {
            migration_id: first.migration_id.clone(),
            node_id: node.id.clone(),
            request: Some(req),
            latest: Some(first.clone()),
            source_pool: String::new(),
            previous_source: String::new(),
        };
        let entry = Entry {
            record,
            dest_storage_id: ids.next().unwrap_or_default(),
            more_storage_ids: ids.collect(),
        };
        let entry = self.record_started(&node, entry)?;
        tracing::info!(migration_id = %first.migration_id, node = %node.id, disks = entry.record.request.as_ref().map_or(0, |r| r.disks.len()), "multi-disk migration relayed");
        let follower = self.follow(&entry, Some(stream));
        Ok((
            entry.record.migration_id.clone(),
            self.watch_stream(&follower)?,
        ))
    }
}
