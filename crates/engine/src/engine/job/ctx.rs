//! The job task's context: what it holds while it runs, its spans, and the
//! calls every stage makes through it (hypervisor calls, journaled updates).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::control::Control;
use volmig_types::retry::RetryPolicy;

use crate::engine::group::Member;
use crate::engine::{blocking, Command, EngineConfig, Inner, Job, Publisher, TaskEnd};
use crate::error::Error;
use crate::hypervisor::{HvError, Hypervisor};
use crate::journal::{Plan, Record, Stage};
use crate::model::{now_ms, Phase};

/// The job task's own state: its command inbox and what it has decided.
pub(crate) struct Ctx<'a> {
    pub(super) inner: &'a Inner,
    pub(super) job: &'a Job,
    pub(super) inbox: mpsc::Receiver<Command>,
    /// The only writer of the job's published state.
    publisher: Publisher,
    pub(super) deadline: Option<(tokio::time::Instant, u64)>,
    /// What cancel, the timeout and a bandwidth change find.
    pub(super) control: Control,
    /// Its place in a group, when it moves with other disks.
    pub(super) member: Option<Member>,
    /// Its place among a group's copies allowed at once, until it is synchronized.
    pub(super) copy_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The migration's span (see [`migration_span`]).
    pub(super) span: tracing::Span,
    /// The phase being worked on and its span, a child of `span`: the work
    /// the job awaits runs in it, so libvirt calls and journal writes are
    /// children of their phase.
    pub(super) phase: Option<(Phase, tracing::Span)>,
}

/// The span of one migration, carrying the attributes that identify it
/// (passed on to every span beneath it by the trace exporter), and an error
/// status once it fails.
pub(super) fn migration_span(record: &Record) -> tracing::Span {
    tracing::info_span!(
        "migration",
        migration.id = %record.id,
        domain = %record.plan.domain.escape_debug(),
        disk = %record.plan.target,
        node.id = %record.latest.node_id,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// Marks `span` as failed with `message` (OpenTelemetry status ERROR).
pub(super) fn record_error(span: &tracing::Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
}

impl<'a> Ctx<'a> {
    pub(super) fn new(inner: &'a Inner, job: &'a Job, task: TaskEnd) -> Self {
        let record = job.record();
        let deadline = record.request.options.timeout.map(|t| {
            let ends_ms = record
                .latest
                .started_ms
                .saturating_add(t.as_millis() as u64);
            let left = Duration::from_millis(ends_ms.saturating_sub(now_ms()));
            (tokio::time::Instant::now() + left, t.as_secs())
        });
        Ctx {
            inner,
            job,
            inbox: task.inbox,
            publisher: task.publisher,
            deadline,
            control: Control::resumed(
                matches!(record.stage, Stage::Mirroring(_)),
                matches!(record.stage, Stage::Pivoted(_)),
            ),
            member: job.group().and_then(|g| {
                let gate = g.gate.clone()?;
                let index = g.members.iter().position(|m| m.id == job.id)?;
                Some(Member { gate, index })
            }),
            copy_slot: None,
            // Created inside the migration's span (see `run`).
            span: tracing::Span::current(),
            phase: None,
        }
    }

    /// Opens the span of `phase` unless it is the one open (the terminal
    /// phases have none: they end the migration's span).
    pub(super) fn enter_phase(&mut self, phase: Phase) {
        if phase.is_terminal() || self.phase.as_ref().is_some_and(|(p, _)| *p == phase) {
            return;
        }
        // The migration's identity is its parent's: the exporter copies it
        // to the span, and a JSON log line lists the parent's fields.
        let span = tracing::info_span!(
            parent: &self.span,
            "phase",
            otel.name = %format!("phase {}", phase.name()),
            phase = phase.name(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        self.phase = Some((phase, span));
    }

    /// The span work belongs in now: the phase's, else the migration's.
    pub(super) fn work_span(&self) -> tracing::Span {
        self.phase
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| self.span.clone())
    }

    pub fn record(&self) -> Record {
        self.job.record()
    }

    pub fn plan(&self) -> Plan {
        self.job.lock().record.plan.clone()
    }

    /// Changes the record in memory only; the next publish journals it.
    pub(super) fn note(&self, change: impl FnOnce(&mut Record)) {
        self.publisher.change(change);
    }

    /// Announces the record as it is, unjournaled: progress, or a terminal
    /// event whose journal write failed (watchers must still see the end).
    pub(super) fn announce(&self) {
        let event = self.publisher.announce();
        self.inner.announced(self.job, &event);
    }

    /// A hypervisor call, answering commands while it runs.
    pub async fn hv<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let inner = self.inner;
        self.attend(inner.hv(f)).await
    }

    /// A hypervisor call retried while libvirtd is unreachable (restarting), up
    /// to the grace period.
    pub async fn hv_retry<T: Send + 'static>(
        &mut self,
        what: &str,
        f: impl Fn(&dyn Hypervisor) -> Result<T, HvError> + Send + Sync + Clone + 'static,
    ) -> Result<T, Error> {
        let policy = libvirt_retry(&self.inner.config);
        let started = Instant::now();
        let mut failed = 0;
        loop {
            match self.hv(f.clone()).await {
                Err(HvError::Unreachable { uri, message }) => {
                    failed += 1;
                    let Some(pause) = policy.next_pause(failed, started.elapsed()) else {
                        return Err(Error::Unavailable(format!(
                            "{what}: libvirt at {uri} unreachable for {} s: {message}",
                            self.inner.config.libvirt_grace.as_secs()
                        )));
                    };
                    self.attend(tokio::time::sleep(pause)).await;
                }
                other => return other.map_err(Error::hv(what)),
            }
        }
    }

    /// Journals, then announces, a change of the record. The record changes
    /// even when the journal write fails, so the job's own decisions (what
    /// to roll back) always follow what it did.
    pub async fn publish(&mut self, update: impl FnOnce(&mut Record)) -> Result<(), Error> {
        self.publisher.change(|r| {
            update(r);
            r.latest.timestamp_ms = now_ms();
        });
        let (journal, record) = (self.inner.journal.clone(), self.record());
        let saved = self.attend(blocking(move || journal.save(&record))).await;
        let published = match saved {
            Ok(Ok(())) => {
                self.announce();
                Ok(())
            }
            Ok(Err(e)) => Err(Error::Journal(e)),
            Err(e) => Err(Error::Journal(e.to_string())),
        };
        self.enter_phase(self.job.latest().phase);
        published
    }

    pub async fn set_phase(&mut self, phase: Phase, message: String) -> Result<(), Error> {
        self.enter_phase(phase);
        self.work_span()
            .in_scope(|| tracing::info!(phase = phase.name(), "{message}"));
        self.publish(|r| {
            r.latest.phase = phase;
            r.latest.message = message;
            // A convergence warning is about the copy, which this phase ends.
            r.latest.convergence = None;
        })
        .await
    }
}

/// How a libvirt call is retried while libvirtd is unreachable (restarting):
/// short even pauses, for at most the grace period.
fn libvirt_retry(config: &EngineConfig) -> RetryPolicy {
    let pause = Duration::from_millis(500).min(config.libvirt_grace / 4 + Duration::from_millis(1));
    RetryPolicy::within(config.libvirt_grace, pause, pause)
}
