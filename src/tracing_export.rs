//! OpenTelemetry traces: OTLP/gRPC export and W3C trace-context propagation.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variables
//! apply: `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
//! `traceparent` travels in gRPC metadata: every outgoing call injects the
//! current span's context ([`inject`], in the client interceptor) and every
//! server request span takes the caller's as its parent ([`server_span`]), so
//! one migration from the CLI through the controller to the node is one trace.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP trace export")]
pub struct ExportError(#[source] opentelemetry_otlp::ExporterBuildError);

/// Keeps the exporter running; dropping it flushes the spans not yet sent.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("volmig: flushing traces failed: {e}");
        }
    }
}

/// The tracer provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`, or `None`
/// when the variable is unset. `service` names the process when
/// `OTEL_SERVICE_NAME` does not. Installs the W3C propagator either way, so
/// an exporting process passes on the context it receives.
pub fn exporter(
    service: &str,
) -> Result<Option<(Exporter, opentelemetry_sdk::trace::Tracer)>, ExportError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(ExportError)?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("volmig");
    Ok(Some((Exporter(provider), tracer)))
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // traceparent/tracestate are ASCII; anything else is dropped, not sent broken.
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Adds the current span's trace context to an outgoing call's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(metadata))
    });
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
