//! Starting the engine: loading the journal, setting aside records that do
//! not belong to this host, and resuming or rolling back what was unfinished.

use std::sync::{Arc, Mutex};

use super::{Engine, EngineConfig, Inner, Job, Registry};
use crate::engine::job;
use crate::error::Error;
use crate::hypervisor::{Hypervisor, PoolSpec};
use crate::journal::{Journal, Record};
use crate::observer::{Observer, TraceContext};

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
                    // The top keeps the name the pool gave it, if it was created.
                    let volume = record
                        .stage
                        .created_volume()
                        .map_or(record.plan.dest_volume.as_str(), |v| v.name.as_str());
                    reg.claim(&job.id, &record.plan, volume);
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
