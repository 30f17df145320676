//! The engine's side of multi-disk migrations: accepting a group (every disk
//! validated before anything is created), following, cancelling and
//! recovering it. How the members coordinate is [`crate::engine::group`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::admission::{Admitted, Requested};
use super::job;
use super::{new_migration_id, new_record, Engine, Job, ListFilter, Source, Subscription};
use crate::engine::group::{Abort, Gate, Group};
use crate::error::Error;
use crate::journal::{GroupLink, Plan};
use crate::model::{
    now_ms, DiskChoice, DiskSelection, Event, GroupRequest, MigrationRequest, Options, Skipped,
};
use crate::{plan, validate};

/// A multi-disk migration as GetMigration and ListMigrations show it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The request, as received.
    pub request: GroupRequest,
    /// Its latest event (the sum of its disks').
    pub latest: Event,
}

impl Engine {
    /// Starts a migration of several disks of one domain, or attaches to the
    /// one started with the same request id. Every disk is validated before
    /// anything is created; one that cannot move refuses the whole request.
    #[tracing::instrument(skip(self, req), err, fields(domain = %req.domain.escape_debug()))]
    pub async fn migrate_group(&self, req: GroupRequest) -> Result<Subscription, Error> {
        check_group_request(&req)?;
        let mut reservation = match self.admit(&Requested::Group(req.clone())).await? {
            Admitted::Attached(sub) => return Ok(*sub),
            Admitted::Reserved(reservation) => reservation,
        };
        let (choices, skipped) = self.select_disks(&req).await?;
        let requests = member_requests(&req, &choices)?;
        reservation.claim(
            requests
                .iter()
                .map(|r| (r.domain.clone(), r.disk.clone()))
                .collect(),
        )?;
        let planned = super::blocking({
            let hv = self.inner.hv.clone();
            let requests = requests.clone();
            move || {
                let planned = requests
                    .iter()
                    .map(|r| plan::plan_with_need(hv.as_ref(), r))
                    .collect::<Result<Vec<_>, Error>>()?;
                // Disks of one request could share layers, which their
                // reservations and rollbacks do not arbitrate yet.
                if let Some((p, _)) = planned.iter().find(|(p, _)| !p.chain.is_empty()) {
                    return Err(Error::Precondition(format!(
                        "disk {} keeps a backing chain (SHALLOW), which a multi-disk request cannot do yet; migrate it in a request of its own",
                        p.target
                    )));
                }
                // Switching every disk of a stopped guest as one (all or none)
                // is not built yet: each offline disk moves in its own request.
                if let Some((p, _)) = planned.iter().find(|(p, _)| p.offline) {
                    return Err(Error::Precondition(format!(
                        "domain '{}' is not running, and a multi-disk request cannot move a stopped guest's disks offline yet; move disk {} (and each other disk) in a request of its own",
                        p.domain, p.target
                    )));
                }
                plan::check_space_together(hv.as_ref(), &planned)?;
                Ok(planned.into_iter().map(|(p, _)| p).collect::<Vec<Plan>>())
            }
        })
        .await
        .map_err(|e| Error::Journal(e.to_string()))?;
        let plans = match planned {
            Ok(plans) => plans,
            Err(Error::DestinationExists { pool, volume }) => {
                return Err(self.inner.registry().reserved_or_exists(pool, volume));
            }
            Err(e) => return Err(e),
        };
        distinct(&plans)?;

        let group_id = reservation.id().to_string();
        let ids: Vec<String> = plans.iter().map(|_| new_migration_id()).collect();
        let link = GroupLink {
            id: group_id.clone(),
            request: req.clone(),
            started_ms: now_ms(),
            members: ids.clone(),
            skipped: skipped.clone(),
        };
        let node_id = self.inner.config.node_id.clone();
        let trace_id = self.inner.traces.current_trace_id().unwrap_or_default();
        let records: Vec<_> = ids
            .iter()
            .zip(requests.iter().zip(&plans))
            .map(|(id, (r, p))| {
                new_record(trace_id.clone(), id, r, p, &node_id, Some(link.clone()))
            })
            .collect();
        let members: Vec<Arc<Job>> = records.iter().map(|r| Job::new(r.clone())).collect();
        let gate = Gate::new(members.len(), req.max_parallel_copies);
        let group = Group::new(
            group_id.clone(),
            req.clone(),
            link.started_ms,
            skipped,
            members.clone(),
            Some(gate),
            node_id,
        );
        reservation.register(&members, Some(&group))?;
        let journal = self.inner.journal.clone();
        let saved = super::blocking(move || records.iter().try_for_each(|r| journal.save(r)))
            .await
            .map_err(|e| Error::Journal(e.to_string()))
            .and_then(|r| r.map_err(Error::Journal));
        if let Err(e) = saved {
            for id in &ids {
                let _ = self.inner.journal.remove(id);
            }
            return Err(e);
        }
        reservation.confirm();
        tracing::info!(migration_id = %group_id, disks = ids.len(), "multi-disk migration accepted");
        let sub = Subscription::new(Source::Group(group.clone()));
        for job in members {
            tokio::spawn(job::run(self.inner.clone(), job, job::Entry::Fresh));
        }
        Ok(sub)
    }

    /// The disks a request moves, and those `all_disks` leaves alone.
    async fn select_disks(
        &self,
        req: &GroupRequest,
    ) -> Result<(Vec<DiskChoice>, Vec<Skipped>), Error> {
        let overrides = match &req.disks {
            DiskSelection::Listed(choices) => return Ok((choices.clone(), Vec::new())),
            DiskSelection::All(overrides) => overrides,
        };
        let domain = self.disks(&req.domain).await?;
        let mut chosen = Vec::new();
        let mut skipped = Vec::new();
        for d in &domain.disks {
            let spec = &d.spec;
            let reason = if spec.device != "disk" {
                Some(spec.device.clone())
            } else if spec.source.is_none() {
                Some("no source (an empty drive, or a source type volmig cannot move)".to_string())
            } else if spec.read_only {
                Some("read-only".to_string())
            } else if spec.shareable {
                Some("shareable".to_string())
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(Skipped {
                    disk: spec.target.clone(),
                    reason,
                }),
                None => chosen.push(
                    overrides
                        .iter()
                        .find(|o| o.disk == spec.target)
                        .cloned()
                        .unwrap_or_else(|| DiskChoice {
                            disk: spec.target.clone(),
                            destination_pool: None,
                            destination_volume: None,
                            destination_format: None,
                            source_users_elsewhere: Vec::new(),
                        }),
                ),
            }
        }
        if let Some(stray) = overrides
            .iter()
            .find(|o| !chosen.iter().any(|c| c.disk == o.disk))
        {
            let why = skipped
                .iter()
                .find(|s| s.disk == stray.disk)
                .map_or("it has no such disk target".to_string(), |s| {
                    format!("that disk is skipped ({})", s.reason)
                });
            return Err(Error::InvalidArgument {
                field: "disks",
                reason: format!(
                    "with all_disks, entries give destinations to eligible disks by target; '{}': {why}",
                    stray.disk.escape_debug()
                ),
            });
        }
        if chosen.is_empty() {
            let left: Vec<String> = skipped
                .iter()
                .map(|s| format!("{} ({})", s.disk, s.reason))
                .collect();
            return Err(Error::Precondition(format!(
                "domain '{}' has no disk volmig can move; skipped: {}",
                domain.name,
                if left.is_empty() {
                    "none".to_string()
                } else {
                    left.join(", ")
                }
            )));
        }
        Ok((chosen, skipped))
    }

    /// Rebuilds the groups of the records loaded at start-up, and returns the
    /// members of groups that had not committed to their pivots: those roll
    /// back whatever state their copy is in, so the guest ends entirely on its
    /// sources.
    pub(super) fn recover_groups(&self) -> HashSet<String> {
        let mut reg = self.inner.registry();
        let mut links: HashMap<String, GroupLink> = HashMap::new();
        for job in reg.by_id.values() {
            if let Some(link) = &job.lock().record.group {
                links.entry(link.id.clone()).or_insert_with(|| link.clone());
            }
        }
        let mut uncommitted = HashSet::new();
        for (id, link) in links {
            let members: Vec<Arc<Job>> = link
                .members
                .iter()
                .filter_map(|m| reg.by_id.get(m).cloned())
                .collect();
            let committed = members.iter().any(|m| {
                let st = m.lock();
                st.record.pivot.is_some()
                    || matches!(st.record.stage, crate::journal::Stage::Pivoted(_))
                    || st.record.latest.phase.past_pivot()
            });
            if !committed {
                uncommitted.extend(members.iter().map(|m| m.id.clone()));
            }
            let group = Group::new(
                id.clone(),
                link.request.clone(),
                link.started_ms,
                link.skipped.clone(),
                members.clone(),
                None,
                self.inner.config.node_id.clone(),
            );
            for m in &members {
                let _ = m.group.set(Arc::downgrade(&group));
            }
            if !link.request.request_id.is_empty() {
                reg.by_request
                    .insert(link.request.request_id.clone(), id.clone());
            }
            reg.groups.insert(id, group);
        }
        uncommitted
    }

    /// The group with this id, as callers see it; `None` when the id is not a group's.
    pub fn get_group(&self, id: &str) -> Result<Option<GroupView>, Error> {
        Ok(self.group(id)?.map(|g| view(&g)))
    }

    /// Groups matching the filter, newest first.
    pub fn list_groups(&self, filter: &ListFilter) -> Vec<GroupView> {
        let groups: Vec<Arc<Group>> = self.inner.registry().groups.values().cloned().collect();
        let mut views: Vec<GroupView> = groups
            .iter()
            .map(|g| view(g))
            .filter(|v| filter.matches(&v.latest))
            .collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.latest.started_ms));
        views
    }

    /// Changes the bandwidth of every disk of the group still copying (each
    /// disk gets the limit). FAILED_PRECONDITION when none is.
    pub(super) async fn set_group_bandwidth(
        &self,
        group: &Group,
        bytes_per_sec: u64,
    ) -> Result<(), Error> {
        let mut changed = 0;
        let mut last_error = None;
        for job in &group.members {
            match self.set_job_bandwidth(job, bytes_per_sec).await {
                Ok(()) => changed += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match (changed, last_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// Stops a group before its pivots: every disk rolls back. Refused once every
/// disk was synchronized and the pivots go ahead.
pub(super) fn cancel_group(group: &Group) -> Result<Event, Error> {
    let (_, latest) = group.latest();
    let refused = |reason| Error::WrongPhase {
        id: group.id.clone(),
        phase: latest.phase.name(),
        reason,
    };
    if latest.phase.is_terminal() {
        return Err(refused("it has already ended"));
    }
    match &group.gate {
        Some(gate) if gate.abort(Abort::Cancelled) => Ok(latest),
        Some(_) => Err(refused(
            "every disk is synchronized and the pivots have begun; the migration can no longer be cancelled",
        )),
        None => Err(refused(
            "the node restarted during it; it is being finished or rolled back as a whole",
        )),
    }
}

fn view(group: &Group) -> GroupView {
    GroupView {
        request: group.request.clone(),
        latest: group.latest().1,
    }
}

fn check_group_request(req: &GroupRequest) -> Result<(), Error> {
    validate::request_id(&req.request_id)?;
    validate::object_name("domain", &req.domain)?;
    if !req.destination_pool.is_empty() {
        validate::object_name("destination_pool", &req.destination_pool)?;
    }
    validate::bandwidth(req.options.bandwidth)?;
    validate::convergence_window(req.options.convergence_window)?;
    let choices = match &req.disks {
        DiskSelection::Listed(choices) | DiskSelection::All(choices) => choices,
    };
    if choices.is_empty() && matches!(req.disks, DiskSelection::Listed(_)) {
        return Err(Error::InvalidArgument {
            field: "disks",
            reason: "empty: name at least one disk, or ask for all_disks".to_string(),
        });
    }
    let mut seen = HashSet::new();
    for c in choices {
        validate::disk(&c.disk)?;
        if let Some(pool) = &c.destination_pool {
            validate::object_name("destination_pool", pool)?;
        }
        if let Some(volume) = &c.destination_volume {
            validate::volume_name("destination_volume", volume)?;
        }
        if !seen.insert(c.disk.as_str()) {
            return Err(Error::InvalidArgument {
                field: "disks",
                reason: format!("disk '{}' is named twice", c.disk.escape_debug()),
            });
        }
    }
    // Listed disks are known now: a missing destination pool is the
    // caller's mistake, refused before admission weighs the disks.
    if let DiskSelection::Listed(choices) = &req.disks {
        member_requests(req, choices)?;
    }
    Ok(())
}

fn member_requests(
    req: &GroupRequest,
    choices: &[DiskChoice],
) -> Result<Vec<MigrationRequest>, Error> {
    choices
        .iter()
        .map(|c| {
            let pool = c
                .destination_pool
                .clone()
                .unwrap_or_else(|| req.destination_pool.clone());
            if pool.is_empty() {
                return Err(Error::InvalidArgument {
                    field: "destination_pool",
                    reason: format!(
                        "disk {} has no destination pool: name one for the request or for the disk",
                        c.disk
                    ),
                });
            }
            Ok(MigrationRequest {
                request_id: String::new(),
                domain: req.domain.clone(),
                disk: c.disk.clone(),
                destination_pool: pool,
                destination_volume: c.destination_volume.clone(),
                destination_format: c.destination_format.or(req.destination_format),
                options: Options {
                    source_users_elsewhere: req
                        .options
                        .source_users_elsewhere
                        .iter()
                        .chain(&c.source_users_elsewhere)
                        .cloned()
                        .collect(),
                    ..req.options.clone()
                },
            })
        })
        .collect()
}

/// Two entries that resolve to one disk, or two disks that would become one
/// destination volume, cannot both move.
fn distinct(plans: &[Plan]) -> Result<(), Error> {
    let mut targets = HashSet::new();
    let mut names = HashMap::new();
    for p in plans {
        if !targets.insert(p.target.as_str()) {
            return Err(Error::InvalidArgument {
                field: "disks",
                reason: format!("disk {} is named twice (by target and by path)", p.target),
            });
        }
        if let Some(other) = names.insert((p.dest_pool.as_str(), p.dest_volume.as_str()), &p.target)
        {
            return Err(Error::InvalidArgument {
                field: "destination_volume",
                reason: format!(
                    "disks {other} and {} would both become volume '{}' in pool '{}'; name their destination volumes (a disk pool names its partitions itself: send at most one disk per disk pool in one request)",
                    p.target, p.dest_volume, p.dest_pool
                ),
            });
        }
    }
    Ok(())
}
