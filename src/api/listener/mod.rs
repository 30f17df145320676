//! Accepting connections within bounds, so that peers who never
//! authenticate, or authenticate and then do nothing, cannot crowd out the
//! callers who do:
//!
//! - TLS handshakes have their own places, outside the established
//!   connections' (`max_handshakes`, `max_handshakes_per_peer`), and their
//!   own short deadline (`handshake_timeout_seconds`). When every handshake
//!   place is taken, the next connection waits in the kernel's backlog; one
//!   over its source address's share is closed at once.
//! - A connection takes one of `max_connections` places, and one of its
//!   source address's `max_connections_per_peer`, only once its handshake
//!   succeeded; over either, it is closed at once.
//! - Established connections are ended when idle or too old ([`conn`]).
//!
//! Refusals are logged at debug level only (a flood must not fill the log)
//! and counted in `volmig_connections_closed_total`, by reason.
//! Plaintext TCP (loopback, the health listener) has no handshake: its
//! connections are established when accepted. Unix socket connections are
//! bounded in number only; the socket's mode decides who can open them.

mod conn;
mod peers;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ConnectionConfig;

use conn::Places;
pub use conn::{CallsLayer, Lifetime, Lifetimes, Limited};
use peers::{peer_key, PeerCounts};

/// The bounds of one TCP listener.
#[derive(Clone)]
pub struct Limits {
    /// Most established connections at once.
    pub max_connections: usize,
    /// Most established connections at once from one source address.
    pub max_connections_per_peer: usize,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Most TLS handshakes in progress at once from one source address.
    pub max_handshakes_per_peer: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long established connections live, and their calls.
    pub lifetimes: Lifetimes,
}

/// A number of seconds, 0 meaning never.
fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

impl Limits {
    /// The main listener's bounds: `max_connections` and the `[connections]` table.
    pub fn new(max_connections: usize, config: &ConnectionConfig) -> Limits {
        Limits {
            max_connections,
            max_connections_per_peer: config.max_connections_per_peer,
            max_handshakes: config.max_handshakes,
            max_handshakes_per_peer: config.max_handshakes_per_peer,
            handshake_timeout: handshake_timeout(config),
            lifetimes: Lifetimes::new(Lifetime {
                idle: seconds(config.idle_timeout_seconds),
                max_age: seconds(config.max_age_seconds),
                max_age_grace: Duration::from_secs(config.max_age_grace_seconds),
            }),
        }
    }

    /// The health listener's bounds. A probe connects, asks once and leaves,
    /// and nothing authenticates there: each source address gets only as
    /// many connections as handshakes on the main listener, and a connection
    /// without a call for the handshake deadline is closed (sooner than
    /// `idle_timeout_seconds` when that is longer).
    pub fn health(config: &ConnectionConfig) -> Limits {
        let quick = handshake_timeout(config);
        let idle = seconds(config.idle_timeout_seconds).map_or(quick, |idle| idle.min(quick));
        Limits {
            max_connections: MAX_HEALTH_CONNECTIONS,
            max_connections_per_peer: config.max_handshakes_per_peer,
            // Plaintext: no handshake, these two bound nothing there.
            max_handshakes: 0,
            max_handshakes_per_peer: 0,
            handshake_timeout: quick,
            lifetimes: Lifetimes::new(Lifetime {
                idle: Some(idle),
                max_age: seconds(config.max_age_seconds),
                max_age_grace: Duration::from_secs(config.max_age_grace_seconds),
            }),
        }
    }
}

/// A handshake deadline of 0 would refuse every client: at least a second.
fn handshake_timeout(config: &ConnectionConfig) -> Duration {
    Duration::from_secs(config.handshake_timeout_seconds.max(1))
}

/// Connections open at once on the health listener: probes, and whoever
/// else can reach it, each source address held to its share.
const MAX_HEALTH_CONNECTIONS: usize = 256;

/// The established places of a listener: in all, and per source address.
#[derive(Clone)]
struct Established {
    places: Arc<Semaphore>,
    per_peer: PeerCounts,
}

impl Established {
    fn new(limits: &Limits) -> Established {
        Established {
            places: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_peer: PeerCounts::new(limits.max_connections_per_peer),
        }
    }

    /// The source address's place, and a listener place if `total` is not
    /// given yet; `None` (logged) when either is full.
    fn take(
        &self,
        peer: SocketAddr,
        total: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Option<Places> {
        let Some(peer_slot) = self.per_peer.try_take(peer_key(peer)) else {
            refused(
                peer,
                "connections_per_peer",
                "too many connections from this address (max_connections_per_peer)",
            );
            return None;
        };
        let total = match total {
            Some(total) => total,
            None => match self.places.clone().try_acquire_owned() {
                Ok(total) => total,
                Err(_) => {
                    refused(
                        peer,
                        "max_connections",
                        "every connection place is taken (max_connections)",
                    );
                    return None;
                }
            },
        };
        Some(Places {
            _total: Some(total),
            _peer: Some(peer_slot),
        })
    }
}

/// A connection refused by a bound: logged at debug level, counted under
/// `metric` in `volmig_connections_closed_total`.
fn refused(peer: SocketAddr, metric: &'static str, why: &str) {
    crate::metrics::connection_closed(metric);
    tracing::debug!(%peer, reason = why, "connection refused");
}

/// The next TCP connection; `None` after a failed accept (logged, and
/// backed off so that EMFILE and the like do not spin).
async fn accept_tcp(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            // gRPC messages are small and latency-bound.
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

type Incoming<T> = ReceiverStream<Result<T, io::Error>>;

/// Plaintext TCP connections within `limits` (no handshake: established
/// when accepted). When every place is taken, the next waits in the backlog.
pub fn tcp(listener: TcpListener, limits: Limits) -> Incoming<Limited<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    let established = Established::new(&limits);
    tokio::spawn(async move {
        loop {
            let Ok(place) = established.places.clone().acquire_owned().await else {
                return;
            };
            let Some((stream, peer)) = accept_tcp(&listener).await else {
                continue;
            };
            let Some(places) = established.take(peer, Some(place)) else {
                continue;
            };
            let watchdog = limits.lifetimes.watchdog(peer);
            if tx
                .send(Ok(Limited::new(stream, places, watchdog)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Unix socket connections, at most `max_connections` at once (the next
/// waits in the backlog).
pub fn unix(listener: UnixListener, max_connections: usize) -> Incoming<Limited<UnixStream>> {
    let (tx, rx) = mpsc::channel(64);
    let places = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let places = Places {
                _total: Some(place),
                _peer: None,
            };
            if tx
                .send(Ok(Limited::new(stream, places, None)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// TLS connections whose handshake succeeded, within `limits`. Failed
/// handshakes (plaintext clients, unknown CAs, expired certificates, the
/// deadline) are logged at debug level and dropped.
pub fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> Incoming<TlsStream<Limited<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let handshakes_per_peer = PeerCounts::new(limits.max_handshakes_per_peer);
    let established = Established::new(&limits);
    tokio::spawn(async move {
        loop {
            let Ok(handshake) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let Some((stream, peer)) = accept_tcp(&listener).await else {
                continue;
            };
            if tx.is_closed() {
                return;
            }
            let Some(peer_handshake) = handshakes_per_peer.try_take(peer_key(peer)) else {
                refused(
                    peer,
                    "handshakes_per_peer",
                    "too many handshakes in progress from this address (max_handshakes_per_peer)",
                );
                continue;
            };
            let conn = Limited::new(
                stream,
                Places {
                    _total: Some(handshake),
                    _peer: Some(peer_handshake),
                },
                None,
            );
            let acceptor = acceptor.clone();
            let established = established.clone();
            let lifetimes = limits.lifetimes.clone();
            let deadline = limits.handshake_timeout;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = match tokio::time::timeout(deadline, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        return handshake_failed(peer, "handshake_failed", &e.to_string())
                    }
                    Err(_) => {
                        return handshake_failed(
                            peer,
                            "handshake_timeout",
                            "timed out (handshake_timeout_seconds)",
                        )
                    }
                };
                let Some(places) = established.take(peer, None) else {
                    return;
                };
                stream
                    .get_mut()
                    .0
                    .establish(places, lifetimes.watchdog(peer));
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

fn handshake_failed(peer: SocketAddr, metric: &'static str, why: &str) {
    crate::metrics::connection_closed(metric);
    tracing::debug!(%peer, error = %why.escape_debug(), "TLS handshake failed");
}

#[cfg(test)]
mod tests;
