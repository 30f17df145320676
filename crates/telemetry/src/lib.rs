//! Logs and traces: the log formats (text or JSON, control characters
//! escaped) and OpenTelemetry trace export and propagation. OTLP export itself
//! is the `otlp` feature; without it a configured endpoint is refused at start.

pub mod export;
pub mod logs;

pub use logs::init;
