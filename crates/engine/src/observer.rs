//! What the engine reports about its own work, for metrics, without depending
//! on a metrics library: the node wires an implementation in (see
//! the `volmig` binary's metrics), tests and library users get the no-op `()`.
//!
//! Calls are made inline on the engine's paths (an event publication, a
//! journal write), so an implementation must be cheap and must not block.

use std::time::Duration;

use crate::model::Event;

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

/// Carries a migration's trace across the engine without the engine knowing
/// the tracing backend: the node wires in OpenTelemetry, tests get the no-op
/// `()`.
pub trait TraceContext: Send + Sync + 'static {
    /// The trace id (32 hex digits) of the span the caller runs in, when spans
    /// are exported.
    fn current_trace_id(&self) -> Option<String>;
    /// Makes `span` a continuation of the trace `trace_id`, so a migration
    /// resumed after a restart stays in the trace it started in.
    fn continue_trace(&self, span: &tracing::Span, trace_id: &str);
}

/// Traces nothing.
impl TraceContext for () {
    fn current_trace_id(&self) -> Option<String> {
        None
    }
    fn continue_trace(&self, _: &tracing::Span, _: &str) {}
}
