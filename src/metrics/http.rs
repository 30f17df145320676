//! The `/metrics` endpoint: plain HTTP/1.1, GET only, the Prometheus text
//! format (0.0.4), which both Prometheus and `promtool check metrics` read
//! (promtool does not parse OpenMetrics' counter naming).
//!
//! Bounded like the gRPC listeners: a few connections at once, each with a
//! deadline for its headers and for its whole life, so a scraper that stalls
//! cannot hold the process's memory or descriptors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection (keep-alive included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is not `host:port`.
    #[error("metrics_listen '{0}' is not an address such as 127.0.0.1:9450")]
    Address(String),
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves `registry` at `http://<listen>/metrics` in the background for the
/// life of the process; returns the bound address (port 0 picks a free one).
pub async fn serve(listen: &str, registry: Arc<Registry>) -> Result<SocketAddr, MetricsError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| MetricsError::Address(listen.escape_debug().to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    if bound.ip().is_loopback() {
        tracing::info!(addr = %bound, "metrics listening on http://{bound}/metrics");
    } else {
        // The exposition names domains and disks; it has no authentication.
        tracing::warn!(addr = %bound, "metrics listening on http://{bound}/metrics, unauthenticated, beyond this host");
    }
    tokio::spawn(accept(listener, registry));
    Ok(bound)
}

async fn accept(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: pause rather than spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A client gone or too slow is the client's problem; nothing to log.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let mut body = String::with_capacity(16 * 1024);
    if prometheus_text::encode(&mut body, registry).is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    Response::builder()
        .header(http::header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
