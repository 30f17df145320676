//! The node's journal: one JSON file per migration under `<state_dir>/migrations/`.
//!
//! A stage is written here before the action it names, so that after a crash
//! the node knows what it may have done (that a destination volume may exist,
//! that a pivot may have been issued) and can finish or undo it. Files are
//! replaced atomically (write, fsync, rename, fsync of the directory) so a crash
//! never leaves half a record or loses a rename. Records are private to root
//! (0600 files in a 0700 directory) because they name volumes the node deletes.
//!
//! A record that does not parse, or that names things no migration could have
//! named, is moved to `quarantine/` and reported, never acted on.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hypervisor::{BackingLayer, DiskSource, ImageFormat, VolumeIdentity};
use crate::model::{Event, GroupRequest, MigrationRequest, Skipped};
use crate::observer::Observer;
use crate::validate;

/// What validation resolved: everything later phases and recovery need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Domain name (the request may have named a UUID).
    pub domain: String,
    /// Domain UUID.
    pub domain_uuid: String,
    /// Disk target, e.g. `vda`.
    pub target: String,
    /// Where the disk is now.
    pub source: DiskSource,
    /// Source format.
    pub source_format: ImageFormat,
    /// The source's volume as validation found it, when a pool holds it: the
    /// only volume a source deletion may remove.
    pub source_volume: Option<VolumeIdentity>,
    /// Virtual size in bytes: the destination must have exactly this.
    pub capacity: u64,
    /// Destination pool.
    pub dest_pool: String,
    /// Destination volume name (reserved node-wide for this migration).
    pub dest_volume: String,
    /// Destination format.
    pub dest_format: ImageFormat,
    /// SHALLOW: the read-only layers below the disk's top image, bottom
    /// (template) first, each to be reused or copied into the destination
    /// pool. Empty when the chain is flattened or there is none.
    #[serde(default)]
    pub chain: Vec<ChainLayer>,
    /// SHALLOW: libvirt snapshots whose metadata follows the chain (redefined
    /// with the destination paths after the pivot).
    #[serde(default)]
    pub snapshots: u32,
    /// The domain was not running when validated: the disk is copied offline
    /// (`qemu-img convert`) and the persistent definition switched, instead
    /// of a block copy and pivot.
    #[serde(default)]
    pub offline: bool,
}

/// One read-only layer of a disk's backing chain and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLayer {
    /// The source layer's path.
    pub source: String,
    /// Its format.
    pub format: ImageFormat,
    /// Its virtual size, bytes.
    pub capacity: u64,
    /// What its file spends on storage: what a copy costs the destination.
    pub allocation: u64,
    /// Its volume name in the destination pool.
    pub dest_volume: String,
    /// A volume of the destination pool that already holds this layer (same
    /// name, format, size, backing link; proven equal by `qemu-img compare`
    /// before anything is created). volmig neither creates nor deletes it.
    pub reused: Option<VolumeIdentity>,
}

/// A destination volume volmig created, and the disk source that addresses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The volume as libvirt returned it on creation.
    pub volume: VolumeIdentity,
    /// How the domain addresses it.
    pub disk: DiskSource,
    /// The destination chain below it, nearest first (SHALLOW); empty when
    /// the copy is flattened.
    #[serde(default)]
    pub backing: Vec<BackingLayer>,
}

/// How far a migration got on the host: what exists and what may be undone.
/// Each variant carries exactly what holds in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Validated; nothing on the host was changed.
    Planned,
    /// The destination volume is being created. If the node stops here a volume
    /// of that name may exist that volmig cannot prove it created: it is never
    /// deleted, only reported.
    Creating,
    /// The destination volume exists and volmig created it; no copy has started.
    Created(VolumeIdentity),
    /// A block copy onto the destination is started (or about to be).
    Mirroring(Destination),
    /// The pivot is issued (or about to be): from here on the destination may
    /// hold the newest data, and nothing deletes it.
    Pivoted(Destination),
}

impl Stage {
    /// The destination volume volmig created, if any.
    pub fn created_volume(&self) -> Option<&VolumeIdentity> {
        match self {
            Stage::Planned | Stage::Creating => None,
            Stage::Created(v) => Some(v),
            Stage::Mirroring(d) | Stage::Pivoted(d) => Some(&d.volume),
        }
    }
}

/// One migration as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Migration id.
    pub id: String,
    /// The request, exactly as received (a retry with the same request id is
    /// compared against it).
    pub request: MigrationRequest,
    /// The copy bandwidth now in force, bytes/s (0 = unlimited): the request's,
    /// or the last one set by SetBandwidth.
    pub bandwidth: u64,
    /// What validation resolved.
    pub plan: Plan,
    /// What exists on the host.
    pub stage: Stage,
    /// The latest event.
    pub latest: Event,
    /// Set when this disk is one of a group moved as one migration.
    #[serde(default)]
    pub group: Option<GroupLink>,
    /// When the pivot was issued and when it ended (Unix ms).
    #[serde(default)]
    pub pivot: Option<(u64, u64)>,
    /// The copy was restarted in synchronous-writes mode because it did not
    /// converge: every later copy of this migration (after a node restart too)
    /// uses that mode.
    #[serde(default)]
    pub forced_sync_writes: bool,
    /// Layers of the chain volmig copied into the destination pool for this
    /// migration, bottom first, each journaled once its creation returned:
    /// the only layers a rollback may delete (reused ones never are).
    #[serde(default)]
    pub created_layers: Vec<VolumeIdentity>,
    /// A layer volume being created (the name): if the node stops here, a
    /// volume of that name may exist that volmig cannot prove it made; it is
    /// reported, never deleted.
    #[serde(default)]
    pub creating_layer: Option<String>,
}

/// What a member record keeps of its group, so that the group can be
/// recovered from its members' records alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLink {
    /// The group's migration id.
    pub id: String,
    /// The group's request, exactly as received.
    pub request: GroupRequest,
    /// When the group was accepted (Unix ms).
    pub started_ms: u64,
    /// The member migration ids, in pivot order.
    pub members: Vec<String>,
    /// The disks the group leaves alone.
    pub skipped: Vec<Skipped>,
}

/// A journal file that was moved aside instead of being acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it is now.
    pub path: PathBuf,
    /// Why it was not trusted.
    pub reason: String,
}

/// A directory of migration records.
#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    /// Told of every write (its latency is a metric).
    observer: std::sync::Arc<dyn Observer>,
    #[cfg(test)]
    hook: Option<SaveHook>,
}

/// Fault injection for tests: called before (`false`) and after (`true`) each
/// write; an error fails the write.
#[cfg(test)]
#[derive(Clone)]
pub struct SaveHook(std::sync::Arc<dyn Fn(bool) -> Result<(), String> + Send + Sync>);

#[cfg(test)]
impl SaveHook {
    /// A hook running `f`.
    pub fn new(f: impl Fn(bool) -> Result<(), String> + Send + Sync + 'static) -> Self {
        SaveHook(std::sync::Arc::new(f))
    }
}

#[cfg(test)]
impl std::fmt::Debug for SaveHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaveHook")
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing directory keeps its mode through create(): tighten it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        let dir = state_dir.join("migrations");
        private_dir(&dir)
            .map_err(|e| format!("cannot create journal directory {}: {e}", dir.display()))?;
        Ok(Journal {
            dir,
            observer: std::sync::Arc::new(()),
            #[cfg(test)]
            hook: None,
        })
    }

    /// The same journal with a fault-injection hook on every write.
    #[cfg(test)]
    pub fn with_hook(mut self, hook: SaveHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The same journal, reporting every write to `observer`.
    pub fn observed(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a record atomically and durably.
    pub fn save(&self, record: &Record) -> Result<(), String> {
        #[cfg(test)]
        if let Some(hook) = &self.hook {
            (hook.0)(false)?;
        }
        // Its own span: the write's duration and error in the migration's trace.
        let span = tracing::info_span!(
            "journal.write",
            migration.id = %record.id,
            domain = %record.plan.domain.escape_debug(),
            disk = %record.plan.target,
            node.id = %record.latest.node_id,
            phase = record.latest.phase.name(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let written = self.write(record);
        if let Err(e) = &written {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.as_str());
        }
        self.observer
            .journal_write(started.elapsed(), written.is_err());
        written?;
        #[cfg(test)]
        if let Some(hook) = &self.hook {
            (hook.0)(true)?;
        }
        Ok(())
    }

    fn write(&self, record: &Record) -> Result<(), String> {
        let path = self.path_of(&record.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.id));
        let data = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // The rename is only durable once the directory entry is.
            sync_dir(&self.dir)
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Removes a finished record.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        }
    }

    /// Moves a record's file to `quarantine/` so it is kept for a human but
    /// never loaded again.
    pub fn quarantine(&self, id_or_file: &Path, reason: &str) -> Result<Quarantined, String> {
        let qdir = self.dir.join("quarantine");
        private_dir(&qdir).map_err(|e| format!("cannot create {}: {e}", qdir.display()))?;
        let name = id_or_file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "record".into());
        let to = qdir.join(name);
        fs::rename(id_or_file, &to)
            .and_then(|_| sync_dir(&self.dir))
            .map_err(|e| format!("cannot move {} aside: {e}", id_or_file.display()))?;
        tracing::error!(
            path = %to.display(),
            reason = %reason.escape_debug(),
            "journal record quarantined: it is not acted on; inspect it, then delete it"
        );
        Ok(Quarantined {
            path: to,
            reason: reason.to_string(),
        })
    }

    /// The file a record lives in.
    pub fn file_of(&self, id: &str) -> PathBuf {
        self.path_of(id)
    }

    /// Every record that parses and passes [`check_record`], oldest first; the
    /// others are quarantined and returned as such.
    pub fn load_all(&self) -> Result<(Vec<Record>, Vec<Quarantined>), String> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        let mut records = Vec::new();
        let mut quarantined = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                // A write interrupted before its rename: the previous version stands.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !path.is_file() || !name.ends_with(".json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<Record>(&d).map_err(|e| e.to_string()))
                .and_then(|r| {
                    check_record(&r)?;
                    if name != format!("{}.json", r.id) {
                        return Err(format!("file name does not match id '{}'", r.id));
                    }
                    Ok(r)
                });
            match parsed {
                Ok(r) => records.push(r),
                Err(reason) => quarantined.push(self.quarantine(&path, &reason)?),
            }
        }
        records.sort_by_key(|r| (r.latest.started_ms, r.id.clone()));
        Ok((records, quarantined))
    }
}

/// Whether a migration id has the node's form, `mig-<uuid>`.
pub fn is_migration_id(id: &str) -> bool {
    id.strip_prefix("mig-")
        .is_some_and(|u| uuid::Uuid::parse_str(u).is_ok())
}

/// The checks a record from disk must pass before the node acts on it: names
/// as a request may hold them, and volumes only in the plan's own pools.
pub fn check_record(r: &Record) -> Result<(), String> {
    let bad = |e: volmig_types::validate::Invalid| e.to_string();
    if !is_migration_id(&r.id) {
        return Err(format!("'{}' is not a migration id", r.id.escape_debug()));
    }
    if r.latest.migration_id != r.id {
        return Err("its latest event belongs to another migration".to_string());
    }
    validate::request_id(&r.request.request_id).map_err(bad)?;
    if let Some(group) = &r.group {
        if !is_migration_id(&group.id) || !group.members.iter().all(|m| is_migration_id(m)) {
            return Err("its group names something that is not a migration id".to_string());
        }
        if !group.members.contains(&r.id) {
            return Err("its group does not list it as a member".to_string());
        }
        validate::request_id(&group.request.request_id).map_err(bad)?;
    }
    validate::object_name("domain", &r.plan.domain).map_err(bad)?;
    validate::disk(&r.plan.target).map_err(bad)?;
    validate::object_name("destination_pool", &r.plan.dest_pool).map_err(bad)?;
    validate::volume_name("destination_volume", &r.plan.dest_volume).map_err(bad)?;
    if let Some(src) = &r.plan.source_volume {
        check_volume(src, &src.pool)?;
    }
    if let Some(dest) = r.stage.created_volume() {
        check_volume(dest, &r.plan.dest_pool)?;
    }
    // Layers are deleted on a rollback too: they must be in the plan's pool.
    for layer in &r.created_layers {
        check_volume(layer, &r.plan.dest_pool)?;
    }
    Ok(())
}

fn check_volume(v: &VolumeIdentity, pool: &str) -> Result<(), String> {
    if v.pool != pool {
        return Err(format!(
            "volume {} is outside pool '{}'",
            v.display_name().escape_debug(),
            pool.escape_debug()
        ));
    }
    validate::object_name("pool", &v.pool).map_err(|e| e.to_string())?;
    // Source volumes were not named by volmig, so only the structural rules apply.
    validate::object_name("volume", &v.name).map_err(|e| e.to_string())?;
    if v.path.split('/').any(|part| part == "..") || v.path.chars().any(char::is_control) {
        return Err(format!(
            "volume path '{}' is not clean",
            v.path.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Options, Phase, Progress};

    pub(crate) fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            request: MigrationRequest {
                request_id: String::new(),
                domain: "g".into(),
                disk: "vda".into(),
                destination_pool: "b".into(),
                destination_volume: None,
                destination_format: None,
                options: Options::default(),
            },
            bandwidth: 0,
            plan: Plan {
                domain: "g".into(),
                domain_uuid: "u".into(),
                target: "vda".into(),
                source: DiskSource::File {
                    path: "/p/a/root.qcow2".into(),
                },
                source_format: ImageFormat::Qcow2,
                source_volume: None,
                capacity: 1,
                dest_pool: "b".into(),
                dest_volume: "root.qcow2".into(),
                dest_format: ImageFormat::Qcow2,
                chain: Vec::new(),
                snapshots: 0,
                offline: false,
            },
            stage: Stage::Planned,
            latest: Event {
                migration_id: id.into(),
                phase: Phase::Copying,
                progress: Progress::default(),
                timestamp_ms: 2,
                started_ms: 1,
                message: String::new(),
                result: None,
                failure: None,
                node_id: "n".into(),
                domain: "g".into(),
                disk: "vda".into(),
                disks: Vec::new(),
                skipped: Vec::new(),
                pivot_window_ms: 0,
                convergence: None,
                trace_id: String::new(),
            },
            group: None,
            pivot: None,
            forced_sync_writes: false,
            created_layers: Vec::new(),
            creating_layer: None,
        }
    }

    const ID: &str = "mig-00000000-0000-4000-8000-000000000001";

    #[test]
    fn saves_private_records_and_loads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let r = record(ID);
        journal.save(&r).expect("save");
        let (loaded, quarantined) = journal.load_all().expect("load");
        assert_eq!(loaded, vec![r]);
        assert!(quarantined.is_empty());
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&journal.file_of(ID)), 0o600);
        assert_eq!(mode(&dir.path().join("migrations")), 0o700);
    }

    #[test]
    fn quarantines_what_it_cannot_trust() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let migrations = dir.path().join("migrations");
        fs::write(migrations.join("garbage.json"), b"{").expect("write");
        let mut outside = record("mig-00000000-0000-4000-8000-000000000002");
        outside.stage = Stage::Created(VolumeIdentity {
            pool: "elsewhere".into(),
            name: "victim".into(),
            key: "/victim".into(),
            path: "/victim".into(),
            file_id: None,
        });
        journal.save(&outside).expect("save");
        let mut traversal = record("mig-00000000-0000-4000-8000-000000000003");
        traversal.plan.dest_volume = "../../etc/passwd".into();
        journal.save(&traversal).expect("save");
        let mut renamed = record(ID);
        renamed.id = "mig-00000000-0000-4000-8000-000000000004".into();
        fs::write(
            migrations.join(format!("{ID}.json")),
            serde_json::to_vec(&renamed).expect("json"),
        )
        .expect("write");
        let (loaded, quarantined) = journal.load_all().expect("load");
        assert!(loaded.is_empty(), "{loaded:?}");
        assert_eq!(quarantined.len(), 4, "{quarantined:?}");
        assert!(quarantined
            .iter()
            .any(|q| q.reason.contains("outside pool 'b'")));
        assert_eq!(
            fs::read_dir(migrations.join("quarantine"))
                .expect("quarantine dir")
                .count(),
            4
        );
        assert!(journal.load_all().expect("again").1.is_empty());
    }
}
