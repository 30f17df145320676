//! The controller's migration history: one append-only file under its state
//! dir, each line a JSON object holding a protobuf-encoded `MigrationRecord`
//! (hex) and the destination's storage id. The last line of an id wins; the
//! file is compacted when opened, so it stays small and survives restarts.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto;

/// One migration as the controller remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The record (request, node, latest event).
    pub record: proto::MigrationRecord,
    /// Storage id of the destination pool, for in-flight counts.
    pub dest_storage_id: String,
}

impl Entry {
    /// Whether the migration has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.record
                .latest
                .as_ref()
                .map(|e| e.phase())
                .unwrap_or(proto::Phase::Unspecified),
            proto::Phase::Completed | proto::Phase::Failed | proto::Phase::Cancelled
        )
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    dest_storage_id: String,
    record_hex: String,
}

/// History errors.
#[derive(Debug, thiserror::Error)]
#[error("migration history {path}: {message}")]
pub struct HistoryError {
    path: String,
    message: String,
}

/// The history store.
pub struct History {
    path: PathBuf,
    state: Mutex<(HashMap<String, Entry>, File)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn line_of(entry: &Entry) -> Result<String, String> {
    let line = Line {
        id: entry.record.migration_id.clone(),
        dest_storage_id: entry.dest_storage_id.clone(),
        record_hex: hex(&entry.record.encode_to_vec()),
    };
    serde_json::to_string(&line).map_err(|e| e.to_string())
}

impl History {
    /// Opens (creating) `state_dir/history.jsonl`, loading and compacting it.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        let path = state_dir.join("history.jsonl");
        let err = |message: String| HistoryError {
            path: path.display().to_string(),
            message,
        };
        fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
        let mut entries = HashMap::new();
        if path.exists() {
            let file = File::open(&path).map_err(|e| err(e.to_string()))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| err(e.to_string()))?;
                // A torn last line (crash mid-append) is skipped, not fatal.
                let Ok(parsed) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                let Some(record) = unhex(&parsed.record_hex)
                    .and_then(|b| proto::MigrationRecord::decode(b.as_slice()).ok())
                else {
                    continue;
                };
                entries.insert(
                    parsed.id,
                    Entry {
                        record,
                        dest_storage_id: parsed.dest_storage_id,
                    },
                );
            }
        }
        let tmp = state_dir.join("history.jsonl.tmp");
        {
            let mut out = File::create(&tmp).map_err(|e| err(e.to_string()))?;
            for entry in entries.values() {
                writeln!(out, "{}", line_of(entry).map_err(&err)?)
                    .map_err(|e| err(e.to_string()))?;
            }
            out.sync_all().map_err(|e| err(e.to_string()))?;
        }
        fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| err(e.to_string()))?;
        Ok(History {
            path,
            state: Mutex::new((entries, file)),
        })
    }

    /// Stores a new or updated entry.
    pub fn put(&self, entry: Entry) -> Result<(), HistoryError> {
        let line = line_of(&entry).map_err(|message| HistoryError {
            path: self.path.display().to_string(),
            message,
        })?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(state.1, "{line}").map_err(|e| HistoryError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        state.0.insert(entry.record.migration_id.clone(), entry);
        Ok(())
    }

    /// Updates the latest event of a known migration.
    pub fn update_latest(&self, event: &proto::MigrationEvent) -> Result<(), HistoryError> {
        let entry = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0.get(&event.migration_id).cloned()
        };
        match entry {
            Some(mut entry) => {
                entry.record.latest = Some(event.clone());
                self.put(entry)
            }
            None => Ok(()),
        }
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Option<Entry> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.get(id).cloned()
    }

    /// Every entry.
    pub fn all(&self) -> Vec<Entry> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, phase: proto::Phase) -> Entry {
        Entry {
            record: proto::MigrationRecord {
                migration_id: id.into(),
                node_id: "n1".into(),
                latest: Some(proto::MigrationEvent {
                    migration_id: id.into(),
                    phase: phase as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            dest_storage_id: "local:h:/p".into(),
        }
    }

    #[test]
    fn survives_reopen_and_keeps_the_latest_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let h = History::open(dir.path()).expect("open");
            h.put(entry("m1", proto::Phase::Copying)).expect("put");
            h.update_latest(&proto::MigrationEvent {
                migration_id: "m1".into(),
                phase: proto::Phase::Completed as i32,
                ..Default::default()
            })
            .expect("update");
            h.put(entry("m2", proto::Phase::Accepted)).expect("put");
        }
        // A torn line from a crash mid-write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("history.jsonl"))
            .expect("open");
        write!(f, "{{\"id\":\"m3\",\"dest").expect("write");
        drop(f);
        let h = History::open(dir.path()).expect("reopen");
        assert!(h.get("m1").expect("m1").is_terminal());
        assert!(!h.get("m2").expect("m2").is_terminal());
        assert_eq!(h.all().len(), 2);
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
    }
}
