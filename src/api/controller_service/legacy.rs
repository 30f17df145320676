//! The history file of controllers before the store (`history.jsonl` in the
//! state dir: one JSON line per write, holding a protobuf `MigrationRecord`
//! in hex; the last line of an id wins). A controller that finds it imports
//! it into its store once, so an upgrade keeps the history, then renames it
//! to `history.jsonl.imported`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

use prost::Message;
use serde::Deserialize;

use super::convert;
use crate::config::ControllerConfig;
use crate::controller::history::{History, HistoryRetention};
use crate::controller::model::{unhex, MigrationEntry};
use crate::controller::store::Store;
use crate::proto;

/// The file's name in the state dir.
pub const FILE: &str = "history.jsonl";

#[derive(Deserialize)]
struct Line {
    id: String,
    dest_storage_id: String,
    #[serde(default)]
    more_storage_ids: Vec<String>,
    record_hex: String,
}

fn entry(line: Line) -> Option<MigrationEntry> {
    let record = proto::MigrationRecord::decode(unhex(&line.record_hex)?.as_slice()).ok()?;
    let order = convert::order_from_proto(record.request.unwrap_or_default()).ok()?;
    Some(MigrationEntry {
        migration_id: line.id,
        node_id: record.node_id,
        order,
        latest: record
            .latest
            .as_ref()
            .map(convert::event_from_proto)
            .unwrap_or_default(),
        source_pool: record.source_pool,
        previous_source: record.previous_source,
        dest_storage_id: line.dest_storage_id,
        more_storage_ids: line.more_storage_ids,
    })
}

/// Imports `state_dir/history.jsonl` into `store` when it is there; how many
/// migrations it held. Lines that cannot be read are skipped and counted in
/// the log, as the old controller skipped them.
pub async fn import(config: &ControllerConfig, store: Arc<dyn Store>) -> anyhow::Result<usize> {
    let path = config.state_dir.join(FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let mut latest: BTreeMap<String, Line> = BTreeMap::new();
    let mut unreadable = 0usize;
    for text in std::io::BufReader::new(file).lines() {
        let text = text.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match serde_json::from_str::<Line>(&text) {
            Ok(line) => {
                latest.insert(line.id.clone(), line);
            }
            Err(_) => unreadable += 1,
        }
    }
    let history = History::open(store, HistoryRetention::of(config)).await?;
    let mut imported = 0;
    for line in latest.into_values() {
        match entry(line) {
            Some(e) => {
                history.create(e).await?;
                imported += 1;
            }
            None => unreadable += 1,
        }
    }
    let done = path.with_file_name(format!("{FILE}.imported"));
    std::fs::rename(&path, &done).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(imported, unreadable, from = %done.display(), "history of an earlier version imported into the store");
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::model::hex;
    use crate::controller::store::file::FileStore;

    fn line(id: &str, phase: proto::Phase, at: u64) -> String {
        let record = proto::MigrationRecord {
            migration_id: id.into(),
            node_id: "kvm1".into(),
            request: Some(proto::MigrateVolumeRequest {
                domain: "web01".into(),
                disk: "vda".into(),
                destination_pool: "fast".into(),
                ..Default::default()
            }),
            latest: Some(proto::MigrationEvent {
                migration_id: id.into(),
                node_id: "kvm1".into(),
                phase: phase as i32,
                timestamp_unix_ms: at,
                started_at_unix_ms: 1,
                domain: "web01".into(),
                ..Default::default()
            }),
            source_pool: "slow".into(),
            previous_source: "/slow/web01.qcow2".into(),
        };
        format!(
            r#"{{"id":"{id}","dest_storage_id":"dir:fast","record_hex":"{}"}}"#,
            hex(&record.encode_to_vec())
        )
    }

    #[tokio::test]
    async fn an_earlier_history_file_is_imported_once_with_the_last_line_of_each_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ControllerConfig {
            state_dir: dir.path().to_path_buf(),
            ..ControllerConfig::default()
        };
        let now = crate::migration::model::now_ms();
        let text = [
            line("mig-a", proto::Phase::Copying, now - 2000),
            "{torn".to_string(),
            line("mig-b", proto::Phase::Completed, now - 1500),
            line("mig-a", proto::Phase::Completed, now - 1000),
        ]
        .join("\n");
        std::fs::write(dir.path().join(FILE), text).expect("write");
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).expect("store"));

        assert_eq!(import(&config, store.clone()).await.expect("import"), 2);

        let history = History::open(store.clone(), HistoryRetention::of(&config))
            .await
            .expect("history");
        let a = history.get("mig-a").await.expect("get").expect("mig-a");
        assert!(a.is_terminal(), "{a:?}");
        assert_eq!(a.order.destination_pool, "fast");
        assert_eq!(a.previous_source, "/slow/web01.qcow2");
        assert_eq!(a.dest_storage_id, "dir:fast");
        assert!(history.get("mig-b").await.expect("get").is_some());
        assert!(!dir.path().join(FILE).exists());
        assert!(dir.path().join("history.jsonl.imported").exists());
        // Started again, nothing more to import.
        assert_eq!(import(&config, store).await.expect("again"), 0);
    }
}
