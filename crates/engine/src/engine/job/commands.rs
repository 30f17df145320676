//! How the job answers commands (cancel, bandwidth) and the timeout and a
//! group abort while it works or waits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::control::{Copy, Refusal, StopReason};
use super::ctx::Ctx;
use crate::engine::group::Abort;
use crate::engine::Command;
use crate::error::Error;

impl<'a> Ctx<'a> {
    pub(super) fn stopped(&self) -> Result<(), Error> {
        match self.control.stop_reason() {
            Some(StopReason::Cancelled) => Err(Error::Cancelled),
            Some(StopReason::TimedOut(s)) => Err(Error::TimedOut(*s)),
            Some(StopReason::MemberFailed { disk, reason }) => Err(Error::GroupAborted {
                disk: disk.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The instant the timeout fires, while it still applies.
    fn live_deadline(&self) -> Option<(tokio::time::Instant, u64)> {
        self.deadline.filter(|_| self.control.interruptible())
    }

    /// The group's gate, while an abort of the group still stops this job.
    fn live_gate(&self) -> Option<Arc<crate::engine::group::Gate>> {
        self.member
            .as_ref()
            .filter(|_| self.control.interruptible())
            .map(|m| m.gate.clone())
    }

    /// Drives `fut` to completion while answering commands.
    pub(super) async fn attend<F: Future>(&mut self, fut: F) -> F::Output {
        let fut = fut.instrument(self.work_span());
        tokio::pin!(fut);
        loop {
            let deadline = self.live_deadline();
            let gate = self.live_gate();
            tokio::select! {
                biased;
                out = &mut fut => return out,
                Some(cmd) = self.inbox.recv() => self.handle(cmd).await,
                _ = until(deadline) => self.time_out(),
                why = group_abort(gate) => self.group_stopped(why),
            }
        }
    }

    /// Waits `d`, answering commands; returns early with the stop error as soon
    /// as the job is cancelled or times out.
    pub(super) async fn pause(&mut self, d: Duration) -> Result<(), Error> {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            let deadline = self.live_deadline();
            let gate = self.live_gate();
            tokio::select! {
                biased;
                Some(cmd) = self.inbox.recv() => self.handle(cmd).await,
                _ = until(deadline) => self.time_out(),
                why = group_abort(gate) => self.group_stopped(why),
                _ = &mut sleep => return self.stopped(),
            }
            self.stopped()?;
        }
    }

    pub(super) fn group_stopped(&mut self, why: Abort) {
        self.control.stop(match why {
            Abort::Cancelled => StopReason::Cancelled,
            Abort::MemberFailed { disk, reason } => StopReason::MemberFailed { disk, reason },
        });
    }

    /// Answers every queued command, then says whether the job must stop.
    pub(super) async fn checkpoint(&mut self) -> Result<(), Error> {
        while let Ok(cmd) = self.inbox.try_recv() {
            self.handle(cmd).await;
        }
        if self
            .live_deadline()
            .is_some_and(|(at, _)| at <= tokio::time::Instant::now())
        {
            self.time_out();
        }
        self.stopped()
    }

    fn time_out(&mut self) {
        if let Some((_, secs)) = self.deadline {
            self.control.stop(StopReason::TimedOut(secs));
        }
    }

    fn refused(&self, why: Refusal) -> Error {
        Error::WrongPhase {
            id: self.job.id.clone(),
            phase: self.job.latest().phase.name(),
            reason: why.reason(),
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Cancel(reply) => {
                // A disk of a group is cancelled with its whole group, and
                // only while the group can still roll back.
                let group_refused = self
                    .member
                    .as_ref()
                    .is_some_and(|m| !m.gate.abort(Abort::Cancelled));
                let answer = match self.control.cancel(group_refused) {
                    Ok(()) => Ok(self.job.latest()),
                    Err(why) => Err(self.refused(why)),
                };
                // The caller may be gone; the decision stands either way.
                let _ = reply.send(answer);
            }
            Command::SetBandwidth(bandwidth, reply) => {
                let answer = match self.control.bandwidth() {
                    Err(why) => Err(self.refused(why)),
                    Ok(Copy::Pending) => {
                        self.note(|r| r.bandwidth = bandwidth);
                        Ok(())
                    }
                    Ok(Copy::Running) => {
                        let plan = self.plan();
                        self.inner
                            .hv(move |hv| {
                                hv.block_job_set_speed(&plan.domain, &plan.target, bandwidth)
                            })
                            .await
                            .map(|()| self.note(|r| r.bandwidth = bandwidth))
                            .map_err(Error::hv("changing the copy bandwidth"))
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// The block job runs at `speed`: from now on a bandwidth change is made in
    /// place, and one recorded while it was pending is applied. Should that
    /// fail, the copy goes on at `speed` and the record says so.
    pub(super) async fn copy_runs(&mut self, speed: u64) {
        self.control.copy_runs();
        let wanted = self.record().bandwidth;
        if wanted == speed {
            return;
        }
        let plan = self.plan();
        // Not attended: a SetBandwidth answered meanwhile would race this one.
        let applied = self
            .inner
            .hv(move |hv| hv.block_job_set_speed(&plan.domain, &plan.target, wanted))
            .await;
        if let Err(e) = applied {
            tracing::warn!(error = %e, bandwidth = wanted, "cannot apply the bandwidth set while the copy was being issued; it runs at {speed} bytes/s");
            self.note(|r| r.bandwidth = speed);
        }
    }
}

async fn group_abort(gate: Option<Arc<crate::engine::group::Gate>>) -> Abort {
    match gate {
        Some(gate) => gate.aborted().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<(tokio::time::Instant, u64)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
