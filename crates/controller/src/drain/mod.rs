//! Draining a storage pool (issue #22, "Evacuation"): every guest with disks
//! on the pool moves elsewhere, live, one multi-disk migration per guest.
//!
//! **Plan, then execute, from the same data.** [`Controller::plan_drain`]
//! asks every up node reaching the pool for its volumes and their users,
//! groups them by guest, and places the guests one after another with the
//! existing placement rules, each seeing what the ones before it add to the
//! destinations ([`DrainPlan`]). What cannot move is listed with its reason
//! ([`Unmovable`]). [`Controller::start_drain`] records that plan as a job in
//! the store (`drains/<id>`, [`DrainJob`]) and the leading controller carries
//! it out: each item's state is written before each action, with request ids
//! derived from the drain, the item and the attempt, so a new leader resumes
//! every unfinished drain, re-attaches to what runs and never starts an item
//! twice. Followers answer from the store. An item whose named destination
//! no longer fits fails its attempt with the node's or placement's reason
//! and is tried again, up to `max_tries`.
//!
//! Stopped guests are reported, not moved: offline moves come later.

mod attempt;
mod budget;
mod enumerate;
mod executor;
mod job_store;
pub mod model;
mod plan;
pub mod view;

#[cfg(test)]
mod exec_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod resume_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use volmig_types::phase::now_ms;

pub use budget::{redivide, share};
pub use executor::request_id;
pub use model::{
    DrainId, DrainJob, DrainPlan, DrainSpec, ItemState, LeftBehind, OrderPolicy, PlannedDisk,
    PlannedItem, Projection, ReportRow, SourcePolicy, Unmovable,
};
pub use view::{Counts, DrainView, ItemProgress};

use crate::error::ControllerError;
use crate::Controller;

/// What this controller holds of each drain it executes or relays.
struct Live {
    /// The latest view, to every watcher.
    view: watch::Sender<DrainView>,
    /// Wakes the executor (a cancel was recorded).
    wake: Arc<Notify>,
    /// The executor task, when this controller runs the drain.
    executor: Option<AbortHandle>,
}

/// The drains in memory: their watch channels and executors.
#[derive(Default)]
pub(crate) struct Drains {
    /// Whether this controller leads (and so executes drains).
    leading: AtomicBool,
    live: Mutex<HashMap<DrainId, Live>>,
}

impl Drains {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DrainId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(map: &'a mut HashMap<DrainId, Live>, job: &DrainJob) -> &'a mut Live {
        map.entry(job.id.clone()).or_insert_with(|| Live {
            view: watch::channel(DrainView::of(job.clone(), Vec::new())).0,
            wake: Arc::new(Notify::new()),
            executor: None,
        })
    }

    /// The notifier that wakes drain `id`'s executor.
    pub(crate) fn wake(&self, id: &str) -> Arc<Notify> {
        let mut map = self.lock();
        match map.get(id) {
            Some(live) => live.wake.clone(),
            None => {
                let wake = Arc::new(Notify::new());
                let (view, _) = watch::channel(DrainView::of(placeholder(id), Vec::new()));
                map.insert(
                    id.to_string(),
                    Live {
                        view,
                        wake: wake.clone(),
                        executor: None,
                    },
                );
                wake
            }
        }
    }

    /// Sends `job` with its running items' progress to the watchers.
    pub(crate) fn publish(&self, job: &DrainJob, running: Vec<ItemProgress>) {
        let mut map = self.lock();
        let live = Self::entry(&mut map, job);
        let view = DrainView::of(job.clone(), running);
        live.view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }

    /// The running items' progress this controller knows of.
    fn progress(&self, id: &str) -> Vec<ItemProgress> {
        self.lock()
            .get(id)
            .map(|l| l.view.borrow().running.clone())
            .unwrap_or_default()
    }

    /// Drops what is held of drain `id` once nobody watches it and no
    /// executor runs it here, so finished drains do not pile up in memory.
    pub(crate) fn forget_if_idle(&self, id: &str) {
        let mut map = self.lock();
        let idle = map.get(id).is_some_and(|l| {
            l.view.receiver_count() == 0 && l.executor.as_ref().is_none_or(|h| h.is_finished())
        });
        if idle {
            map.remove(id);
        }
    }

    /// The executor of drain `id` has returned (the drain finished).
    pub(crate) fn executor_ended(&self, id: &str) {
        if let Some(live) = self.lock().get_mut(id) {
            live.executor = None;
        }
        self.forget_if_idle(id);
    }

    /// Whether an executor of drain `id` runs here.
    fn executing(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .and_then(|l| l.executor.as_ref())
            .is_some_and(|h| !h.is_finished())
    }
}

/// A job known only by id until the store is read.
fn placeholder(id: &str) -> DrainJob {
    DrainJob {
        id: id.to_string(),
        actor: None,
        spec: DrainSpec::of(""),
        plan: DrainPlan {
            storage_id: String::new(),
            items: Vec::new(),
            left: Vec::new(),
            projections: Vec::new(),
        },
        items: Vec::new(),
        cancel_requested: false,
        created_ms: 0,
        finished_ms: None,
    }
}

fn check(spec: &DrainSpec) -> Result<(), ControllerError> {
    let invalid = |field, reason: &str| {
        Err(ControllerError::InvalidArgument {
            field,
            reason: reason.to_string(),
        })
    };
    if spec.pool.is_empty() {
        return invalid("pool", "required: a pool name or storage id");
    }
    if spec.max_parallel == 0 {
        return invalid("max_parallel", "must be at least 1");
    }
    if spec.per_node == 0 {
        return invalid("per_node", "must be at least 1");
    }
    if spec.max_tries == 0 {
        return invalid("max_tries", "must be at least 1");
    }
    Ok(())
}

impl Controller {
    /// The plan of draining `spec.pool`: what moves where, in order, what
    /// stays and why, and each destination's used fraction afterwards.
    /// Nothing is recorded or started.
    pub async fn plan_drain(&self, spec: &DrainSpec) -> Result<DrainPlan, ControllerError> {
        check(spec)?;
        let found = self.find_on_pool(spec).await?;
        Ok(plan::plan(found, self.policy(), spec.order))
    }

    /// Plans the drain and records it as a job that the leading controller
    /// carries out; its view (items all pending). With `spec.dry_run`
    /// nothing is recorded and the view's job has an empty id.
    /// [`ControllerError::NothingToDrain`] when no guest can move.
    pub async fn start_drain(
        &self,
        actor: Option<&str>,
        spec: DrainSpec,
    ) -> Result<DrainView, ControllerError> {
        let plan = self.plan_drain(&spec).await?;
        let dry_run = spec.dry_run;
        if plan.items.is_empty() && !dry_run {
            let why = match plan.left.first() {
                None => "no guest uses a volume on it".to_string(),
                Some(first) => format!(
                    "{} thing(s) stay; the first, {}: {}",
                    plan.left.len(),
                    if first.domain.is_empty() {
                        first.volumes.join(", ")
                    } else {
                        first.domain.clone()
                    },
                    first.reason
                ),
            };
            return Err(ControllerError::NothingToDrain {
                pool: spec.pool,
                why,
            });
        }
        let job = DrainJob {
            id: if dry_run {
                String::new()
            } else {
                format!("d-{}", uuid::Uuid::new_v4().simple())
            },
            actor: actor.map(str::to_string),
            items: vec![
                ItemState::Pending {
                    tries: 0,
                    last_error: None,
                };
                plan.items.len()
            ],
            spec,
            plan,
            cancel_requested: false,
            created_ms: now_ms(),
            finished_ms: None,
        };
        if dry_run {
            return Ok(DrainView::of(job, Vec::new()));
        }
        job_store::create(self.inner.store.as_ref(), &job).await?;
        tracing::info!(drain = %job.id, pool = %job.spec.pool.escape_debug(), items = job.items.len(), "drain recorded");
        if self.inner.drains.leading.load(Ordering::SeqCst) {
            self.execute(job.clone());
        }
        Ok(DrainView::of(job, Vec::new()))
    }

    /// Drain `id` as recorded, with its running items' progress where this
    /// controller executes it.
    pub async fn get_drain(&self, id: &str) -> Result<DrainView, ControllerError> {
        let job = job_store::get(self.inner.store.as_ref(), id).await?;
        Ok(DrainView::of(job, self.inner.drains.progress(id)))
    }

    /// Every drain, oldest first.
    pub async fn list_drains(&self) -> Result<Vec<DrainView>, ControllerError> {
        Ok(job_store::all(self.inner.store.as_ref())
            .await?
            .into_iter()
            .map(|job| {
                let running = self.inner.drains.progress(&job.id);
                DrainView::of(job, running)
            })
            .collect())
    }

    /// Drain `id`'s view now and at every change: from the executor where it
    /// runs here, else read again from the store every heartbeat.
    pub async fn watch_drain(
        &self,
        id: &str,
    ) -> Result<watch::Receiver<DrainView>, ControllerError> {
        let job = job_store::get(self.inner.store.as_ref(), id).await?;
        let rx = {
            let mut map = self.inner.drains.lock();
            let live = Drains::entry(&mut map, &job);
            if live.view.borrow().job.created_ms == 0 {
                live.view
                    .send_replace(DrainView::of(job.clone(), Vec::new()));
            }
            live.view.subscribe()
        };
        if !self.inner.drains.executing(id) && !job.is_finished() {
            self.poll_drain(id.to_string());
        }
        Ok(rx)
    }

    /// Keeps a follower's watchers of drain `id` up to date from the store
    /// until it ends, nobody watches, or an executor runs it here.
    fn poll_drain(&self, id: String) {
        let c = self.clone();
        let every = self.heartbeat();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let watched = c
                    .inner
                    .drains
                    .lock()
                    .get(&id)
                    .is_some_and(|l| l.view.receiver_count() > 0);
                if !watched || c.inner.drains.executing(&id) {
                    c.inner.drains.forget_if_idle(&id);
                    return;
                }
                let Ok(job) = job_store::get(c.inner.store.as_ref(), &id).await else {
                    continue;
                };
                let finished = job.is_finished();
                c.inner.drains.publish(&job, Vec::new());
                if finished {
                    c.inner.drains.forget_if_idle(&id);
                    return;
                }
            }
        });
    }

    /// Cancels drain `id`: nothing new starts, running items are cancelled
    /// (their guests stay on their source); its view.
    pub async fn cancel_drain(
        &self,
        actor: Option<&str>,
        id: &str,
    ) -> Result<DrainView, ControllerError> {
        let job = job_store::update(self.inner.store.as_ref(), id, |job| {
            if job.is_finished() {
                return Err(ControllerError::DrainFinished(job.id.clone()));
            }
            job.cancel_requested = true;
            Ok(())
        })
        .await?;
        tracing::info!(drain = %id, actor = ?actor, "drain cancel requested");
        self.inner.drains.wake(id).notify_one();
        let view = DrainView::of(job, self.inner.drains.progress(id));
        self.inner.drains.forget_if_idle(id);
        Ok(view)
    }

    /// The leader's round: executes every unfinished drain not executed here yet.
    pub(crate) async fn resume_drains(&self) {
        self.inner.drains.leading.store(true, Ordering::SeqCst);
        let jobs = match job_store::all(self.inner.store.as_ref()).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the drains");
                return;
            }
        };
        for job in jobs.into_iter().filter(|j| !j.is_finished()) {
            self.execute(job);
        }
    }

    /// Stops executing drains: leadership was lost, and the new leader
    /// resumes them from the store.
    pub(crate) fn drains_lost(&self) {
        self.inner.drains.leading.store(false, Ordering::SeqCst);
        for live in self.inner.drains.lock().values_mut() {
            if let Some(handle) = live.executor.take() {
                handle.abort();
            }
        }
    }

    /// Starts executing `job` here unless it already is.
    fn execute(&self, job: DrainJob) {
        let mut map = self.inner.drains.lock();
        let live = Drains::entry(&mut map, &job);
        if live.executor.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let span = tracing::info_span!("controller.drain", drain.id = %job.id);
        let run = executor::Executor::new(self.clone(), job).run();
        let task = tokio::spawn(tracing::Instrument::instrument(run, span));
        live.executor = Some(task.abort_handle());
    }
}
