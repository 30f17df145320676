//! OpenTelemetry traces: OTLP/gRPC export and W3C trace-context propagation.
//!
//! Off unless an endpoint is configured: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), else the config file's
//! `[telemetry] otlp_endpoint`. Each standard variable (`OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, the `OTEL_BSP_*` batch
//! settings) wins over its config key, as in every OpenTelemetry SDK.
//! `traceparent` travels in gRPC metadata: every outgoing call injects the
//! current span's context ([`inject`], in the client interceptor) and every
//! server request span takes the caller's as its parent ([`server_span`]), so
//! one migration from the CLI through the controller to the node is one trace.
//!
//! A migration's identity (`migration.id`, `domain`, `disk`, `node.id`) is
//! set on the span that starts it and copied to every span beneath it by
//! [`Inherit`]; code that does not know the migration (a libvirt call, a
//! journal write) need not pass it along.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData};
use opentelemetry_sdk::trace::{Span, SpanProcessor};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use volmig_config::TelemetryConfig;

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    #[cfg(feature = "otlp")]
    #[error("cannot set up OTLP trace export")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    /// An endpoint is configured but this binary cannot export.
    #[cfg(not(feature = "otlp"))]
    #[error("this volmig was built without OTLP trace export (cargo feature `otlp`): remove [telemetry] otlp_endpoint and OTEL_EXPORTER_OTLP_ENDPOINT, or install a build that has it")]
    NotBuilt,
    /// `[telemetry] traces_sampler` names no sampler.
    #[error("unknown traces_sampler '{0}' (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")]
    Sampler(String),
    /// `[telemetry] traces_sampler_arg` is not a ratio.
    #[error("traces_sampler_arg {0} is not between 0.0 and 1.0")]
    SamplerArg(f64),
}

/// Keeps the exporter running; dropping it flushes the spans not yet sent.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("volmig: flushing traces failed: {e}");
        }
    }
}

/// What the process sets itself: `None` where the environment (read by the
/// OpenTelemetry SDK) decides.
#[derive(Debug)]
struct Settings {
    endpoint: Option<String>,
    service_name: Option<String>,
    sampler: Option<Sampler>,
}

/// The settings from `cfg` that no environment variable overrides (`env`
/// reads one), or `None` when no endpoint is configured anywhere.
fn settings(
    cfg: &TelemetryConfig,
    service: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, ExportError> {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    let env_endpoint =
        set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if !env_endpoint && cfg.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let service_name = (!set("OTEL_SERVICE_NAME")).then(|| {
        if cfg.service_name.is_empty() {
            service.to_string()
        } else {
            cfg.service_name.clone()
        }
    });
    let sampler = if set("OTEL_TRACES_SAMPLER") || cfg.traces_sampler.is_empty() {
        None
    } else {
        Some(sampler(&cfg.traces_sampler, cfg.traces_sampler_arg)?)
    };
    Ok(Some(Settings {
        endpoint: (!env_endpoint).then(|| cfg.otlp_endpoint.clone()),
        service_name,
        sampler,
    }))
}

/// The sampler a `traces_sampler` value names (the values of `OTEL_TRACES_SAMPLER`).
fn sampler(name: &str, arg: Option<f64>) -> Result<Sampler, ExportError> {
    let ratio = match arg {
        Some(r) if !(0.0..=1.0).contains(&r) => return Err(ExportError::SamplerArg(r)),
        Some(r) => r,
        None => 1.0,
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        other => return Err(ExportError::Sampler(other.to_string())),
    })
}

/// The tracer provider exporting to the configured collector, or `None`
/// when no endpoint is configured (see the module doc). `service` names the
/// process when neither `OTEL_SERVICE_NAME` nor `cfg` does. Installs the W3C
/// propagator either way, so an exporting process passes on the context it
/// receives.
pub fn exporter(
    service: &str,
    cfg: &TelemetryConfig,
) -> Result<Option<(Exporter, opentelemetry_sdk::trace::Tracer)>, ExportError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let Some(settings) = settings(cfg, service, |name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    let processor = Inherit::new(batch_processor(settings.endpoint)?);
    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(name) = settings.service_name {
        resource = resource.with_service_name(name);
    }
    let mut provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build());
    if let Some(sampler) = settings.sampler {
        provider = provider.with_sampler(sampler);
    }
    let provider = provider.build();
    let tracer = provider.tracer("volmig");
    Ok(Some((Exporter(provider), tracer)))
}

/// Batches spans to the OTLP/gRPC collector at `endpoint` (`None`: the one
/// the environment names).
#[cfg(feature = "otlp")]
fn batch_processor(endpoint: Option<String>) -> Result<BatchSpanProcessor, ExportError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig;
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(ExportError::Build)?;
    Ok(BatchSpanProcessor::builder(exporter).build())
}

#[cfg(not(feature = "otlp"))]
fn batch_processor(_: Option<String>) -> Result<BatchSpanProcessor, ExportError> {
    Err(ExportError::NotBuilt)
}

/// The attributes that identify a migration, copied from a span to the
/// spans beneath it.
const INHERITED: [&str; 4] = ["migration.id", "domain", "disk", "node.id"];

/// A span processor that gives every span the [`INHERITED`] attributes of
/// its parent (those it does not set itself), then hands it on to `inner`.
///
/// A parent is started before its children, so its attributes are known by
/// then; what a span records only after it started is not passed on. Entries
/// live while their span is open.
#[derive(Debug)]
pub struct Inherit<P> {
    inner: P,
    open: Mutex<HashMap<opentelemetry::SpanId, Arc<[KeyValue]>>>,
}

impl<P> Inherit<P> {
    /// `inner` behind attribute inheritance.
    pub fn new(inner: P) -> Self {
        Inherit {
            inner,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<opentelemetry::SpanId, Arc<[KeyValue]>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<P: SpanProcessor> SpanProcessor for Inherit<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let parent = cx
            .has_active_span()
            .then(|| cx.span().span_context().span_id())
            .and_then(|id| self.open().get(&id).cloned());
        let mut own: Vec<KeyValue> = span
            .exported_data()
            .map(|d| d.attributes)
            .unwrap_or_default()
            .into_iter()
            .filter(|kv| INHERITED.contains(&kv.key.as_str()))
            .collect();
        for kv in parent.iter().flat_map(|p| p.iter()) {
            if !own.iter().any(|o| o.key == kv.key) {
                span.set_attribute(kv.clone());
                own.push(kv.clone());
            }
        }
        if !own.is_empty() {
            let id = span.span_context().span_id();
            self.open().insert(id, own.into());
        }
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.open().remove(&span.span_context.span_id());
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Makes `span` (not yet entered) continue the trace `trace_id` (hex): a
/// migration resumed after a node restart stays in the trace it began in,
/// the one its journaled events name. Its parent there was a span of the old
/// process, unknown now: a fresh span id stands in for it. A malformed or
/// empty id changes nothing.
pub fn continue_trace(span: &tracing::Span, trace_id: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let Ok(trace_id) = TraceId::from_hex(trace_id) else {
        return;
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    let parent = SpanContext::new(
        trace_id,
        SpanId::from_bytes(id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if parent.is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// The trace id of the current span (32 hex digits), when spans are exported.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

/// The trace id of `span` (32 hex digits), when spans are exported.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct FnInjector<F>(F);

impl<F: FnMut(&str, String)> Injector for FnInjector<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value)
    }
}

/// Hands the current span's trace context (`traceparent`, `tracestate`) to
/// `set`, which puts each pair into an outgoing call's metadata.
pub fn inject(set: impl FnMut(&str, String)) {
    let cx = tracing::Span::current().context();
    let mut injector = FnInjector(set);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut injector));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one incoming gRPC request, child of the caller's trace
/// context when the request carries one.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc.request", rpc.method = %req.uri().path());
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    // Fails only when no OpenTelemetry layer is installed: nothing to link then.
    let _ = span.set_parent(parent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str, service: &str, sampler: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.to_string(),
            service_name: service.to_string(),
            traces_sampler: sampler.to_string(),
            traces_sampler_arg: None,
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_anywhere() {
        let s = settings(&cfg("", "svc", "always_on"), "volmig-node", env(&[])).expect("ok");
        assert!(s.is_none());
    }

    #[test]
    fn config_keys_apply_where_no_variable_is_set() {
        let s = settings(
            &cfg("http://collector:4317", "", "parentbased_traceidratio"),
            "volmig-node",
            env(&[]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(s.service_name.as_deref(), Some("volmig-node"));
        assert!(format!("{:?}", s.sampler).contains("TraceIdRatioBased(1.0)"));
        let s = settings(
            &cfg("http://c:4317", "edge-node", ""),
            "volmig-node",
            env(&[]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(s.service_name.as_deref(), Some("edge-node"));
        assert!(s.sampler.is_none(), "the SDK's default sampler");
    }

    #[test]
    fn environment_variables_win_over_config_keys() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ];
        let s = settings(
            &cfg("http://file:4317", "from-file", "always_on"),
            "volmig-node",
            env(&vars),
        )
        .expect("ok")
        .expect("on");
        // None: left to the SDK, which reads the variables.
        assert!(s.endpoint.is_none() && s.service_name.is_none() && s.sampler.is_none());
        // The variable alone turns export on.
        let traces_only = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4317")];
        assert!(settings(&cfg("", "", ""), "n", env(&traces_only))
            .expect("ok")
            .is_some());
    }

    /// Keeps the spans that end.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().expect("lock").push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _timeout: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn spans_beneath_a_migration_inherit_its_identity() {
        use tracing_subscriber::layer::SubscriberExt;
        let collected = Collect::default();
        let inherit = Inherit::new(collected.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(inherit)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let migration = tracing::info_span!(
                "migration",
                migration.id = "mig-1",
                domain = "web",
                disk = "vda",
                node.id = "kvm1"
            );
            migration.in_scope(|| {
                let phase = tracing::info_span!("phase");
                phase.in_scope(|| {
                    // A span that names its own disk keeps it.
                    tracing::info_span!("libvirt", disk = "vdb").in_scope(|| {});
                });
            });
            tracing::info_span!("unrelated").in_scope(|| {});
        });
        let spans = collected.0.lock().expect("lock").clone();
        let attrs = |name: &str| -> HashMap<String, String> {
            spans
                .iter()
                .find(|s| s.name == name)
                .expect(name)
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        };
        let libvirt = attrs("libvirt");
        assert_eq!(libvirt["migration.id"], "mig-1");
        assert_eq!(libvirt["node.id"], "kvm1");
        assert_eq!(libvirt["domain"], "web");
        assert_eq!(libvirt["disk"], "vdb");
        assert_eq!(attrs("phase")["disk"], "vda");
        assert!(!attrs("unrelated").contains_key("migration.id"));
    }

    #[test]
    fn a_resumed_migration_continues_its_trace() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            tracing_opentelemetry::layer().with_tracer(provider.tracer("test")),
        );
        tracing::subscriber::with_default(subscriber, || {
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let span = tracing::info_span!("migration");
            continue_trace(&span, trace);
            assert_eq!(trace_id_of(&span).as_deref(), Some(trace));
            let fresh = tracing::info_span!("migration");
            continue_trace(&fresh, "not hex");
            let fresh_id = trace_id_of(&fresh).expect("a trace of its own");
            assert_ne!(fresh_id, trace);
        });
    }

    #[test]
    fn a_bad_sampler_is_refused() {
        let bad = settings(&cfg("http://c:4317", "", "sometimes"), "n", env(&[]));
        assert!(matches!(bad, Err(ExportError::Sampler(_))));
        let mut ratio = cfg("http://c:4317", "", "traceidratio");
        ratio.traces_sampler_arg = Some(1.5);
        assert!(matches!(
            settings(&ratio, "n", env(&[])),
            Err(ExportError::SamplerArg(_))
        ));
    }
}
