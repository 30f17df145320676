//! An accepted connection: the places it holds, and the watchdog that ends
//! it when it has been idle too long or has lived too long.
//!
//! "Idle" means no call in progress, not no bytes: HTTP/2 keepalive pings go
//! on over a connection nobody uses. Calls are counted by [`CallsLayer`], a
//! tower layer that finds the connection's [`Activity`] by the peer address
//! tonic puts in every request's extensions (the address is unique among a
//! listener's open connections), and holds an [`InFlight`] until the
//! response body ends or is dropped (streaming responses included).
//!
//! The watchdog lives in the connection's IO ([`Limited`]): hyper always has
//! a read (and, when blocked, a flush) pending on it, so polling a timer
//! there is enough to end the connection at the right moment, by failing
//! its reads and writes. A connection past its maximum age and with no call
//! in progress is closed gracefully (GOAWAY) by tonic's `max_connection_age`;
//! the watchdog closes one that is still open a moment later with no call in
//! progress (a peer that never spoke HTTP/2), and any `max_age_grace` later.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use super::peers::PeerSlot;

/// How long a connection may live: idle, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Closed after this long with no call in progress.
    pub idle: Option<Duration>,
    /// Closed gracefully after this long (once no call is in progress).
    pub max_age: Option<Duration>,
    /// Closed under its calls this long after `max_age`.
    pub max_age_grace: Duration,
}

impl Lifetime {
    fn is_bounded(&self) -> bool {
        self.idle.is_some() || self.max_age.is_some()
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No call in progress for the idle timeout.
    Idle,
    /// Past its maximum age with no call in progress, or past the grace
    /// after it.
    MaxAge,
}

impl Reason {
    /// The reason's label in `volmig_connections_closed_total`.
    fn metric(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::MaxAge => "max_age",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle for idle_timeout_seconds",
            Reason::MaxAge => "open for max_age_seconds (and its calls for max_age_grace_seconds)",
        }
    }
}

/// What the watchdog decides when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Close the connection.
    Close(Reason),
    /// Keep it; look again at this instant (`None`: never).
    CheckAt(Option<Instant>),
}

/// How long after its maximum age the watchdog closes a connection with
/// no call in progress: tonic's GOAWAY closes a well-behaved client's
/// connection first, without failing a request already on the wire; this
/// catches the rest (a peer that never finished the HTTP/2 preface).
const GOAWAY_HEADSTART: Duration = Duration::from_secs(1);

/// How often an old connection still carrying calls is looked at, to close
/// it soon after its last call ends.
const OLD_RECHECK: Duration = Duration::from_secs(1);

/// The decision, from the connection's state at `now`.
pub fn verdict(
    now: Instant,
    established: Instant,
    last_active: Instant,
    in_flight: usize,
    lifetime: Lifetime,
) -> Verdict {
    let forced = lifetime
        .max_age
        .map(|age| established + age + lifetime.max_age_grace);
    if forced.is_some_and(|at| now >= at) {
        return Verdict::Close(Reason::MaxAge);
    }
    let old = lifetime
        .max_age
        .zip(forced)
        .map(|(age, forced)| (established + age + GOAWAY_HEADSTART).min(forced));
    let old_check = match old {
        Some(at) if now >= at => {
            if in_flight == 0 {
                return Verdict::Close(Reason::MaxAge);
            }
            Some(now + OLD_RECHECK)
        }
        other => other,
    };
    // A call in progress is activity until it ends; look again one timeout
    // from now, by when it has ended (and set `last_active`) or is still on.
    let idle_at = lifetime.idle.map(|idle| {
        if in_flight > 0 {
            now + idle
        } else {
            last_active + idle
        }
    });
    if idle_at.is_some_and(|at| now >= at) {
        return Verdict::Close(Reason::Idle);
    }
    Verdict::CheckAt([forced, old_check, idle_at].into_iter().flatten().min())
}

/// The calls of one connection: how many are in progress, and when the last
/// one ended.
pub struct Activity {
    established: Instant,
    in_flight: AtomicUsize,
    /// When the last call ended, in milliseconds after `established`.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            established: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// A call starts; it is in progress until the returned value is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn verdict(&self, now: Instant, lifetime: Lifetime) -> Verdict {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        let last_active =
            self.established + Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst));
        verdict(now, self.established, last_active, in_flight, lifetime)
    }
}

/// A call in progress on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = Instant::now().saturating_duration_since(self.0.established);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        // The end time first: a watchdog that sees no call in progress must
        // also see when the last one ended.
        self.0.last_end_ms.fetch_max(ms, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections of one server, by peer address, and how long they
/// may live. The same value goes to the listener (which registers each
/// connection) and to the server's [`CallsLayer`] (which counts its calls).
#[derive(Clone)]
pub struct Lifetimes {
    open: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
    lifetime: Lifetime,
}

impl Lifetimes {
    /// Connections held to `lifetime`.
    pub fn new(lifetime: Lifetime) -> Lifetimes {
        Lifetimes {
            open: Arc::new(Mutex::new(HashMap::new())),
            lifetime,
        }
    }

    /// The limits.
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    /// The layer counting the calls of these connections.
    pub fn layer(&self) -> CallsLayer {
        CallsLayer {
            lifetimes: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        // Every change is one insert or remove: a panic cannot leave it half-done.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watchdog for the connection from `peer`, established now (`None`
    /// when connections live for ever).
    pub(super) fn watchdog(&self, peer: SocketAddr) -> Option<Watchdog> {
        if !self.lifetime.is_bounded() {
            return None;
        }
        let activity = Arc::new(Activity::new());
        self.lock().insert(peer, activity.clone());
        Some(Watchdog {
            timer: Box::pin(tokio::time::sleep_until(activity.established)),
            activity,
            lifetimes: self.clone(),
            peer,
            closed: None,
        })
    }

    fn activity(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        self.lock().get(&peer).cloned()
    }
}

/// Ends its connection when the [`verdict`] says so.
pub(super) struct Watchdog {
    activity: Arc<Activity>,
    lifetimes: Lifetimes,
    timer: Pin<Box<Sleep>>,
    peer: SocketAddr,
    closed: Option<Reason>,
}

impl Watchdog {
    /// Why the connection is closed, once it is; until then, `cx` is woken
    /// when it is time to look again.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Option<Reason> {
        if self.closed.is_some() {
            return self.closed;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            match self
                .activity
                .verdict(Instant::now(), self.lifetimes.lifetime)
            {
                Verdict::Close(reason) => {
                    crate::metrics::connection_closed(reason.metric());
                    tracing::debug!(peer = %self.peer, reason = reason.as_str(), "closing connection");
                    self.closed = Some(reason);
                    return self.closed;
                }
                Verdict::CheckAt(Some(at)) => self.timer.as_mut().reset(at),
                Verdict::CheckAt(None) => break,
            }
        }
        None
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let mut open = self.lifetimes.lock();
        // The address may already name a newer connection.
        if open
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            open.remove(&self.peer);
        }
    }
}

/// What a connection holds while it is open: a place of its listener and one
/// of its source address (during its handshake, the handshake's places).
pub struct Places {
    pub(super) _total: Option<OwnedSemaphorePermit>,
    pub(super) _peer: Option<PeerSlot>,
}

/// A connection holding its places until it is dropped, and ended by its
/// watchdog.
pub struct Limited<T> {
    pub(super) inner: T,
    places: Places,
    watchdog: Option<Watchdog>,
}

impl<T> Limited<T> {
    pub(super) fn new(inner: T, places: Places, watchdog: Option<Watchdog>) -> Limited<T> {
        Limited {
            inner,
            places,
            watchdog,
        }
    }

    /// The handshake is over: trade its places for an established
    /// connection's (freeing the handshake's at once) and start the watchdog.
    pub(super) fn establish(&mut self, places: Places, watchdog: Option<Watchdog>) {
        self.places = places;
        self.watchdog = watchdog;
    }

    fn closed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let reason = self.watchdog.as_mut()?.poll_closed(cx)?;
        Some(io::Error::new(io::ErrorKind::TimedOut, reason.as_str()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A peer that stops reading leaves hyper waiting here, not in a read.
        let this = self.get_mut();
        if let Some(e) = this.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection info is the wrapped connection's, so the authorization
/// layer sees a TCP, TLS or unix peer exactly as without the limit.
impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Counts the calls in progress on each connection of a [`Lifetimes`].
#[derive(Clone)]
pub struct CallsLayer {
    lifetimes: Lifetimes,
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls {
            inner,
            lifetimes: self.lifetimes.clone(),
        }
    }
}

/// The service of [`CallsLayer`].
#[derive(Clone)]
pub struct CountCalls<S> {
    inner: S,
    lifetimes: Lifetimes,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = remote_addr(&req)
            .and_then(|peer| self.lifetimes.activity(peer))
            .map(|activity| activity.begin());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match call {
                // The call lasts until its body is over (or dropped).
                Some(call) => response.map(|body| {
                    tonic::body::Body::new(body.map_frame(move |frame| {
                        let _in_flight = &call;
                        frame
                    }))
                }),
                None => response,
            })
        })
    }
}

/// The peer address tonic put in the request (TLS or plaintext TCP).
fn remote_addr<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|tls| tls.get_ref().remote_addr())
        .or_else(|| {
            ext.get::<TcpConnectInfo>()
                .and_then(|tcp| tcp.remote_addr())
        })
}

#[cfg(test)]
mod tests;
