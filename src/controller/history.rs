//! The controller's migration history: one append-only file under its state
//! dir, each line a JSON object holding a protobuf-encoded `MigrationRecord`
//! (hex) and the destination's storage id. The last line of an id wins.
//!
//! The file is compacted when opened and again while running, whenever it
//! holds more than twice as many lines as entries (and at least
//! [`COMPACT_MIN_LINES`]): a long migration writes a line per progress event,
//! and the file must not grow with them. Compaction also applies the
//! retention: finished migrations older than `max_age`, or beyond the newest
//! `max_records`, are forgotten. Unfinished ones are always kept.

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
    /// A multi-disk migration: the storage ids of its other disks' pools.
    pub more_storage_ids: Vec<String>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_storage_ids: Vec<String>,
    record_hex: String,
}

/// History errors.
#[derive(Debug, thiserror::Error)]
#[error("migration history {path}: {message}")]
pub struct HistoryError {
    path: String,
    message: String,
}

/// How long finished migrations are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished migrations whose last event is older than this are dropped.
    pub max_age: std::time::Duration,
    /// At most this many finished migrations are kept (the newest).
    pub max_records: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_records: 10_000,
        }
    }
}

/// Below this many lines the file is never compacted while running.
pub const COMPACT_MIN_LINES: usize = 1000;

struct State {
    entries: HashMap<String, Entry>,
    file: File,
    /// Lines in the file now.
    lines: usize,
}

/// The history store.
pub struct History {
    path: PathBuf,
    retention: Retention,
    state: Mutex<State>,
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
        more_storage_ids: entry.more_storage_ids.clone(),
        record_hex: hex(&entry.record.encode_to_vec()),
    };
    serde_json::to_string(&line).map_err(|e| e.to_string())
}

/// Drops the finished entries the retention does not keep.
fn retain(entries: &mut HashMap<String, Entry>, retention: Retention) {
    let now = crate::migration::model::now_ms();
    let max_age = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
    let stamp = |e: &Entry| e.record.latest.as_ref().map_or(0, |l| l.timestamp_unix_ms);
    // An entry without a timestamp is not aged out (only counted).
    entries.retain(|_, e| {
        !e.is_terminal() || stamp(e) == 0 || now.saturating_sub(stamp(e)) <= max_age
    });
    let mut finished: Vec<(u64, String)> = entries
        .iter()
        .filter(|(_, e)| e.is_terminal())
        .map(|(id, e)| (stamp(e), id.clone()))
        .collect();
    if finished.len() > retention.max_records {
        finished.sort();
        let excess = finished.len() - retention.max_records;
        for (_, id) in finished.into_iter().take(excess) {
            entries.remove(&id);
        }
    }
}

impl History {
    /// Opens (creating) `state_dir/history.jsonl` with the default retention.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        History::open_with(state_dir, Retention::default())
    }

    /// Opens (creating) `state_dir/history.jsonl`, loading and compacting it.
    pub fn open_with(state_dir: &Path, retention: Retention) -> Result<History, HistoryError> {
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
                        more_storage_ids: parsed.more_storage_ids,
                    },
                );
            }
        }
        retain(&mut entries, retention);
        let file = rewrite(&path, &entries).map_err(err)?;
        Ok(History {
            path,
            retention,
            state: Mutex::new(State {
                lines: entries.len(),
                entries,
                file,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, message: String) -> HistoryError {
        HistoryError {
            path: self.path.display().to_string(),
            message,
        }
    }

    /// Compacts the file when it holds many more lines than entries.
    fn maybe_compact(&self, state: &mut State) -> Result<(), HistoryError> {
        if state.lines < COMPACT_MIN_LINES || state.lines <= 2 * state.entries.len() {
            return Ok(());
        }
        retain(&mut state.entries, self.retention);
        state.file = rewrite(&self.path, &state.entries).map_err(|m| self.error(m))?;
        state.lines = state.entries.len();
        Ok(())
    }

    /// Stores a new or updated entry.
    pub fn put(&self, entry: Entry) -> Result<(), HistoryError> {
        let line = line_of(&entry).map_err(|m| self.error(m))?;
        let mut state = self.lock();
        writeln!(state.file, "{line}").map_err(|e| self.error(e.to_string()))?;
        state.lines += 1;
        state
            .entries
            .insert(entry.record.migration_id.clone(), entry);
        self.maybe_compact(&mut state)
    }

    /// Updates the latest event of a known migration.
    pub fn update_latest(&self, event: &proto::MigrationEvent) -> Result<(), HistoryError> {
        let entry = self.lock().entries.get(&event.migration_id).cloned();
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
        self.lock().entries.get(id).cloned()
    }

    /// Every entry.
    pub fn all(&self) -> Vec<Entry> {
        self.lock().entries.values().cloned().collect()
    }
}

/// Writes `entries` to a temporary file, syncs it and renames it over
/// `path`; returns `path` opened for appending.
fn rewrite(path: &Path, entries: &HashMap<String, Entry>) -> Result<File, String> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut out = File::create(&tmp).map_err(|e| e.to_string())?;
        for entry in entries.values() {
            writeln!(out, "{}", line_of(entry)?).map_err(|e| e.to_string())?;
        }
        out.sync_all().map_err(|e| e.to_string())?;
    }
    fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())
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
            more_storage_ids: Vec::new(),
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

    fn lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("history.jsonl"))
            .expect("read")
            .lines()
            .count()
    }

    #[test]
    fn compacts_while_running_and_applies_the_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = History::open_with(
            dir.path(),
            Retention {
                max_age: std::time::Duration::from_secs(3600),
                max_records: 3,
            },
        )
        .expect("open");
        h.put(entry("running", proto::Phase::Copying)).expect("put");
        // Progress of a long migration: the file stays bounded.
        for i in 0..5000u64 {
            h.update_latest(&proto::MigrationEvent {
                migration_id: "running".into(),
                phase: proto::Phase::Copying as i32,
                timestamp_unix_ms: i,
                ..Default::default()
            })
            .expect("update");
        }
        assert!(
            lines(dir.path()) < COMPACT_MIN_LINES + 2,
            "{}",
            lines(dir.path())
        );
        let now = crate::migration::model::now_ms();
        for i in 0..6u64 {
            let mut e = entry(&format!("done{i}"), proto::Phase::Completed);
            if let Some(l) = e.record.latest.as_mut() {
                l.timestamp_unix_ms = now - 10 + i;
            }
            h.put(e).expect("put");
        }
        let mut old = entry("ancient", proto::Phase::Failed);
        if let Some(l) = old.record.latest.as_mut() {
            l.timestamp_unix_ms = now - 7200 * 1000;
        }
        h.put(old).expect("put");
        drop(h);
        let h = History::open_with(
            dir.path(),
            Retention {
                max_age: std::time::Duration::from_secs(3600),
                max_records: 3,
            },
        )
        .expect("reopen");
        let mut ids: Vec<String> = h.all().into_iter().map(|e| e.record.migration_id).collect();
        ids.sort();
        assert_eq!(ids, ["done3", "done4", "done5", "running"]);
        assert_eq!(lines(dir.path()), 4);
    }
}
