//! Who is calling, and whether that caller may make this call.
//!
//! A caller is identified by one of:
//! - the unix socket it came through: the socket's owner, group and mode are
//!   the authentication, so a local caller has every role;
//! - a bearer token (`authorization: Bearer …`), looked up by its SHA-256 in
//!   the configuration (constant-time comparison; the token itself is never
//!   stored or logged);
//! - the client certificate of a mutual-TLS connection, by a SAN (URI or DNS)
//!   or its subject CN, mapped to a role in the configuration.
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
//! lines name the identity).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::Status;

use crate::config::{GrantConfig, Role};

/// Metadata key in which the controller names, for the node's audit log, the
/// caller it acts for.
pub const CALLER_HEADER: &str = "x-volmig-caller";
/// Longest `x-volmig-caller` value kept (longer ones are cut).
const MAX_CALLER: usize = 256;

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
            | "ListMigrations" | "FindVolumeUsers" => Some(Need::Viewer),
            "MigrateVolume" | "CancelMigration" | "SetBandwidth" => Some(Need::Operator),
            _ => None,
        },
        "volmig.v1.Controller" => match method {
            "ListNodes" | "ListPools" | "PlanMigration" | "WatchMigration" | "GetMigration"
            | "ListMigrations" => Some(Need::Viewer),
            "MigrateVolume" | "CancelMigration" | "SetBandwidth" => Some(Need::Operator),
            "RegisterNode" => Some(Need::Node),
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
    #[error("{identity} ({role}) may not call {rpc}: it needs {need} role")]
    Denied {
        /// Who called.
        identity: String,
        /// `role viewer`, or `no role`.
        role: String,
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
}

/// Why the configured identities or tokens are unusable.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A token's hash is not 64 hex digits.
    #[error("token '{name}': sha256 must be 64 hex digits (`printf %s TOKEN | sha256sum`)")]
    BadHash {
        /// The token's name.
        name: String,
    },
    /// A node-role entry does not say which node.
    #[error("'{name}' has the node role but no node_id: which node may it register as?")]
    NodeWithoutId {
        /// The identity or token name.
        name: String,
    },
    /// An entry without a name.
    #[error("an identity or token has an empty name")]
    EmptyName,
}

struct TokenEntry {
    name: String,
    hash: [u8; 32],
    role: Role,
    node_id: Option<String>,
}

/// The identities and tokens a service accepts.
pub struct Policy {
    identities: Vec<GrantConfig>,
    tokens: Vec<TokenEntry>,
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn check_entry(entry: &GrantConfig) -> Result<(), PolicyError> {
    if entry.name.is_empty() {
        return Err(PolicyError::EmptyName);
    }
    if entry.role == Role::Node && entry.node_id.as_deref().is_none_or(str::is_empty) {
        return Err(PolicyError::NodeWithoutId {
            name: entry.name.clone(),
        });
    }
    Ok(())
}

impl Policy {
    /// A policy from the configuration's `identities` and `tokens`.
    pub fn new(identities: &[GrantConfig], tokens: &[GrantConfig]) -> Result<Policy, PolicyError> {
        for entry in identities.iter().chain(tokens) {
            check_entry(entry)?;
        }
        let tokens = tokens
            .iter()
            .map(|t| {
                let hash = t
                    .sha256
                    .as_deref()
                    .and_then(|h| unhex32(&h.to_ascii_lowercase()))
                    .ok_or_else(|| PolicyError::BadHash {
                        name: t.name.clone(),
                    })?;
                Ok(TokenEntry {
                    name: t.name.clone(),
                    hash,
                    role: t.role,
                    node_id: t.node_id.clone(),
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        Ok(Policy {
            identities: identities.to_vec(),
            tokens,
        })
    }

    /// Accepts no certificate identity and no token: only local callers.
    pub fn local_only() -> Policy {
        Policy {
            identities: Vec::new(),
            tokens: Vec::new(),
        }
    }

    fn by_token(&self, token: &str) -> Option<Caller> {
        let presented = sha256(token.as_bytes());
        // Compare with every entry, so the time does not tell which matched.
        let mut found = None;
        for entry in &self.tokens {
            if constant_time_eq(&presented, &entry.hash) && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|entry| Caller {
            identity: format!("token:{}", entry.name),
            grant: Grant::Role {
                role: entry.role,
                node_id: entry.node_id.clone(),
            },
            on_behalf_of: None,
        })
    }

    fn by_certificate(&self, leaf: &[u8]) -> Caller {
        let names = certificate_names(leaf);
        let matched = self
            .identities
            .iter()
            .find(|entry| names.contains(&entry.name));
        match matched {
            Some(entry) => Caller {
                identity: format!("cert:{}", entry.name),
                grant: Grant::Role {
                    role: entry.role,
                    node_id: entry.node_id.clone(),
                },
                on_behalf_of: None,
            },
            None => Caller {
                identity: format!(
                    "cert:{}",
                    names
                        .first()
                        .map(|n| n.escape_debug().to_string())
                        .unwrap_or_else(|| "(no name)".into())
                ),
                grant: Grant::Nothing,
                on_behalf_of: None,
            },
        }
    }

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
                    Grant::Role { role, .. } => format!("role {role}"),
                    _ => "no role".to_string(),
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

/// The names a certificate can be configured by: its SAN URIs and DNS names,
/// then its subject CNs. Empty when it does not parse (the TLS layer already
/// verified it, so that does not happen for a served connection).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => names.push(u.to_string()),
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_string());
        }
    }
    names
}

/// The tower layer that authorizes every request before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Arc<Policy>,
}

impl AuthLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Arc<Policy>) -> AuthLayer {
        AuthLayer { policy }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<Policy>,
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
        match self.policy.authorize(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The ready clone is the one to call; keep a fresh one for next time.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(err) => {
                let status = Status::from(err);
                let path = req.uri().path();
                let rpc = path.trim_start_matches('/').escape_debug().to_string();
                let code = crate::api::client::code_name(status.code());
                // Refused changes are part of the audit trail; refused reads
                // only at debug level, so a flood of them cannot fill the log.
                if matches!(need(path), Some(Need::Operator | Need::Node)) {
                    tracing::info!(target: "audit", identity = "(refused)", rpc = %rpc, code, reason = %status.message().escape_debug(), "audit");
                } else {
                    tracing::debug!(rpc = %rpc, code, "refused");
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests;
