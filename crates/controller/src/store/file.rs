//! The single-controller store: one append-only file, `state_dir/store.jsonl`,
//! each line a JSON object `{"k": key, "v": hex value or null}`; the last
//! line of a key wins. Loaded whole at start-up, kept in memory.
//!
//! The file is compacted when opened and whenever it holds more than twice
//! as many lines as keys (and at least [`COMPACT_MIN_LINES`]): a long
//! migration rewrites its history key with every progress event, and the
//! file must not grow with them. A torn last line (a crash mid-append) is
//! skipped. Keys written with a lapse time (node registrations) live in
//! memory only: they describe the running controller, not its history.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
// tokio's clock, so that a lease lapses in virtual time in unit tests with
// paused time, as it does on the wall clock everywhere else.
use tokio::time::Instant;

use super::{Compare, Leadership, Store, StoreError, Versioned, Write};
use crate::model::{hex, unhex};

/// Below this many lines the file is never compacted while running.
pub const COMPACT_MIN_LINES: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Line {
    k: String,
    v: Option<String>,
}

struct Slot {
    value: Vec<u8>,
    revision: i64,
    /// When a leased key lapses.
    lapses: Option<Instant>,
}

struct FileState {
    keys: BTreeMap<String, Slot>,
    revision: i64,
    file: File,
    lines: usize,
}

/// The store in one file.
pub struct FileStore {
    path: PathBuf,
    state: Mutex<FileState>,
}

impl FileStore {
    /// Opens (creating) `state_dir/store.jsonl`, loading and compacting it.
    pub fn open(state_dir: &Path) -> Result<FileStore, StoreError> {
        let path = state_dir.join("store.jsonl");
        let err = |e: String| StoreError::Io(format!("{}: {e}", path.display()));
        fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
        let mut keys = BTreeMap::new();
        let mut revision = 0;
        if path.exists() {
            let file = File::open(&path).map_err(|e| err(e.to_string()))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| err(e.to_string()))?;
                let Ok(parsed) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                revision += 1;
                match parsed.v.as_deref().map(unhex) {
                    Some(Some(value)) => {
                        keys.insert(
                            parsed.k,
                            Slot {
                                value,
                                revision,
                                lapses: None,
                            },
                        );
                    }
                    Some(None) => continue,
                    None => {
                        keys.remove(&parsed.k);
                    }
                }
            }
        }
        let file = rewrite(&path, &keys).map_err(err)?;
        Ok(FileStore {
            path,
            state: Mutex::new(FileState {
                lines: keys.len(),
                keys,
                revision,
                file,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(format!("{}: {e}", self.path.display()))
    }

    fn append(
        &self,
        state: &mut FileState,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let line = serde_json::to_string(&Line {
            k: key.to_string(),
            v: value.map(hex),
        })
        .map_err(|e| self.io(e))?;
        writeln!(state.file, "{line}").map_err(|e| self.io(e))?;
        state.lines += 1;
        Ok(())
    }

    fn maybe_compact(&self, state: &mut FileState) -> Result<(), StoreError> {
        let durable = state.keys.values().filter(|s| s.lapses.is_none()).count();
        if state.lines < COMPACT_MIN_LINES || state.lines <= 2 * durable {
            return Ok(());
        }
        state.file = rewrite(&self.path, &state.keys).map_err(|e| self.io(e))?;
        state.lines = durable;
        Ok(())
    }
}

/// Drops lapsed keys.
fn expire(state: &mut FileState) {
    let now = Instant::now();
    state.keys.retain(|_, s| s.lapses.is_none_or(|t| t > now));
}

/// Writes the durable keys to a temporary file, syncs it and renames it over
/// `path`; returns `path` opened for appending.
fn rewrite(path: &Path, keys: &BTreeMap<String, Slot>) -> Result<File, String> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut out = File::create(&tmp).map_err(|e| e.to_string())?;
        for (k, slot) in keys.iter().filter(|(_, s)| s.lapses.is_none()) {
            let line = serde_json::to_string(&Line {
                k: k.clone(),
                v: Some(hex(&slot.value)),
            })
            .map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        out.sync_all().map_err(|e| e.to_string())?;
    }
    fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut state = self.lock();
        expire(&mut state);
        Ok(state.keys.get(key).map(|s| Versioned {
            value: s.value.clone(),
            revision: s.revision,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut state = self.lock();
        expire(&mut state);
        Ok(state
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| {
                (
                    k.clone(),
                    Versioned {
                        value: s.value.clone(),
                        revision: s.revision,
                    },
                )
            })
            .collect())
    }

    async fn commit(&self, when: Vec<Compare>, then: Vec<Write>) -> Result<bool, StoreError> {
        let mut state = self.lock();
        expire(&mut state);
        let holds = when.iter().all(|c| match c {
            Compare::Absent(k) => !state.keys.contains_key(k),
            Compare::At(k, rev) => state.keys.get(k).is_some_and(|s| s.revision == *rev),
        });
        if !holds {
            return Ok(false);
        }
        state.revision += 1;
        let revision = state.revision;
        for write in then {
            match write {
                Write::Put(k, value) => {
                    self.append(&mut state, &k, Some(&value))?;
                    state.keys.insert(
                        k,
                        Slot {
                            value,
                            revision,
                            lapses: None,
                        },
                    );
                }
                Write::Delete(k) => {
                    if state.keys.remove(&k).is_some() {
                        self.append(&mut state, &k, None)?;
                    }
                }
            }
        }
        self.maybe_compact(&mut state)?;
        Ok(true)
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision;
        state.keys.insert(
            key.to_string(),
            Slot {
                value,
                revision,
                lapses: Some(Instant::now() + ttl),
            },
        );
        Ok(())
    }

    async fn lead(&self) -> Result<Leadership, StoreError> {
        // One file, one controller: it always leads.
        Ok(Leadership::forever())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_reopen_skips_a_torn_line_and_stays_compact() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = FileStore::open(dir.path()).expect("open");
            s.put("a/1", b"one".to_vec()).await.expect("put");
            s.put("a/2", b"two".to_vec()).await.expect("put");
            s.delete("a/2").await.expect("delete");
            s.put_leased("n/x", b"x".to_vec(), Duration::from_secs(60))
                .await
                .expect("leased");
            for i in 0..3000u32 {
                s.put("a/busy", i.to_le_bytes().to_vec())
                    .await
                    .expect("put");
            }
        }
        let path = dir.path().join("store.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        write!(f, "{{\"k\":\"a/3\",\"v").expect("write");
        drop(f);
        let lines = fs::read_to_string(&path).expect("read").lines().count();
        assert!(lines < COMPACT_MIN_LINES + 3, "{lines} lines");
        let s = FileStore::open(dir.path()).expect("reopen");
        let keys: Vec<String> = s
            .list("")
            .await
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/1", "a/busy"], "leased keys are not durable");
        assert_eq!(
            s.get("a/busy").await.expect("get").map(|v| v.value),
            Some(2999u32.to_le_bytes().to_vec())
        );
    }

    // Paused: the suite's lease lapses in virtual time.
    #[tokio::test(start_paused = true)]
    async fn passes_the_store_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStore::open(dir.path()).expect("open");
        super::super::suite::run(&s).await;
    }
}
