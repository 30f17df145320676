//! The node's migration engine: accepts requests, owns one task per disk
//! migration, and lets any number of watchers follow each one.
//!
//! Invariants: at most one active migration per (domain UUID, disk target); at
//! most `max_concurrent` active migrations; every phase change is journaled
//! before it is published; every subscription ends with exactly one terminal event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument;

use crate::error::Error;
use crate::group::Group;
use crate::hypervisor::{
    Definition, DiskKind, DiskSource, DiskSpec, HostInfo, HvError, Hypervisor, PoolRunState,
    PoolSpec, VolumeUser,
};
use crate::journal::{GroupLink, Journal, Plan, Record, Stage};
use crate::model::{now_ms, Event, MigrationRequest, Phase, Progress};
use crate::observer::{Observer, TraceContext};
use crate::{job, plan, validate};

/// How long finished migrations are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished records older than this are pruned.
    pub max_age: Duration,
    /// At most this many finished records are kept (the newest).
    pub max_records: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_records: 1000,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id, stamped on every event.
    pub node_id: String,
    /// Most migrations running at once.
    pub max_concurrent: usize,
    /// The longest wait between two polls of the block job.
    pub poll_interval: Duration,
    /// How often progress is published while copying.
    pub progress_interval: Duration,
    /// How long libvirtd may be unreachable during a migration before it fails.
    pub libvirt_grace: Duration,
    /// How long a migration stays SYNCHRONIZED (mirroring every write) before it
    /// pivots: a window for an operator or a test to observe or cancel it.
    pub synchronized_hold: Duration,
    /// Most subscribers (watchers, attached requests) of one migration at
    /// once: each holds memory and a task for as long as it lasts.
    pub max_watchers: usize,
    /// How long finished records are kept.
    pub retention: Retention,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: "node".to_string(),
            max_concurrent: 4,
            poll_interval: Duration::from_millis(250),
            progress_interval: Duration::from_secs(1),
            libvirt_grace: Duration::from_secs(90),
            synchronized_hold: Duration::ZERO,
            max_watchers: 64,
            retention: Retention::default(),
        }
    }
}

/// A request to a running job, answered by the job itself so that the answer
/// and the job's next step can never contradict each other.
pub(crate) enum Command {
    /// Stop before the pivot; answered with the state at that moment, or
    /// refused once the pivot has begun.
    Cancel(oneshot::Sender<Result<Event, Error>>),
    /// Change the copy bandwidth (bytes/s, 0 = unlimited).
    SetBandwidth(u64, oneshot::Sender<Result<(), Error>>),
}

pub(crate) struct JobState {
    pub record: Record,
    pub seq: u64,
}

/// One migration: its record, its event channel and its command queue. Only
/// the job's own task changes the record (see [`job`]).
pub(crate) struct Job {
    pub id: String,
    pub state: Mutex<JobState>,
    pub events: broadcast::Sender<(u64, Event)>,
    commands: mpsc::Sender<Command>,
    /// Taken by the job's task when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Command>>>,
    /// The group this disk moves with, if any.
    pub group: OnceLock<Weak<Group>>,
}

impl Job {
    fn new(record: Record) -> Arc<Job> {
        let (events, _) = broadcast::channel(256);
        let (commands, inbox) = mpsc::channel(16);
        Arc::new(Job {
            id: record.id.clone(),
            state: Mutex::new(JobState { record, seq: 0 }),
            events,
            commands,
            inbox: Mutex::new(Some(inbox)),
            group: OnceLock::new(),
        })
    }

    /// The group this disk moves with, while it exists.
    pub fn group(&self) -> Option<Arc<Group>> {
        self.group.get().and_then(Weak::upgrade)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn latest(&self) -> Event {
        self.lock().record.latest.clone()
    }

    pub fn record(&self) -> Record {
        self.lock().record.clone()
    }

    /// The command queue, for the job's task; `None` once taken.
    pub fn take_inbox(&self) -> Option<mpsc::Receiver<Command>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn ended(&self) -> Error {
        Error::WrongPhase {
            id: self.id.clone(),
            phase: self.latest().phase.name(),
            reason: "it has already ended",
        }
    }
}

mod groups;
pub use groups::GroupView;

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Job>>,
    by_request: HashMap<String, String>,
    /// Active migrations by (domain uuid, target): the per-disk lease.
    by_disk: HashMap<(String, String), String>,
    /// Destination names of active migrations by (pool, volume), so two
    /// migrations can never race for one name.
    reserved: HashMap<(String, String), String>,
    /// Multi-disk migrations by id.
    groups: HashMap<String, Arc<Group>>,
}

pub(crate) struct Inner {
    pub hv: Arc<dyn Hypervisor>,
    pub journal: Journal,
    pub config: EngineConfig,
    registry: Mutex<Registry>,
    /// Told of every event published (metrics).
    observer: Arc<dyn Observer>,
    /// Links each migration to the trace of the request that started it.
    pub traces: Arc<dyn TraceContext>,
}

impl Inner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a blocking hypervisor call off the async runtime.
    pub async fn hv<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let hv = self.hv.clone();
        // The blocking thread has no span of its own: keep the caller's, so
        // the call's spans and logs belong to its migration.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(hv.as_ref())))
            .await
            .unwrap_or_else(|e| {
                Err(HvError::Failed {
                    op: "spawn_blocking",
                    code: -1,
                    message: e.to_string(),
                })
            })
    }

    /// Journals then publishes a new latest event for the job. The in-memory
    /// record changes even when the journal write fails, so the job's own
    /// decisions (what to roll back) always follow what it did.
    pub async fn publish(&self, job: &Job, update: impl FnOnce(&mut Record)) -> Result<(), Error> {
        let record = {
            let mut st = job.lock();
            update(&mut st.record);
            st.record.latest.timestamp_ms = now_ms();
            st.record.clone()
        };
        let journal = self.journal.clone();
        blocking(move || journal.save(&record))
            .await
            .map_err(|e| Error::Journal(e.to_string()))?
            .map_err(Error::Journal)?;
        self.announce(job);
        Ok(())
    }

    /// Publishes the job's current latest event without journaling (progress).
    pub fn announce(&self, job: &Job) {
        let mut st = job.lock();
        st.seq += 1;
        let event = st.record.latest.clone();
        // No receivers is normal (nobody watching); the record keeps the state.
        let _ = job.events.send((st.seq, event.clone()));
        drop(st);
        self.observer.event(&event);
        let terminal = event.phase.is_terminal();
        if let Some(group) = job.group() {
            group.refresh();
        }
        if terminal {
            self.release(job);
            self.prune();
        }
    }

    fn release(&self, job: &Job) {
        let mut reg = self.registry();
        reg.by_disk.retain(|_, id| id != &job.id);
        reg.reserved.retain(|_, id| id != &job.id);
    }

    /// Moves the job's destination reservation to the name the pool really gave
    /// the volume (disk pools name partitions themselves).
    pub fn rename_reservation(&self, job: &Job, pool: &str, from: &str, volume: &str) {
        let mut reg = self.registry();
        // Only the top's name moves; the layers this job copies stay reserved.
        reg.reserved
            .retain(|(p, v), id| id != &job.id || p != pool || v != from);
        reg.reserved
            .insert((pool.to_string(), volume.to_string()), job.id.clone());
    }

    /// Forgets finished migrations beyond the retention (oldest first).
    fn prune(&self) {
        let retention = self.config.retention;
        let cutoff = now_ms().saturating_sub(retention.max_age.as_millis() as u64);
        let mut finished: Vec<(u64, String)> = {
            let reg = self.registry();
            reg.by_id
                .values()
                .filter_map(|j| {
                    let st = j.lock();
                    let e = &st.record.latest;
                    e.phase
                        .is_terminal()
                        .then(|| (e.timestamp_ms, j.id.clone()))
                })
                .collect()
        };
        finished.sort();
        let excess = finished.len().saturating_sub(retention.max_records);
        let doomed: Vec<String> = finished
            .iter()
            .enumerate()
            .filter(|(i, (t, _))| *i < excess || *t < cutoff)
            .map(|(_, (_, id))| id.clone())
            .collect();
        if doomed.is_empty() {
            return;
        }
        {
            let mut reg = self.registry();
            for id in &doomed {
                reg.by_id.remove(id);
            }
            // A group goes with the last of its members.
            let Registry {
                by_id,
                by_request,
                groups,
                ..
            } = &mut *reg;
            groups.retain(|_, g| g.members.iter().any(|m| by_id.contains_key(&m.id)));
            by_request.retain(|_, id| by_id.contains_key(id) || groups.contains_key(id));
        }
        for id in &doomed {
            if let Err(e) = self.journal.remove(id) {
                tracing::warn!(error = %e, "cannot prune a finished journal record");
            }
        }
        tracing::debug!(pruned = doomed.len(), "pruned finished migrations");
    }
}

/// The migration engine of one node.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A stream of one migration's events: its latest event first, then every later
/// one, ending after the terminal event.
pub struct Subscription {
    source: Source,
    first: Option<(u64, Event)>,
    rx: broadcast::Receiver<(u64, Event)>,
    last_seq: u64,
    done: bool,
}

/// What a subscription follows: one disk's migration or a group's.
#[derive(Clone)]
enum Source {
    Job(Arc<Job>),
    Group(Arc<Group>),
}

impl Source {
    fn id(&self) -> &str {
        match self {
            Source::Job(job) => &job.id,
            Source::Group(group) => &group.id,
        }
    }

    fn latest(&self) -> (u64, Event) {
        match self {
            Source::Job(job) => {
                let st = job.lock();
                (st.seq, st.record.latest.clone())
            }
            Source::Group(group) => group.latest(),
        }
    }

    fn events(&self) -> &broadcast::Sender<(u64, Event)> {
        match self {
            Source::Job(job) => &job.events,
            Source::Group(group) => &group.events,
        }
    }
}

impl Subscription {
    fn new(source: Source) -> Self {
        // Subscribed before the latest is read, so nothing falls between them.
        let rx = source.events().subscribe();
        let first = Some(source.latest());
        Subscription {
            source,
            first,
            rx,
            last_seq: 0,
            done: false,
        }
    }

    /// The migration id.
    pub fn migration_id(&self) -> &str {
        self.source.id()
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let (seq, event) = match self.first.take() {
            Some(first) => first,
            None => loop {
                match self.rx.recv().await {
                    Ok((seq, event)) if seq > self.last_seq => break (seq, event),
                    Ok(_) => continue,
                    // A slow watcher skips to the latest state rather than
                    // stalling the job; phase changes it missed are in the record.
                    Err(broadcast::error::RecvError::Lagged(_))
                    | Err(broadcast::error::RecvError::Closed) => {
                        let latest = self.source.latest();
                        if latest.0 > self.last_seq || latest.1.phase.is_terminal() {
                            break latest;
                        }
                    }
                }
            },
        };
        self.last_seq = seq;
        if event.phase.is_terminal() {
            self.done = true;
        }
        Some(event)
    }
}

/// A disk as `ListDisks` shows it.
#[derive(Debug, Clone)]
pub struct DiskView {
    /// The disk from the live definition.
    pub spec: DiskSpec,
    /// Pool and volume of its source, when a pool holds it.
    pub pool: Option<String>,
    /// Volume name.
    pub volume: Option<String>,
    /// Virtual size, bytes (0 when unknown).
    pub capacity: u64,
    /// Allocated bytes (0 when unknown).
    pub allocation: u64,
    /// The migration moving it now.
    pub migration_id: Option<String>,
    /// Checkpoints that keep a dirty bitmap on it (running domains only).
    pub checkpoints: Vec<String>,
    /// Its backing layers, nearest first.
    pub layers: Vec<LayerView>,
}

/// One backing layer of a disk, as placement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerView {
    /// Its path.
    pub source: String,
    /// The volume name it keeps in a destination pool.
    pub volume: String,
    /// Virtual size, bytes.
    pub capacity: u64,
    /// Bytes its file spends.
    pub allocation: u64,
    /// Active file pools holding a volume of that name and virtual size.
    pub present_in_pools: Vec<String>,
}

/// What the host says of each backing layer of `spec` (see [`LayerView`]);
/// a layer it cannot read is left out rather than failing the listing.
fn layer_views(hv: &dyn Hypervisor, spec: &DiskSpec, file_pools: &[String]) -> Vec<LayerView> {
    spec.backing
        .iter()
        .filter_map(|layer| {
            let DiskSource::File { path } = &layer.source else {
                return None;
            };
            let info = hv.image_info(path).ok()?;
            let volume = match hv.volume_by_path(path).ok().flatten() {
                Some(v) => v.name,
                None => path.rsplit('/').next().unwrap_or_default().to_string(),
            };
            let present_in_pools = file_pools
                .iter()
                .filter(|pool| {
                    hv.volume(pool, &volume)
                        .is_ok_and(|v| v.capacity == info.virtual_size && v.path != *path)
                })
                .cloned()
                .collect();
            Some(LayerView {
                source: path.clone(),
                volume,
                capacity: info.virtual_size,
                allocation: info.actual_size,
                present_in_pools,
            })
        })
        .collect()
}

/// A domain's disks.
#[derive(Debug, Clone)]
pub struct DomainDisks {
    /// Domain name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Running.
    pub running: bool,
    /// Disks.
    pub disks: Vec<DiskView>,
}

/// Filter for [`Engine::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Domain name.
    pub domain: Option<String>,
    /// Latest phase in this set (empty: any).
    pub phases: Vec<Phase>,
    /// Started at or after (Unix ms).
    pub started_after_ms: Option<u64>,
    /// Started before (Unix ms).
    pub started_before_ms: Option<u64>,
    /// Not terminal.
    pub active_only: bool,
}

impl ListFilter {
    /// Whether a migration whose latest event is `e` passes.
    fn matches(&self, e: &Event) -> bool {
        self.domain.as_ref().is_none_or(|d| &e.domain == d)
            && (self.phases.is_empty() || self.phases.contains(&e.phase))
            && self.started_after_ms.is_none_or(|t| e.started_ms >= t)
            && self.started_before_ms.is_none_or(|t| e.started_ms < t)
            && (!self.active_only || !e.phase.is_terminal())
    }
}

impl Engine {
    /// Opens the journal, reconciles unfinished migrations with the host and
    /// resumes or cleans them up in the background.
    pub async fn start(
        hv: Arc<dyn Hypervisor>,
        journal: Journal,
        config: EngineConfig,
    ) -> Result<Engine, Error> {
        Engine::start_observed(hv, journal, config, Arc::new(()), Arc::new(())).await
    }

    /// [`Engine::start`], telling `observer` of every event published and
    /// carrying each migration's trace through `traces`.
    pub async fn start_observed(
        hv: Arc<dyn Hypervisor>,
        journal: Journal,
        config: EngineConfig,
        observer: Arc<dyn Observer>,
        traces: Arc<dyn TraceContext>,
    ) -> Result<Engine, Error> {
        let inner = Arc::new(Inner {
            hv,
            journal,
            config,
            registry: Mutex::new(Registry::default()),
            observer,
            traces,
        });
        let journal = inner.journal.clone();
        let (records, quarantined) = tokio::task::spawn_blocking(move || journal.load_all())
            .await
            .map_err(|e| Error::Journal(e.to_string()))?
            .map_err(Error::Journal)?;
        let records = outside_known_pools(&inner, records).await?;
        if !quarantined.is_empty() {
            tracing::error!(
                count = quarantined.len(),
                "journal records were quarantined and will not be acted on (see the errors above)"
            );
        }
        let engine = Engine { inner };
        let mut unfinished = Vec::new();
        for record in records {
            let terminal = record.latest.phase.is_terminal();
            let job = Job::new(record.clone());
            {
                let mut reg = engine.inner.registry();
                reg.by_id.insert(job.id.clone(), job.clone());
                if !record.request.request_id.is_empty() {
                    reg.by_request
                        .insert(record.request.request_id.clone(), job.id.clone());
                }
                if !terminal {
                    let plan = &record.plan;
                    reg.by_disk.insert(
                        (plan.domain_uuid.clone(), plan.target.clone()),
                        job.id.clone(),
                    );
                    let volume = record
                        .stage
                        .created_volume()
                        .map_or(plan.dest_volume.clone(), |v| v.name.clone());
                    reg.reserved
                        .insert((plan.dest_pool.clone(), volume), job.id.clone());
                    for layer in plan.chain.iter().filter(|l| l.reused.is_none()) {
                        reg.reserved.insert(
                            (plan.dest_pool.clone(), layer.dest_volume.clone()),
                            job.id.clone(),
                        );
                    }
                }
            }
            if !terminal {
                unfinished.push(job);
            }
        }
        let uncommitted = engine.recover_groups();
        for job in unfinished {
            tracing::info!(migration_id = %job.id, phase = ?job.latest().phase, "reconciling unfinished migration");
            let entry = job::Entry::Recover {
                group_uncommitted: uncommitted.contains(&job.id),
            };
            tokio::spawn(job::run(engine.inner.clone(), job, entry));
        }
        engine.inner.prune();
        Ok(engine)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.inner.config.max_concurrent
    }

    /// Host versions.
    pub async fn host_info(&self) -> Result<HostInfo, Error> {
        self.inner
            .hv(|hv| hv.host_info())
            .await
            .map_err(unavailable_or("reading host information"))
    }

    /// Storage pools.
    pub async fn pools(&self) -> Result<Vec<PoolSpec>, Error> {
        self.inner
            .hv(|hv| hv.pools())
            .await
            .map_err(unavailable_or("listing storage pools"))
    }

    /// A domain's disks with their pools and migrations.
    pub async fn disks(&self, domain: &str) -> Result<DomainDisks, Error> {
        validate::object_name("domain", domain)?;
        let name = domain.to_string();
        let (state, specs, sizes, checkpoints) = self
            .inner
            .hv(move |hv| {
                let state = hv.domain(&name)?;
                let which = if state.active {
                    Definition::Live
                } else {
                    Definition::Persistent
                };
                let specs = hv.disks(&state.name, which)?;
                // Their bitmaps are only known to a running QEMU.
                let checkpoints = if state.active && state.checkpoints > 0 {
                    hv.checkpoints(&state.name)?
                } else {
                    Vec::new()
                };
                let file_pools: Vec<String> = if specs.iter().any(|s| !s.backing.is_empty()) {
                    hv.pools()?
                        .into_iter()
                        .filter(|p| {
                            p.state == PoolRunState::Running
                                && p.disk_kind() == Some(DiskKind::File)
                        })
                        .map(|p| p.name)
                        .collect()
                } else {
                    Vec::new()
                };
                let mut sizes = Vec::new();
                for spec in &specs {
                    let vol = match &spec.source {
                        Some(src) => hv.volume_by_path(&src.display_name()).ok().flatten(),
                        None => None,
                    };
                    sizes.push((vol, layer_views(hv, spec, &file_pools)));
                }
                Ok((state, specs, sizes, checkpoints))
            })
            .await
            .map_err(|e| match e {
                HvError::NoDomain(_) => Error::DomainNotFound(domain.to_string()),
                other => unavailable_or("reading disks")(other),
            })?;
        let reg = self.inner.registry();
        let disks = specs
            .into_iter()
            .zip(sizes)
            .map(|(spec, (vol, layers))| DiskView {
                layers,
                checkpoints: checkpoints
                    .iter()
                    .filter(|c| c.bitmap_on(&spec.target).is_some())
                    .map(|c| c.name.clone())
                    .collect(),
                migration_id: reg
                    .by_disk
                    .get(&(state.uuid.clone(), spec.target.clone()))
                    .cloned(),
                pool: vol.as_ref().map(|v| v.pool.clone()),
                volume: vol.as_ref().map(|v| v.name.clone()),
                capacity: vol.as_ref().map(|v| v.capacity).unwrap_or(0),
                allocation: vol.as_ref().map(|v| v.allocation).unwrap_or(0),
                spec,
            })
            .collect();
        Ok(DomainDisks {
            name: state.name,
            uuid: state.uuid,
            running: state.active,
            disks,
        })
    }

    /// Starts a migration, or attaches to the one started with the same request id.
    #[tracing::instrument(skip(self, req), err, fields(domain = %req.domain.escape_debug(), disk = %req.disk.escape_debug(), pool = %req.destination_pool.escape_debug()))]
    pub async fn migrate(&self, req: MigrationRequest) -> Result<Subscription, Error> {
        validate::request_id(&req.request_id)?;
        validate::object_name("domain", &req.domain)?;
        validate::disk(&req.disk)?;
        validate::object_name("destination_pool", &req.destination_pool)?;
        if let Some(v) = &req.destination_volume {
            validate::volume_name("destination_volume", v)?;
        }
        validate::bandwidth(req.options.bandwidth)?;
        validate::convergence_window(req.options.convergence_window)?;
        if let Some(sub) = self.attach_by_request(&req)? {
            return Ok(sub);
        }
        // Before asking libvirt: a running migration of this disk would otherwise
        // surface as a less helpful error (its destination volume or block job).
        if let Some((domain, disk, migration_id)) = self.active_on(&req.domain, &req.disk) {
            return Err(Error::AlreadyMigrating {
                domain,
                disk,
                migration_id,
            });
        }
        {
            let reg = self.inner.registry();
            if reg.by_disk.len() >= self.inner.config.max_concurrent {
                return Err(self.at_limit());
            }
        }
        let planned_req = req.clone();
        let planned = blocking({
            let hv = self.inner.hv.clone();
            move || plan::plan(hv.as_ref(), &planned_req)
        })
        .await
        .map_err(|e| Error::Journal(e.to_string()))?;
        let plan = match planned {
            Ok(plan) => plan,
            // A name that exists because another migration is creating it is
            // reported as that migration's, which the caller can follow.
            Err(Error::DestinationExists { pool, volume }) => {
                let reg = self.inner.registry();
                return Err(match reg.reserved.get(&(pool.clone(), volume.clone())) {
                    Some(other) => Error::DestinationReserved {
                        pool,
                        volume,
                        migration_id: other.clone(),
                    },
                    None => Error::DestinationExists { pool, volume },
                });
            }
            Err(e) => return Err(e),
        };

        let id = new_migration_id();
        let trace_id = self.inner.traces.current_trace_id().unwrap_or_default();
        let record = new_record(trace_id, &id, &req, &plan, &self.inner.config.node_id, None);
        let job = Job::new(record.clone());
        {
            let mut reg = self.inner.registry();
            // Checked again under the lock: another request may have raced us
            // through validation.
            if !req.request_id.is_empty() && reg.by_request.contains_key(&req.request_id) {
                drop(reg);
                return self
                    .attach_by_request(&req)?
                    .ok_or_else(|| Error::RequestIdReused(req.request_id.clone()));
            }
            let key = (plan.domain_uuid.clone(), plan.target.clone());
            if let Some(other) = reg.by_disk.get(&key) {
                return Err(Error::AlreadyMigrating {
                    domain: plan.domain.clone(),
                    disk: plan.target.clone(),
                    migration_id: other.clone(),
                });
            }
            let name = (plan.dest_pool.clone(), plan.dest_volume.clone());
            // A layer another migration is copying may yet be rolled back:
            // neither copied again nor reused until that migration ends.
            let layer_names = plan
                .chain
                .iter()
                .map(|l| (plan.dest_pool.clone(), l.dest_volume.clone()));
            for n in std::iter::once(name.clone()).chain(layer_names) {
                if let Some(other) = reg.reserved.get(&n) {
                    return Err(Error::DestinationReserved {
                        pool: n.0,
                        volume: n.1,
                        migration_id: other.clone(),
                    });
                }
            }
            if reg.by_disk.len() >= self.inner.config.max_concurrent {
                return Err(self.at_limit());
            }
            reg.by_disk.insert(key, id.clone());
            reg.reserved.insert(name, id.clone());
            for layer in plan.chain.iter().filter(|l| l.reused.is_none()) {
                reg.reserved.insert(
                    (plan.dest_pool.clone(), layer.dest_volume.clone()),
                    id.clone(),
                );
            }
            reg.by_id.insert(id.clone(), job.clone());
            if !req.request_id.is_empty() {
                reg.by_request.insert(req.request_id.clone(), id.clone());
            }
        }
        let journal = self.inner.journal.clone();
        let saved = blocking(move || journal.save(&record))
            .await
            .map_err(|e| Error::Journal(e.to_string()))
            .and_then(|r| r.map_err(Error::Journal));
        if let Err(e) = saved {
            let mut reg = self.inner.registry();
            reg.by_id.remove(&id);
            reg.by_request.remove(&req.request_id);
            reg.by_disk.retain(|_, v| v != &id);
            reg.reserved.retain(|_, v| v != &id);
            return Err(e);
        }
        tracing::info!(migration_id = %id, "migration accepted");
        let sub = Subscription::new(Source::Job(job.clone()));
        // The job's task continues the request's trace (its span's parent).
        tokio::spawn(
            job::run(self.inner.clone(), job, job::Entry::Fresh)
                .instrument(tracing::Span::current()),
        );
        Ok(sub)
    }

    fn at_limit(&self) -> Error {
        Error::Exhausted(format!(
            "node {} is running its limit of {} migrations; retry when one finishes",
            self.inner.config.node_id, self.inner.config.max_concurrent
        ))
    }

    /// The active migration of `disk` (target or source) of `domain` (name or UUID).
    fn active_on(&self, domain: &str, disk: &str) -> Option<(String, String, String)> {
        let jobs: Vec<Arc<Job>> = {
            let reg = self.inner.registry();
            reg.by_disk
                .values()
                .filter_map(|id| reg.by_id.get(id).cloned())
                .collect()
        };
        jobs.iter().find_map(|job| {
            let plan = job.lock().record.plan.clone();
            let same_domain = plan.domain == domain || plan.domain_uuid == domain;
            let same_disk = plan.target == disk || plan.source.display_name() == disk;
            (same_domain && same_disk).then(|| (plan.domain, plan.target, job.id.clone()))
        })
    }

    fn attach_by_request(&self, req: &MigrationRequest) -> Result<Option<Subscription>, Error> {
        if req.request_id.is_empty() {
            return Ok(None);
        }
        let reg = self.inner.registry();
        let Some(job) = reg
            .by_request
            .get(&req.request_id)
            .and_then(|id| reg.by_id.get(id))
            .cloned()
        else {
            return Ok(None);
        };
        drop(reg);
        if job.lock().record.request != *req {
            return Err(Error::RequestIdReused(req.request_id.clone()));
        }
        self.subscribe(Source::Job(job)).map(Some)
    }

    fn job(&self, id: &str) -> Result<Arc<Job>, Error> {
        validate::migration_id(id)?;
        self.inner
            .registry()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Error::MigrationNotFound(id.to_string()))
    }

    /// Follows a migration; RESOURCE_EXHAUSTED when it has its limit of
    /// watchers already.
    pub fn watch(&self, id: &str) -> Result<Subscription, Error> {
        match self.group(id)? {
            Some(group) => self.subscribe(Source::Group(group)),
            None => self.subscribe(Source::Job(self.job(id)?)),
        }
    }

    fn subscribe(&self, source: Source) -> Result<Subscription, Error> {
        let limit = self.inner.config.max_watchers;
        if source.events().receiver_count() >= limit {
            return Err(Error::Exhausted(format!(
                "migration {} already has {limit} watchers; try again when one has left",
                source.id()
            )));
        }
        Ok(Subscription::new(source))
    }

    /// The group with id `id`, if it is one.
    fn group(&self, id: &str) -> Result<Option<Arc<Group>>, Error> {
        validate::migration_id(id)?;
        Ok(self.inner.registry().groups.get(id).cloned())
    }

    /// Asks a migration to stop before its pivot. The job answers: with the state
    /// at that moment when it will stop, or FAILED_PRECONDITION when its pivot
    /// has begun or it has ended.
    pub async fn cancel(&self, id: &str) -> Result<Event, Error> {
        if let Some(group) = self.group(id)? {
            return groups::cancel_group(&group);
        }
        let job = self.job(id)?;
        let (tx, rx) = oneshot::channel();
        self.send(&job, Command::Cancel(tx)).await?;
        rx.await.unwrap_or_else(|_| Err(job.ended()))
    }

    async fn send(&self, job: &Job, command: Command) -> Result<(), Error> {
        if job.latest().phase.is_terminal() {
            return Err(job.ended());
        }
        job.commands.send(command).await.map_err(|_| job.ended())
    }

    /// One migration's record.
    pub fn get(&self, id: &str) -> Result<Record, Error> {
        Ok(self.job(id)?.record())
    }

    /// Migrations matching the filter, newest first.
    pub fn list(&self, filter: &ListFilter) -> Vec<Record> {
        let jobs: Vec<Arc<Job>> = self.inner.registry().by_id.values().cloned().collect();
        let mut records: Vec<Record> = jobs
            .iter()
            .map(|j| j.record())
            .filter(|r| filter.matches(&r.latest))
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.latest.started_ms));
        records
    }

    /// Changes the copy bandwidth of a running migration (the job applies it).
    pub async fn set_bandwidth(&self, id: &str, bytes_per_sec: u64) -> Result<(), Error> {
        validate::bandwidth(bytes_per_sec)?;
        if let Some(group) = self.group(id)? {
            return self.set_group_bandwidth(&group, bytes_per_sec).await;
        }
        let job = self.job(id)?;
        self.set_job_bandwidth(&job, bytes_per_sec).await
    }

    async fn set_job_bandwidth(&self, job: &Job, bytes_per_sec: u64) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(job, Command::SetBandwidth(bytes_per_sec, tx))
            .await?;
        rx.await.unwrap_or_else(|_| Err(job.ended()))
    }

    /// What on this host uses the image `source` (a path or `pool/image`), one
    /// line each, leaving out the disks of `exclude` (a domain name or UUID).
    pub async fn volume_users(
        &self,
        source: &str,
        exclude: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        validate::disk(source)?;
        if let Some(domain) = exclude {
            validate::object_name("exclude_domain", domain)?;
        }
        if !source.contains('/') {
            return Err(Error::InvalidArgument {
                field: "source",
                reason: format!("'{source}' is neither a path nor pool/image"),
            });
        }
        let path = source.to_string();
        let users = self
            .inner
            .hv(move |hv| hv.volume_users(&path))
            .await
            .map_err(unavailable_or("looking for users of a volume"))?;
        Ok(users
            .iter()
            .filter(|u| match (u, exclude) {
                (VolumeUser::Domain { domain, uuid, .. }, Some(x)) => domain != x && uuid != x,
                _ => true,
            })
            .map(ToString::to_string)
            .collect())
    }

    /// Whether libvirtd answers.
    pub async fn probe(&self) -> Result<(), Error> {
        self.host_info().await.map(|_| ())
    }
}

/// Quarantines unfinished records whose volumes lie outside the pools this host
/// has (or outside the pool's directory): such a record was not written by
/// this node for this host, and acting on it could delete anything.
async fn outside_known_pools(inner: &Inner, records: Vec<Record>) -> Result<Vec<Record>, Error> {
    if records.iter().all(|r| r.latest.phase.is_terminal()) {
        return Ok(records);
    }
    let pools = match inner.hv(|hv| hv.pools()).await {
        Ok(pools) => pools,
        Err(e) => {
            // Recovery waits for libvirt anyway; the structural checks already ran.
            tracing::warn!(error = %e, "cannot list pools to check unfinished journal records");
            return Ok(records);
        }
    };
    let mut kept = Vec::new();
    for record in records {
        match unknown_volume(&record, &pools) {
            Some(reason) if !record.latest.phase.is_terminal() => {
                let journal = inner.journal.clone();
                let file = journal.file_of(&record.id);
                tokio::task::spawn_blocking(move || journal.quarantine(&file, &reason))
                    .await
                    .map_err(|e| Error::Journal(e.to_string()))?
                    .map_err(Error::Journal)?;
            }
            _ => kept.push(record),
        }
    }
    Ok(kept)
}

fn unknown_volume(record: &Record, pools: &[PoolSpec]) -> Option<String> {
    let plan = &record.plan;
    let volumes = plan
        .source_volume
        .iter()
        .chain(record.stage.created_volume());
    for v in volumes {
        let Some(pool) = pools.iter().find(|p| p.name == v.pool) else {
            return Some(format!(
                "it names pool '{}', which this host does not have",
                v.pool.escape_debug()
            ));
        };
        let file_pool = matches!(pool.disk_kind(), Some(crate::hypervisor::DiskKind::File));
        if file_pool
            && !v
                .path
                .starts_with(&format!("{}/", pool.target_path.trim_end_matches('/')))
        {
            return Some(format!(
                "volume path '{}' is outside pool '{}' ({})",
                v.path.escape_debug(),
                pool.name,
                pool.target_path
            ));
        }
    }
    None
}

fn unavailable_or(what: &'static str) -> impl Fn(HvError) -> Error {
    move |e| match e {
        HvError::Unreachable { .. } => Error::Unavailable(e.to_string()),
        other => Error::hv(what)(other),
    }
}

/// Runs blocking work off the async runtime in the caller's span (a blocking
/// thread has none of its own), so its spans and logs stay in the caller's trace.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f)).await
}

/// A fresh migration id.
fn new_migration_id() -> String {
    format!("mig-{}", uuid::Uuid::new_v4())
}

/// The record of a migration just accepted.
fn new_record(
    trace_id: String,
    id: &str,
    req: &MigrationRequest,
    plan: &Plan,
    node_id: &str,
    group: Option<GroupLink>,
) -> Record {
    let now = now_ms();
    Record {
        id: id.to_string(),
        request: req.clone(),
        bandwidth: req.options.bandwidth,
        plan: plan.clone(),
        stage: Stage::Planned,
        latest: Event {
            migration_id: id.to_string(),
            phase: Phase::Accepted,
            progress: Progress::default(),
            timestamp_ms: now,
            started_ms: now,
            message: accepted_message(plan),
            result: None,
            failure: None,
            node_id: node_id.to_string(),
            domain: plan.domain.clone(),
            disk: plan.target.clone(),
            disks: Vec::new(),
            skipped: Vec::new(),
            pivot_window_ms: 0,
            convergence: None,
            trace_id,
        },
        group,
        pivot: None,
        forced_sync_writes: false,
        created_layers: Vec::new(),
        creating_layer: None,
    }
}

fn accepted_message(plan: &Plan) -> String {
    format!(
        "accepted: {} of {} ({}, {} bytes) from {} to pool {} as {} ({})",
        plan.target,
        plan.domain,
        plan.source_format,
        plan.capacity,
        plan.source_volume
            .as_ref()
            .map(|v| format!("pool {}", v.pool))
            .unwrap_or_else(|| plan.source.display_name()),
        plan.dest_pool,
        plan.dest_volume,
        plan.dest_format
    )
}
