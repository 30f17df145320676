//! Admission, decided in one place for single-disk and multi-disk requests:
//! a retried request id attaches to its migration, also while that one is
//! still planning; a request id reused for another request, a disk already
//! moving or a node at its limit refuse; anything else is admitted with a
//! [`Reservation`] of its request id and disks. The reservation is what a
//! later request meets while this one plans, and it gives everything back
//! when dropped (a planning failure, a journal failure, a panic, a caller
//! gone) unless the migration was registered and confirmed.

use std::sync::Arc;

use tokio::sync::watch;

use super::{new_migration_id, Engine, Group, Inner, Job, Registry, Source, Subscription};
use crate::error::Error;
use crate::model::{DiskSelection, GroupRequest, MigrationRequest};

/// A request as admission sees it.
#[derive(Clone)]
pub(super) enum Requested {
    Disk(MigrationRequest),
    Group(GroupRequest),
}

impl Requested {
    fn request_id(&self) -> &str {
        match self {
            Requested::Disk(r) => &r.request_id,
            Requested::Group(r) => &r.request_id,
        }
    }

    /// The disks named, as (domain, disk) the way the caller spelled them;
    /// none yet for `all_disks`, whose disks are claimed once selected.
    fn disks(&self) -> Vec<(String, String)> {
        match self {
            Requested::Disk(r) => vec![(r.domain.clone(), r.disk.clone())],
            Requested::Group(r) => match &r.disks {
                DiskSelection::Listed(choices) => choices
                    .iter()
                    .map(|c| (r.domain.clone(), c.disk.clone()))
                    .collect(),
                DiskSelection::All(_) => Vec::new(),
            },
        }
    }

    /// Whether `source` is the migration this very request started.
    fn started(&self, source: &Source) -> bool {
        match (self, source) {
            (Requested::Disk(r), Source::Job(job)) => job.lock().record.request == *r,
            (Requested::Group(r), Source::Group(group)) => group.request == *r,
            _ => false,
        }
    }

    fn same(&self, other: &Requested) -> bool {
        match (self, other) {
            (Requested::Disk(a), Requested::Disk(b)) => a == b,
            (Requested::Group(a), Requested::Group(b)) => a == b,
            _ => false,
        }
    }

    /// The refusal of a node at its limit, worded for the kind of request.
    fn at_limit(&self, inner: &Inner, running: usize, needed: usize) -> Error {
        let node = &inner.config.node_id;
        let max = inner.config.max_concurrent;
        match self {
            Requested::Disk(_) => Error::Exhausted(format!(
                "node {node} is running its limit of {max} migrations; retry when one finishes"
            )),
            Requested::Group(_) => Error::Exhausted(format!(
                "node {node} runs at most {max} disk migrations and {running} are running; this request needs {needed}: retry when enough have finished, or raise max_concurrent_migrations"
            )),
        }
    }
}

/// A request admitted and still planning, as the registry keeps it.
pub(super) struct Planning {
    request: Arc<Requested>,
    /// The id its migration (or group) will have, named by conflicts meanwhile.
    id: String,
    disks: Vec<(String, String)>,
    /// Closed when the reservation is dropped.
    done: watch::Receiver<()>,
}

/// What admission decided.
pub(super) enum Decision {
    /// The request started this migration already.
    Attach(Source),
    /// The same request is planning: decide again once it has ended.
    Wait(watch::Receiver<()>),
    Conflict(Error),
    Admit(Reservation),
}

/// Decides on `req` against the registry, reserving its request id and disks
/// when it is admitted.
pub(super) fn decide(inner: &Arc<Inner>, req: &Requested) -> Decision {
    let mut reg = inner.registry();
    let request_id = req.request_id();
    if !request_id.is_empty() {
        if let Some(id) = reg.by_request.get(request_id) {
            let source = match reg.by_id.get(id) {
                Some(job) => Some(Source::Job(job.clone())),
                None => reg.groups.get(id).cloned().map(Source::Group),
            };
            return match source {
                Some(source) if req.started(&source) => Decision::Attach(source),
                _ => Decision::Conflict(Error::RequestIdReused(request_id.to_string())),
            };
        }
        let planning = reg
            .planning
            .values()
            .find(|p| p.request.request_id() == request_id);
        if let Some(planning) = planning {
            return if req.same(&planning.request) {
                Decision::Wait(planning.done.clone())
            } else {
                Decision::Conflict(Error::RequestIdReused(request_id.to_string()))
            };
        }
    }
    let disks = req.disks();
    if let Err(e) = check_disks(inner, &reg, None, req, &disks) {
        return Decision::Conflict(e);
    }
    let number = reg.next_reservation;
    reg.next_reservation += 1;
    let id = new_migration_id();
    let (sender, done) = watch::channel(());
    let request = Arc::new(req.clone());
    reg.planning.insert(
        number,
        Planning {
            request: request.clone(),
            id: id.clone(),
            disks,
            done,
        },
    );
    Decision::Admit(Reservation {
        inner: inner.clone(),
        number,
        id,
        request,
        registered: Vec::new(),
        group: None,
        confirmed: false,
        _done: sender,
    })
}

/// Refuses `disks` when one is moving or being planned by another request,
/// or when the node has no room for them beside every other migration.
fn check_disks(
    inner: &Inner,
    reg: &Registry,
    own: Option<u64>,
    req: &Requested,
    disks: &[(String, String)],
) -> Result<(), Error> {
    let others = || reg.planning.iter().filter(|(n, _)| Some(**n) != own);
    for (domain, disk) in disks {
        if let Some((domain, disk, migration_id)) = reg.active_on(domain, disk) {
            return Err(Error::AlreadyMigrating {
                domain,
                disk,
                migration_id,
            });
        }
        let planned = others().find(|(_, p)| p.disks.contains(&(domain.clone(), disk.clone())));
        if let Some((_, p)) = planned {
            return Err(Error::AlreadyMigrating {
                domain: domain.clone(),
                disk: disk.clone(),
                migration_id: p.id.clone(),
            });
        }
    }
    let running = reg.by_disk.len() + others().map(|(_, p)| p.disks.len()).sum::<usize>();
    if running + disks.len() > inner.config.max_concurrent {
        return Err(req.at_limit(inner, running, disks.len()));
    }
    Ok(())
}

impl Engine {
    /// Admits `req`, or attaches to the migration it started (waiting while
    /// that one plans), or refuses it.
    pub(super) async fn admit(&self, req: &Requested) -> Result<Admitted, Error> {
        loop {
            match decide(&self.inner, req) {
                Decision::Attach(source) => {
                    return self
                        .subscribe(source)
                        .map(|s| Admitted::Attached(Box::new(s)))
                }
                // Only closes (its sender is never used to send).
                Decision::Wait(mut done) => while done.changed().await.is_ok() {},
                Decision::Conflict(e) => return Err(e),
                Decision::Admit(reservation) => return Ok(Admitted::Reserved(reservation)),
            }
        }
    }
}

/// What admission lets a request do.
pub(super) enum Admitted {
    Attached(Box<Subscription>),
    Reserved(Reservation),
}

/// An admitted request's hold on its request id, disks and, once registered,
/// its migrations. Dropped unconfirmed, it gives all of them back.
pub(super) struct Reservation {
    inner: Arc<Inner>,
    number: u64,
    id: String,
    request: Arc<Requested>,
    /// Migrations registered by [`Reservation::register`].
    registered: Vec<String>,
    group: Option<String>,
    confirmed: bool,
    /// Dropped with the reservation, which wakes the requests waiting on it.
    _done: watch::Sender<()>,
}

impl Reservation {
    /// The id the migration (or group) is to have.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the disks reserved with `disks`, as the request's disk
    /// selection found them.
    pub(super) fn claim(&mut self, disks: Vec<(String, String)>) -> Result<(), Error> {
        let mut reg = self.inner.registry();
        check_disks(&self.inner, &reg, Some(self.number), &self.request, &disks)?;
        if let Some(planning) = reg.planning.get_mut(&self.number) {
            planning.disks = disks;
        }
        Ok(())
    }

    /// Registers the migrations planned, `members` of `group` if they move
    /// together, checking again under the lock what planning could not see:
    /// the disks and names as the host resolved them.
    pub(super) fn register(
        &mut self,
        members: &[Arc<Job>],
        group: Option<&Arc<Group>>,
    ) -> Result<(), Error> {
        let mut reg = self.inner.registry();
        let others: usize = reg
            .planning
            .iter()
            .filter(|(n, _)| **n != self.number)
            .map(|(_, p)| p.disks.len())
            .sum();
        let running = reg.by_disk.len() + others;
        if running + members.len() > self.inner.config.max_concurrent {
            return Err(self.request.at_limit(&self.inner, running, members.len()));
        }
        let plans: Vec<_> = members
            .iter()
            .map(|m| m.lock().record.plan.clone())
            .collect();
        if let Some(e) = plans.iter().find_map(|p| reg.conflict(p)) {
            return Err(e);
        }
        for (job, plan) in members.iter().zip(&plans) {
            reg.claim(&job.id, plan, &plan.dest_volume);
            reg.by_id.insert(job.id.clone(), job.clone());
            if let Some(group) = group {
                let _ = job.group.set(Arc::downgrade(group));
            }
        }
        if let Some(group) = group {
            reg.groups.insert(group.id.clone(), group.clone());
        }
        let request_id = self.request.request_id();
        if !request_id.is_empty() {
            reg.by_request
                .insert(request_id.to_string(), self.id.clone());
        }
        self.registered = members.iter().map(|m| m.id.clone()).collect();
        self.group = group.map(|g| g.id.clone());
        Ok(())
    }

    /// Keeps what was registered: the migrations are journaled and go ahead.
    pub(super) fn confirm(mut self) {
        self.confirmed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reg = self.inner.registry();
        reg.planning.remove(&self.number);
        if !self.confirmed {
            reg.forget(&self.registered, self.group.as_deref());
        }
    }
}
