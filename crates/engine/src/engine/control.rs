//! Finding, reading and steering migrations by id: cancel, bandwidth, get, list.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{migrate_group, Command, Engine, Job, ListFilter};
use crate::engine::group::Group;
use crate::error::Error;
use crate::journal::Record;
use crate::model::Event;
use crate::validate;

impl Engine {
    pub(super) fn job(&self, id: &str) -> Result<Arc<Job>, Error> {
        validate::migration_id(id)?;
        self.inner
            .registry()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Error::MigrationNotFound(id.to_string()))
    }

    /// The group with id `id`, if it is one.
    pub(super) fn group(&self, id: &str) -> Result<Option<Arc<Group>>, Error> {
        validate::migration_id(id)?;
        Ok(self.inner.registry().groups.get(id).cloned())
    }

    /// Asks a migration to stop before its pivot. The job answers: with the state
    /// at that moment when it will stop, or FAILED_PRECONDITION when its pivot
    /// has begun or it has ended.
    pub async fn cancel(&self, id: &str) -> Result<Event, Error> {
        if let Some(group) = self.group(id)? {
            return migrate_group::cancel_group(&group);
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

    pub(super) async fn set_job_bandwidth(
        &self,
        job: &Job,
        bytes_per_sec: u64,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(job, Command::SetBandwidth(bytes_per_sec, tx))
            .await?;
        rx.await.unwrap_or_else(|_| Err(job.ended()))
    }
}
