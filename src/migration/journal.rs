//! The node's journal: one JSON file per migration under `<state_dir>/migrations/`.
//!
//! A phase is written here before it is announced, and before the action it
//! names, so that after a crash the node knows what it may have done (e.g. that
//! a destination volume may exist) and can finish or undo it. Files are
//! replaced atomically (write, fsync, rename) so a crash never leaves half a record.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hypervisor::{DiskSource, ImageFormat};
use crate::migration::model::{Event, MigrationRequest};

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
    /// Pool of the source, if any.
    pub source_pool: Option<String>,
    /// Volume of the source, if any.
    pub source_volume: Option<String>,
    /// Virtual size in bytes: the destination must have exactly this.
    pub capacity: u64,
    /// Destination pool.
    pub dest_pool: String,
    /// Destination volume name.
    pub dest_volume: String,
    /// Destination format.
    pub dest_format: ImageFormat,
    /// The destination as the domain will see it; set once the volume exists.
    pub destination: Option<DiskSource>,
}

/// One migration as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Migration id.
    pub id: String,
    /// The request.
    pub request: MigrationRequest,
    /// Set once validation passed.
    pub plan: Option<Plan>,
    /// The destination volume may exist (creation was attempted).
    pub destination_created: bool,
    /// The latest event.
    pub latest: Event,
}

/// A directory of migration records.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        let dir = state_dir.join("migrations");
        fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create journal directory {}: {e}", dir.display()))?;
        Ok(Journal { dir })
    }

    /// Writes a record atomically.
    pub fn save(&self, record: &Record) -> Result<(), String> {
        let path = self.dir.join(format!("{}.json", record.id));
        let tmp = self.dir.join(format!(".{}.json.tmp", record.id));
        let data = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            Ok(())
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Every record, oldest first. Unreadable files are reported and skipped
    /// rather than stopping the node.
    pub fn load_all(&self) -> Result<Vec<Record>, String> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<Record>(&d).map_err(|e| e.to_string()))
            {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "skipping unreadable journal record")
                }
            }
        }
        records.sort_by_key(|r| (r.latest.started_ms, r.id.clone()));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::model::{Options, Phase, Progress};

    #[test]
    fn saves_and_loads_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let record = Record {
            id: "m-1".into(),
            request: MigrationRequest {
                request_id: String::new(),
                domain: "g".into(),
                disk: "vda".into(),
                destination_pool: "b".into(),
                destination_volume: None,
                destination_format: None,
                options: Options::default(),
            },
            plan: None,
            destination_created: false,
            latest: Event {
                migration_id: "m-1".into(),
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
            },
        };
        journal.save(&record).expect("save");
        std::fs::write(dir.path().join("migrations/garbage.json"), b"{").expect("write");
        assert_eq!(journal.load_all().expect("load"), vec![record]);
    }
}
