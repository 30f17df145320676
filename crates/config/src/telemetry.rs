//! How a component reports: its log line format and the `[telemetry]` table.

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

/// OpenTelemetry trace export, the `[telemetry]` table. Each key gives way
/// to its standard environment variable (named beside it), as OpenTelemetry
/// SDKs do; with neither an endpoint key nor the variable, nothing is exported.
#[derive(Debug, Clone, Default, Deserialize, Serialize, DocumentedFields, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); empty: off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME`); empty:
    /// `volmig-node` or `volmig-controller`.
    pub service_name: String,
    /// Sampler: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on`, `parentbased_always_off` or
    /// `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`); empty:
    /// `parentbased_always_on`.
    pub traces_sampler: String,
    /// The ratio of the `traceidratio` samplers, 0.0 to 1.0
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    pub traces_sampler_arg: Option<f64>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the enclosing spans.
    Json,
}
