//! Accepting connections within bounds: at most `max_connections` open at
//! once per listener (the next is accepted when one closes, so excess
//! clients wait in the kernel's backlog instead of costing memory), and for
//! TLS, handshakes run in their own tasks, each bounded by a timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that holds one of its listener's places until it is dropped.
pub struct Limited<T> {
    inner: T,
    _place: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// A listener whose connections can be accepted one by one.
trait Accept: Send + Sync + 'static {
    type Stream: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        // gRPC messages are small and latency-bound.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts connections while a place is free, handing each (with its place)
/// to `ready`, which forwards it (or drops it) on `tx`.
fn accept_loop<L, T, F, Fut>(
    listener: L,
    max_connections: usize,
    ready: F,
) -> ReceiverStream<Result<T, io::Error>>
where
    L: Accept,
    T: Send + 'static,
    F: Fn(Limited<L::Stream>, tokio::sync::mpsc::Sender<Result<T, io::Error>>) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let places = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept_one().await {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let conn = Limited {
                inner: stream,
                _place: place,
            };
            tokio::spawn(ready(conn, tx.clone()));
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext TCP connections, at most `max_connections` at once.
pub fn tcp(
    listener: TcpListener,
    max_connections: usize,
) -> ReceiverStream<Result<Limited<TcpStream>, io::Error>> {
    accept_loop(listener, max_connections, |conn, tx| async move {
        let _ = tx.send(Ok(conn)).await;
    })
}

/// Unix socket connections, at most `max_connections` at once.
pub fn unix(
    listener: UnixListener,
    max_connections: usize,
) -> ReceiverStream<Result<Limited<UnixStream>, io::Error>> {
    accept_loop(listener, max_connections, |conn, tx| async move {
        let _ = tx.send(Ok(conn)).await;
    })
}

/// TLS connections whose handshake succeeded, at most `max_connections` at
/// once (handshakes included). Failed handshakes (plaintext clients, unknown
/// CAs, expired certificates) are logged at debug level and dropped.
pub fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_connections: usize,
) -> ReceiverStream<Result<TlsStream<Limited<TcpStream>>, io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    accept_loop(listener, max_connections, move |conn, tx| {
        let acceptor = acceptor.clone();
        async move {
            let peer = conn.inner.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => handshake_failed(peer, &e.to_string()),
                Err(_) => handshake_failed(peer, "timed out"),
            }
        }
    })
}

fn handshake_failed(peer: Option<std::net::SocketAddr>, why: &str) {
    tracing::debug!(peer = ?peer, error = %why.escape_debug(), "TLS handshake failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut accepted = tcp(listener, 2);
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let first = accepted.next().await.expect("first").expect("ok");
        let _second = accepted.next().await.expect("second").expect("ok");
        let third = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted over a limit of 2"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(
            matches!(third, Ok(Some(Ok(_)))),
            "the third connection was not accepted after one closed"
        );
    }
}
