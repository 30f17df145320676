//! What the engine reports about its own work, for metrics, without depending
//! on a metrics library: the node wires an implementation in (see
//! `crate::metrics`), tests and library users get the no-op `()`.
//!
//! Calls are made inline on the engine's paths (an event publication, a
//! journal write), so an implementation must be cheap and must not block.

use std::time::Duration;

use crate::migration::model::Event;

/// Receives the engine's events and journal writes.
pub trait Observer: Send + Sync + 'static {
    /// Every event one disk migration publishes (phase changes and progress),
    /// in order, exactly as its watchers see it.
    fn event(&self, event: &Event);
    /// One journal write, how long it took and whether it failed.
    fn journal_write(&self, elapsed: Duration, failed: bool);
}

/// Observes nothing.
impl Observer for () {
    fn event(&self, _: &Event) {}
    fn journal_write(&self, _: Duration, _: bool) {}
}
