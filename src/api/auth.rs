//! Who is calling, and whether that caller may make this call.
//!
//! A caller is identified by one of:
//! - the unix socket it came through: the socket's owner, group and mode are
//!   the authentication, so a local caller has every role;
//! - a bearer token (`authorization: Bearer …`), looked up by its SHA-256 in
//!   the configuration (constant-time comparison; the token itself is never
//!   stored or logged);
//! - the client certificate of a mutual-TLS connection, by its SAN URIs,
//!   then its SAN DNS names, each only against identities of that type, and
//!   its subject CN only when it has no SANs ([`policy`]).
//!
//! A token, when present, decides; otherwise the certificate does. Each RPC
//! needs a role ([`need`]); the table is complete for `volmig.v1` (a unit test
//! checks it against the descriptors), and an RPC missing from it is refused
//! to everyone but local callers, so a new RPC is closed until it is listed.
//! Health, reflection and Identity are open to anyone who can connect.
//!
//! The check runs as a tower layer in front of every service, so no handler
//! can forget it; the [`Caller`] it found is put into the request's extensions
//! for the handlers that need more (RegisterNode binds the node id, audit
//! lines name the identity). Failed authentications are counted per source
//! address and throttled ([`throttle`]); refusals are logged with the peer,
//! the identity presented, the RPC and the reason, unauthenticated ones at a
//! bounded rate ([`refusals`]).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::Status;

use crate::config::Role;

mod policy;
mod refusals;
pub mod reload;
mod throttle;

pub use policy::{certificate_names, CertificateNames, Policy, PolicyError, SharedPolicy};
pub use throttle::Clock;
use throttle::Throttle;

/// Metadata key in which the controller names, for the node's audit log, the
/// caller it acts for.
pub const CALLER_HEADER: &str = "x-volmig-caller";
/// Longest `x-volmig-caller` value kept (longer ones are cut).
const MAX_CALLER: usize = 256;
/// Longest certificate name kept for logs and messages.
const MAX_NAME: usize = 128;

/// `name` cut to [`MAX_NAME`] characters and escaped, for logs and messages.
fn bounded(name: &str) -> String {
    let mut out = name
        .chars()
        .take(MAX_NAME)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().count() > MAX_NAME {
        out.push('…');
    }
    out
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone who can connect (health, reflection, Identity).
    Open,
    /// Reads: the viewer or operator role.
    Viewer,
    /// Changes to migrations: the operator role.
    Operator,
    /// A node's registration: the node role (bound to that node id).
    Node,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Open => "no",
            Need::Viewer => "the viewer (or operator)",
            Need::Operator => "the operator",
            Need::Node => "the node",
        })
    }
}

/// What the RPC at `path` (`/package.Service/Method`) needs; `None` for an RPC
/// this table does not know.
pub fn need(path: &str) -> Option<Need> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection"
        | "volmig.v1.Identity" => Some(Need::Open),
        "volmig.v1.Node" => match method {
            "GetInfo" | "ListPools" | "ListDisks" | "WatchMigration" | "GetMigration"
            | "ListMigrations" | "FindVolumeUsers" | "ListPoolVolumes" => Some(Need::Viewer),
            "MigrateVolume" | "CancelMigration" | "SetBandwidth" => Some(Need::Operator),
            _ => None,
        },
        "volmig.v1.Controller" => match method {
            "ListNodes" | "ListPools" | "PlanMigration" | "WatchMigration" | "GetMigration"
            | "ListMigrations" => Some(Need::Viewer),
            "MigrateVolume" | "CancelMigration" | "SetBandwidth" | "SetPoolMaintenance" => {
                Some(Need::Operator)
            }
            "RegisterNode" => Some(Need::Node),
            _ => None,
        },
        "volmig.v1.Fleet" => match method {
            "PlanDrain" | "WatchDrain" | "GetDrain" | "ListDrains" => Some(Need::Viewer),
            "StartDrain" | "CancelDrain" => Some(Need::Operator),
            _ => None,
        },
        _ => None,
    }
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A local caller on the unix socket: everything.
    All,
    /// A configured identity or token.
    Role {
        /// Its role.
        role: Role,
        /// For the node role: the node id it may register as.
        node_id: Option<String>,
    },
    /// A verified certificate that the configuration gives no role.
    Nothing,
}

/// An authenticated caller, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How it is named in logs: `unix:uid=0`, `cert:kvm1.example`, `token:ci`.
    pub identity: String,
    /// What it may do.
    pub grant: Grant,
    /// Whom it says it acts for (`x-volmig-caller`, set by the controller);
    /// for audit lines only, never for decisions.
    pub on_behalf_of: Option<String>,
}

impl Caller {
    /// A local caller (unix socket); also what in-process tests use.
    pub fn local(identity: impl Into<String>) -> Caller {
        Caller {
            identity: identity.into(),
            grant: Grant::All,
            on_behalf_of: None,
        }
    }

    /// The caller of a request that went through the [`AuthLayer`]; none
    /// otherwise (then every check that needs one refuses).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }

    /// Whether this caller may register as node `node_id`.
    pub fn may_register(&self, node_id: &str) -> bool {
        match &self.grant {
            Grant::All => true,
            Grant::Role {
                role: Role::Node,
                node_id: Some(bound),
            } => bound == node_id,
            _ => false,
        }
    }

    /// Whether the caller came through the local unix socket.
    pub fn is_local(&self) -> bool {
        self.grant == Grant::All
    }

    /// The identity for audit lines: `identity`, plus whom it acts for.
    pub fn audit_name(&self) -> String {
        match &self.on_behalf_of {
            Some(other) => format!("{} for {}", self.identity, other),
            None => self.identity.clone(),
        }
    }

    fn allows(&self, need: Need) -> bool {
        match (&self.grant, need) {
            (_, Need::Open) | (Grant::All, _) => true,
            (Grant::Role { role, .. }, Need::Viewer) => {
                matches!(role, Role::Viewer | Role::Operator)
            }
            (Grant::Role { role, .. }, Need::Operator) => *role == Role::Operator,
            (Grant::Role { role, .. }, Need::Node) => *role == Role::Node,
            (Grant::Nothing, _) => false,
        }
    }
}

/// Why a call is refused; [`crate::api::status`] turns it into a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate.
    #[error("this call needs credentials: a client certificate (mutual TLS) or an `authorization: Bearer` token")]
    NoCredentials,
    /// An `authorization` header that is not `Bearer TOKEN`.
    #[error("the authorization header must be `Bearer TOKEN`")]
    BadHeader,
    /// A token no configured hash matches.
    #[error("the bearer token is not one this service accepts")]
    UnknownToken,
    /// The caller's role does not allow the call.
    #[error("{identity} ({}) may not call {rpc}: it needs {need} role", role.map_or("no role".to_string(), |r| format!("role {r}")))]
    Denied {
        /// Who called.
        identity: String,
        /// Its role; none for a certificate the configuration does not know.
        role: Option<Role>,
        /// The RPC, escaped.
        rpc: String,
        /// What it needs.
        need: Need,
    },
    /// An RPC missing from the table.
    #[error("{identity} may not call {rpc}: no role may call it")]
    NoRule {
        /// Who called.
        identity: String,
        /// The RPC, escaped.
        rpc: String,
    },
    /// Too many failed authentications from the caller's address.
    #[error("too many failed authentications from {addr} (more than {limit} a minute): its calls are refused unchecked; retry in {retry_after_secs} s with valid credentials")]
    Throttled {
        /// The source address.
        addr: IpAddr,
        /// `max_auth_failures_per_minute`.
        limit: u32,
        /// Seconds until the address's minute is over.
        retry_after_secs: u64,
    },
}

impl AuthError {
    /// Whether the caller failed to authenticate (as opposed to an identified
    /// caller lacking the role): what the throttle counts and the log limits.
    fn is_unauthenticated(&self) -> bool {
        match self {
            AuthError::NoCredentials
            | AuthError::BadHeader
            | AuthError::UnknownToken
            | AuthError::Throttled { .. } => true,
            AuthError::Denied { role, .. } => role.is_none(),
            AuthError::NoRule { .. } => false,
        }
    }

    /// The metric label of an unauthenticated refusal.
    fn reason_label(&self) -> &'static str {
        match self {
            AuthError::NoCredentials => "no_credentials",
            AuthError::BadHeader => "bad_header",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Throttled { .. } => "throttled",
            AuthError::Denied { .. } => "no_role",
            AuthError::NoRule { .. } => "no_rule",
        }
    }

    /// The identity the caller presented, for logs.
    fn presented(&self) -> &str {
        match self {
            AuthError::Denied { identity, .. } | AuthError::NoRule { identity, .. } => identity,
            AuthError::UnknownToken => "token:(unknown)",
            AuthError::BadHeader => "token:(malformed header)",
            AuthError::NoCredentials | AuthError::Throttled { .. } => "none",
        }
    }
}

impl Policy {
    /// Who sent `req`, and whether it may call the RPC at its path.
    pub fn authorize<B>(&self, req: &http::Request<B>) -> Result<Caller, AuthError> {
        let path = req.uri().path();
        let need = need(path);
        if need == Some(Need::Open) {
            return Ok(Caller {
                identity: "anyone".into(),
                grant: Grant::Nothing,
                on_behalf_of: None,
            });
        }
        let mut caller = self.identify(req)?;
        caller.on_behalf_of = req
            .headers()
            .get(CALLER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .take(MAX_CALLER)
                    .collect::<String>()
                    .escape_debug()
                    .to_string()
            });
        let rpc = path.trim_start_matches('/');
        match need {
            Some(need) if caller.allows(need) => Ok(caller),
            _ if caller.is_local() => Ok(caller),
            None => Err(AuthError::NoRule {
                identity: caller.identity,
                rpc: rpc.escape_debug().to_string(),
            }),
            Some(need) => Err(AuthError::Denied {
                role: match &caller.grant {
                    Grant::Role { role, .. } => Some(*role),
                    _ => None,
                },
                identity: caller.identity,
                rpc: rpc.escape_debug().to_string(),
                need,
            }),
        }
    }

    fn identify<B>(&self, req: &http::Request<B>) -> Result<Caller, AuthError> {
        let ext = req.extensions();
        if let Some(uds) = ext.get::<UdsConnectInfo>() {
            let identity = match &uds.peer_cred {
                Some(cred) => format!("unix:uid={}", cred.uid()),
                None => "unix".to_string(),
            };
            return Ok(Caller::local(identity));
        }
        if let Some(value) = req.headers().get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .ok_or(AuthError::BadHeader)?;
            return self.by_token(token).ok_or(AuthError::UnknownToken);
        }
        let leaf = ext
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|tls| tls.peer_certs())
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        match leaf {
            Some(leaf) => Ok(self.by_certificate(&leaf)),
            None => Err(AuthError::NoCredentials),
        }
    }
}

/// Where a request came from: its TCP peer, or none for the unix socket.
fn peer_addr<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// What the layer keeps across calls and policy reloads: the failure
/// counts and the log's rate limit.
struct Guard {
    throttle: Throttle,
    log: refusals::RateLimit,
}

impl Guard {
    /// Throttles at `max_failures_per_minute` (0: never), on `clock`.
    fn new(max_failures_per_minute: u32, clock: Clock) -> Guard {
        Guard {
            throttle: Throttle::with_clock(max_failures_per_minute, clock.clone()),
            log: refusals::RateLimit::new(clock),
        }
    }

    /// Authorizes `req` under `policy`: refuses a throttled address before
    /// looking at its credentials, and counts and logs each refusal.
    fn check<B>(&self, policy: &Policy, req: &http::Request<B>) -> Result<Caller, Status> {
        let path = req.uri().path();
        let peer = peer_addr(req);
        let ip = peer.map(|p| p.ip());
        let open = need(path) == Some(Need::Open);
        let throttled = match ip {
            Some(addr) if !open => self
                .throttle
                .blocked(addr)
                .map(|left| AuthError::Throttled {
                    addr,
                    limit: self.throttle.limit(),
                    // Rounded up: retrying at the time said must succeed.
                    retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                }),
            _ => None,
        };
        let err = match throttled {
            Some(err) => err,
            None => match policy.authorize(req) {
                Ok(caller) => return Ok(caller),
                Err(err) => err,
            },
        };
        let unauthenticated = err.is_unauthenticated();
        if unauthenticated {
            if let (Some(addr), false) = (ip, matches!(err, AuthError::Throttled { .. })) {
                self.throttle.failed(addr);
            }
            crate::metrics::auth_refused(err.reason_label());
        }
        let identity = err.presented().to_string();
        let status = Status::from(err);
        let rpc = bounded(path.trim_start_matches('/'));
        let peer = peer.map_or_else(|| "unix".to_string(), |p| p.to_string());
        let reason = crate::api::audit::clean(status.message());
        let refusal = refusals::Refusal {
            peer: &peer,
            identity: &identity,
            rpc: &rpc,
            code: crate::api::client::code_name(status.code()),
            reason: &reason,
        };
        if unauthenticated {
            if let Some(suppressed) = self.log.admit(ip) {
                refusal.unauthenticated(suppressed);
            }
        } else if matches!(need(path), Some(Need::Operator | Need::Node)) {
            // Refused changes by identified callers are part of the audit trail.
            refusal.audit();
        } else {
            tracing::debug!(
                peer = peer.as_str(),
                identity = identity.as_str(),
                rpc = rpc.as_str(),
                "refused"
            );
        }
        Err(status)
    }
}

/// The tower layer that authorizes every request before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    policy: SharedPolicy,
    guard: Arc<Guard>,
}

impl AuthLayer {
    /// A layer enforcing the policy in force in `policy`, throttling
    /// addresses past `max_failures_per_minute` failed authentications.
    pub fn new(policy: SharedPolicy) -> AuthLayer {
        let guard = Guard::new(
            policy.max_failures_per_minute(),
            Arc::new(std::time::Instant::now),
        );
        AuthLayer {
            policy,
            guard: Arc::new(guard),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
            guard: self.guard.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: SharedPolicy,
    guard: Arc<Guard>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.guard.check(&self.policy.current(), &req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The ready clone is the one to call; keep a fresh one for next time.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests;
