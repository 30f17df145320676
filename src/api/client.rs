//! Opens gRPC channels to volmig services, and words transport and status
//! errors for an operator.
//!
//! Endpoints are `unix:///abs/path.sock` (a node on the same host),
//! `http://host:port` or `https://host:port` (mutual TLS with the configured
//! CA, its CRLs, certificate and key; these files are read at each connection,
//! so a rotated client certificate is used from the next one). The connection is made eagerly so
//! that a wrong address or a service that is not running is reported at once,
//! with a hint, rather than on the first call.
//!
//! A bearer token is a replayable credential, so it is never sent where it
//! could be read on the way: only over `https://`, a unix socket, or
//! plaintext to a loopback address (which never leaves the host; the CLI
//! talking to a local service). Components are stricter about their own
//! token (see [`encrypted_or_local`]).

use std::fmt;
use std::io;
use std::time::Duration;

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::api::tls::{self, TlsFiles};

mod token;
pub use token::{Token, TokenError, MIN_TOKEN_CHARS};

/// How long to wait for a TCP connection before reporting the peer unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Migration streams can be silent for a while (pivot, verify); HTTP/2 pings
/// notice a peer that died meanwhile instead of waiting forever.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which volmig service an endpoint is expected to serve; it only shapes the
/// messages, so the operator is told which service to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `volmig node`, the per-host service.
    Node,
    /// `volmig controller`, the cluster-wide service.
    Controller,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Node => "node",
            Peer::Controller => "controller",
        })
    }
}

/// Why a channel to a volmig service could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not one of the accepted forms.
    #[error("invalid {peer} endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The service the endpoint was meant for.
        peer: Peer,
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The service did not accept a connection.
    #[error("cannot connect to {peer} at {endpoint}: {cause}{}", connect_hint(*peer, *kind))]
    Connect {
        /// The service that was expected there.
        peer: Peer,
        /// The endpoint as given.
        endpoint: String,
        /// The innermost cause, e.g. "No such file or directory".
        cause: String,
        /// The I/O error kind of that cause, when it was an I/O error; chooses the hint.
        kind: Option<io::ErrorKind>,
    },
    /// `https://` without the CA, certificate and key to use.
    #[error("cannot connect to {peer} at {endpoint}: https:// needs a CA, a client certificate and its key (--ca, --cert, --key; tls_ca, tls_cert, tls_key in a config file)")]
    TlsNotConfigured {
        /// The service the endpoint was meant for.
        peer: Peer,
        /// The endpoint as given.
        endpoint: String,
    },
    /// A bearer token would travel in plaintext off this host.
    #[error("refusing to send the bearer token to {peer} at {endpoint} in plaintext: use https:// (a token goes only over https://, unix:// or http:// to a loopback address)")]
    PlaintextToken {
        /// The service the endpoint was meant for.
        peer: Peer,
        /// The endpoint as given.
        endpoint: String,
    },
    /// The TLS files or the token file could not be used.
    #[error("cannot connect to {peer} at {endpoint}: {reason}")]
    Credentials {
        /// The service the endpoint was meant for.
        peer: Peer,
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with them.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code that best describes this error, so the CLI can report
    /// local and remote failures in the same `CODE: message` form.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::InvalidEndpoint { .. } => tonic::Code::InvalidArgument,
            ClientError::Connect { .. } => tonic::Code::Unavailable,
            ClientError::TlsNotConfigured { .. }
            | ClientError::PlaintextToken { .. }
            | ClientError::Credentials { .. } => tonic::Code::InvalidArgument,
        }
    }
}

fn connect_hint(peer: Peer, kind: Option<io::ErrorKind>) -> String {
    match kind {
        Some(io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) | None => {
            format!(" — is `volmig {peer}` running?")
        }
        Some(io::ErrorKind::PermissionDenied) => {
            " — run as root or as a member of the socket's group".to_string()
        }
        Some(_) => String::new(),
    }
}

/// What a client presents: TLS material for `https://` endpoints, and
/// perhaps a bearer token for every call. `Debug` never shows the token.
#[derive(Clone, Default, Debug)]
pub struct Credentials {
    /// CA, certificate and key for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    token: Option<Token>,
}

impl Credentials {
    /// Credentials from TLS files and a token given as text (surrounding
    /// whitespace dropped; empty is none). Err when a header cannot carry it.
    pub fn new(tls: Option<TlsFiles>, token: Option<&str>) -> Result<Credentials, TokenError> {
        let token = match token {
            Some(t) => Token::fixed(t)?,
            None => None,
        };
        Ok(Credentials { tls, token })
    }

    /// Credentials with the token of `token_file`, if any: refused when the
    /// file is too open or its token too short, re-read when it changes
    /// (see [`Token::load`]).
    pub fn load(
        tls: Option<TlsFiles>,
        token_file: Option<&Path>,
    ) -> Result<Credentials, TokenError> {
        Ok(Credentials {
            tls,
            token: token_file.map(Token::load).transpose()?,
        })
    }

    /// Credentials of `tls` and `token`.
    pub fn from_parts(tls: Option<TlsFiles>, token: Option<Token>) -> Credentials {
        Credentials { tls, token }
    }

    /// The token presented, if any.
    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.header());
        }
        let metadata = req.metadata_mut();
        crate::telemetry::export::inject(|key, value| {
            // traceparent/tracestate are ASCII; anything else is dropped, not sent broken.
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                metadata.insert(key, value);
            }
        });
        Ok(req)
    }
}

/// Whether `endpoint` is reached over TLS or a unix socket: where a
/// component sends its own token. A component never sends it over
/// plaintext TCP, loopback included: its token outlives the call, and any
/// local user can listen on a loopback port the service is not holding.
pub fn encrypted_or_local(endpoint: &str) -> bool {
    endpoint.starts_with("https://") || endpoint.starts_with("unix://")
}

/// Whether a bearer token may be sent to `endpoint` at all: as
/// [`encrypted_or_local`], or `http://` to a loopback address.
fn token_may_go_to(endpoint: &str) -> bool {
    if encrypted_or_local(endpoint) {
        return true;
    }
    let Some(uri) = endpoint
        .strip_prefix("http://")
        .and_then(|_| endpoint.parse::<http::Uri>().ok())
    else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A channel whose calls carry the [`Credentials`]' token and the caller's
/// trace context.
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// Opens a channel to a volmig node without credentials (a unix socket or
/// plaintext TCP). See [`connect_to`].
pub async fn connect(endpoint: &str) -> Result<Channel, ClientError> {
    connect_to(Peer::Node, endpoint).await
}

/// Opens a channel without credentials to the volmig `peer` at `endpoint`:
/// `unix:///abs/path.sock` or `http://host:port` (`https://` needs
/// [`connect_with`]).
pub async fn connect_to(peer: Peer, endpoint: &str) -> Result<Channel, ClientError> {
    open(peer, endpoint, None).await
}

/// Opens a channel to the volmig `peer` at `endpoint` (`unix:///abs/path.sock`,
/// `http://host:port` or `https://host:port`) presenting `credentials`; a
/// token is refused for a plaintext endpoint off this host.
pub async fn connect_with(
    peer: Peer,
    endpoint: &str,
    credentials: &Credentials,
) -> Result<AuthChannel, ClientError> {
    if credentials.token.is_some() && !token_may_go_to(endpoint) {
        return Err(ClientError::PlaintextToken {
            peer,
            endpoint: endpoint.to_string(),
        });
    }
    let channel = open(peer, endpoint, credentials.tls.as_ref()).await?;
    Ok(InterceptedService::new(channel, credentials.clone()))
}

async fn open(peer: Peer, endpoint: &str, tls: Option<&TlsFiles>) -> Result<Channel, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        peer,
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let connect_failed = |err: tonic::transport::Error| {
        let (cause, kind) = root_cause(&err);
        ClientError::Connect {
            peer,
            endpoint: endpoint.to_string(),
            cause,
            kind,
        }
    };

    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "a unix socket endpoint needs an absolute path: unix:///path/to.sock",
            ));
        }
        let path = path.to_string();
        // The URI is never dialled; tonic needs one for the :authority header.
        let channel = configure(Endpoint::from_static("http://[::]:50051"))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(connect_failed)?;
        return Ok(channel);
    }
    let https = endpoint.starts_with("https://");
    if !https && !endpoint.starts_with("http://") {
        return Err(invalid(
            "expected unix:///path/to.sock, http://host:port or https://host:port",
        ));
    }
    if https {
        let files = tls.ok_or_else(|| ClientError::TlsNotConfigured {
            peer,
            endpoint: endpoint.to_string(),
        })?;
        let connector = tls::TlsConnector::new(files).map_err(|e| ClientError::Credentials {
            peer,
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
        // tonic's own TLS cannot check CRLs: the connector does the TLS, and
        // tonic speaks plain HTTP/2 over it.
        let inner = Endpoint::from_shared(endpoint.replacen("https://", "http://", 1))
            .map_err(|_| invalid("not a valid URI"))?;
        return configure(inner)
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(connect_failed);
    }
    let parsed =
        Endpoint::from_shared(endpoint.to_string()).map_err(|_| invalid("not a valid URI"))?;
    configure(parsed)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(connect_failed)
}

fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// The innermost error of a transport failure, which is the one an operator can
/// act on ("Connection refused"), without the "(os error N)" suffix.
fn root_cause(err: &tonic::transport::Error) -> (String, Option<io::ErrorKind>) {
    let mut inner: &dyn std::error::Error = err;
    while let Some(next) = inner.source() {
        inner = next;
    }
    match inner.downcast_ref::<io::Error>() {
        Some(io_err) => {
            let text = io_err.to_string();
            let text = match io_err.raw_os_error() {
                Some(errno) => text
                    .strip_suffix(&format!(" (os error {errno})"))
                    .map(str::to_string)
                    .unwrap_or(text),
                None => text,
            };
            (text, Some(io_err.kind()))
        }
        None => (inner.to_string(), None),
    }
}

/// The canonical name of a gRPC code, as in google.rpc.Code ("NOT_FOUND").
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status as an operator reads it: `CODE: message`, with tonic's description
/// of the code when the server sent no message.
pub fn status_message(status: &tonic::Status) -> String {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    format!("{}: {}", code_name(status.code()), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_message_names_the_code() {
        let status = tonic::Status::not_found("domain vm1 not found");
        assert_eq!(status_message(&status), "NOT_FOUND: domain vm1 not found");
    }

    #[test]
    fn status_message_without_text_uses_the_code_description() {
        let status = tonic::Status::new(tonic::Code::Unavailable, "");
        assert_eq!(
            status_message(&status),
            "UNAVAILABLE: The service is currently unavailable"
        );
    }

    #[test]
    fn code_name_round_trips_every_google_rpc_code() {
        assert_eq!(code_name(tonic::Code::from_i32(9)), "FAILED_PRECONDITION");
        assert_eq!(code_name(tonic::Code::from_i32(16)), "UNAUTHENTICATED");
    }

    #[tokio::test]
    async fn missing_unix_socket_says_which_service_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = format!("unix://{}/node.sock", dir.path().display());
        let err = connect(&endpoint).await.expect_err("no socket there");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to node at {endpoint}: No such file or directory — is `volmig node` running?"
            )
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn relative_unix_path_is_invalid() {
        let err = connect_to(Peer::Controller, "unix://run/x.sock")
            .await
            .expect_err("relative path");
        assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err}");
    }

    #[tokio::test]
    async fn https_needs_tls_files() {
        let err = connect("https://node1:7400").await.expect_err("no tls");
        assert!(matches!(err, ClientError::TlsNotConfigured { .. }), "{err}");
    }

    #[test]
    fn credentials_never_show_the_token() {
        let creds = Credentials::new(None, Some("s3cret\n")).expect("token");
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(Credentials::new(None, Some("bad\u{7f}token")).is_err());
    }

    #[tokio::test]
    async fn a_token_is_never_sent_in_plaintext_off_the_host() {
        let creds = Credentials::new(None, Some("s3cret")).expect("token");
        for endpoint in ["http://10.0.0.1:7451", "http://kvm1.example:7451"] {
            let err = connect_with(Peer::Node, endpoint, &creds)
                .await
                .expect_err("plaintext");
            assert!(matches!(err, ClientError::PlaintextToken { .. }), "{err}");
            assert!(err.to_string().contains("use https://"), "{err}");
        }
        // To a loopback address it may go: the endpoint is dialled (and
        // refused, nothing listening on a port just freed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        for endpoint in [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
            format!("http://[::1]:{port}"),
        ] {
            let err = connect_with(Peer::Node, &endpoint, &creds)
                .await
                .expect_err("nothing listens");
            assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        }
        assert!(encrypted_or_local("https://kvm1:7451") && encrypted_or_local("unix:///s"));
        assert!(!encrypted_or_local("http://127.0.0.1:7451"));
    }

    #[tokio::test]
    async fn unknown_scheme_is_invalid() {
        let err = connect("node1:7400").await.expect_err("no scheme");
        assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err}");
    }
}
