//! The identities and tokens a service accepts, and how a caller's
//! credentials are matched against them.
//!
//! Certificate identities are typed, so that one kind of name can never pass
//! for another: a `uri` identity matches only a SAN URI, a `dns` identity
//! only a SAN DNS name, and a `cn` identity only the subject CN of a
//! certificate that has no SANs at all. A CA that issues SAN certificates
//! usually lets the requester choose the CN freely; trusting the CN of such a
//! certificate would let `CN=operator.example, DNS:viewer.example` be the
//! operator.
//!
//! The policy in force is shared ([`SharedPolicy`]) so a reloaded
//! configuration replaces it for the next call without touching open
//! connections.

use std::sync::{Arc, RwLock};

use crate::config::{GrantConfig, Role};

use super::{Caller, Grant};

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
    /// A token without a name.
    #[error("a [[tokens]] entry has no name: give it `name = \"…\"` (how logs name its caller)")]
    EmptyName,
    /// An identity in the old, untyped form (`name` only).
    #[error("identity '{name}' does not say which certificate name it matches: replace `name = \"{name}\"` with `uri = \"{name}\"` (a SAN URI such as spiffe://…), `dns = \"{name}\"` (a SAN DNS name) or `cn = \"{name}\"` (the subject CN, used only for certificates without SANs)")]
    Untyped {
        /// The identity's name.
        name: String,
    },
    /// An identity with more than one of `uri`, `dns`, `cn`, or none at all.
    #[error("identity '{name}' must have exactly one of `uri`, `dns` or `cn` (write one [[identities]] entry per certificate name)")]
    NotOneType {
        /// The identity's name.
        name: String,
    },
    /// A token with a certificate name.
    #[error("token '{name}' has `uri`, `dns` or `cn`: those belong to [[identities]]; a token is matched by its sha256")]
    TokenWithCertName {
        /// The token's name.
        name: String,
    },
}

/// Which certificate name an identity matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uri,
    Dns,
    Cn,
}

struct IdentityEntry {
    kind: Kind,
    value: String,
    /// How logs name it (`name`, else the value).
    name: String,
    role: Role,
    node_id: Option<String>,
}

struct TokenEntry {
    name: String,
    hash: [u8; 32],
    role: Role,
    node_id: Option<String>,
}

/// The identities and tokens a service accepts.
pub struct Policy {
    identities: Vec<IdentityEntry>,
    tokens: Vec<TokenEntry>,
}

/// The policy in force, replaceable while the service runs (configuration
/// reload); each call reads the one in force when it arrives.
#[derive(Clone)]
pub struct SharedPolicy(Arc<Shared>);

struct Shared {
    current: RwLock<Arc<Policy>>,
    max_failures_per_minute: u32,
}

impl SharedPolicy {
    /// Shares `policy`; callers are throttled past `max_failures_per_minute`
    /// failed authentications (0: never).
    pub fn new(policy: Policy, max_failures_per_minute: u32) -> SharedPolicy {
        SharedPolicy(Arc::new(Shared {
            current: RwLock::new(Arc::new(policy)),
            max_failures_per_minute,
        }))
    }

    /// The throttle's limit (`[connections] max_auth_failures_per_minute`).
    pub fn max_failures_per_minute(&self) -> u32 {
        self.0.max_failures_per_minute
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        // Replacing is one assignment: a poisoned lock still holds a whole policy.
        match self.0.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `policy` in force for the calls that arrive from now on.
    pub fn replace(&self, policy: Policy) {
        let policy = Arc::new(policy);
        match self.0.current.write() {
            Ok(mut guard) => *guard = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }
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

pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn check_node_id(name: &str, entry: &GrantConfig) -> Result<(), PolicyError> {
    if entry.role == Role::Node && entry.node_id.as_deref().is_none_or(str::is_empty) {
        return Err(PolicyError::NodeWithoutId { name: name.into() });
    }
    Ok(())
}

fn identity(entry: &GrantConfig) -> Result<IdentityEntry, PolicyError> {
    let typed: Vec<(Kind, &String)> = [
        (Kind::Uri, entry.uri.as_ref()),
        (Kind::Dns, entry.dns.as_ref()),
        (Kind::Cn, entry.cn.as_ref()),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.map(|v| (kind, v)))
    .collect();
    let (kind, value) = match typed.as_slice() {
        [] if !entry.name.is_empty() => {
            return Err(PolicyError::Untyped {
                name: entry.name.clone(),
            })
        }
        [(kind, value)] if !value.is_empty() => (*kind, (*value).clone()),
        _ => {
            return Err(PolicyError::NotOneType {
                name: entry.name.clone(),
            })
        }
    };
    let name = if entry.name.is_empty() {
        value.clone()
    } else {
        entry.name.clone()
    };
    check_node_id(&name, entry)?;
    Ok(IdentityEntry {
        kind,
        value,
        name,
        role: entry.role,
        node_id: entry.node_id.clone(),
    })
}

fn token(entry: &GrantConfig) -> Result<TokenEntry, PolicyError> {
    if entry.name.is_empty() {
        return Err(PolicyError::EmptyName);
    }
    if entry.uri.is_some() || entry.dns.is_some() || entry.cn.is_some() {
        return Err(PolicyError::TokenWithCertName {
            name: entry.name.clone(),
        });
    }
    check_node_id(&entry.name, entry)?;
    let hash = entry
        .sha256
        .as_deref()
        .and_then(|h| unhex32(&h.to_ascii_lowercase()))
        .ok_or_else(|| PolicyError::BadHash {
            name: entry.name.clone(),
        })?;
    Ok(TokenEntry {
        name: entry.name.clone(),
        hash,
        role: entry.role,
        node_id: entry.node_id.clone(),
    })
}

impl Policy {
    /// How many identities and tokens it accepts, for logs.
    pub fn counts(&self) -> (usize, usize) {
        (self.identities.len(), self.tokens.len())
    }

    /// A policy from the configuration's `identities` and `tokens`.
    pub fn new(identities: &[GrantConfig], tokens: &[GrantConfig]) -> Result<Policy, PolicyError> {
        Ok(Policy {
            identities: identities.iter().map(identity).collect::<Result<_, _>>()?,
            tokens: tokens.iter().map(token).collect::<Result<_, _>>()?,
        })
    }

    /// Accepts no certificate identity and no token: only local callers.
    pub fn local_only() -> Policy {
        Policy {
            identities: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// The caller whose token is `token`, if one is configured.
    pub(super) fn by_token(&self, token: &str) -> Option<Caller> {
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

    /// The caller presenting the certificate `leaf` (DER).
    pub(super) fn by_certificate(&self, leaf: &[u8]) -> Caller {
        let names = certificate_names(leaf);
        let find = |kind: Kind, values: &[String]| {
            values.iter().find_map(|v| {
                self.identities
                    .iter()
                    .find(|e| e.kind == kind && e.value == *v)
            })
        };
        let matched = find(Kind::Uri, &names.uris)
            .or_else(|| find(Kind::Dns, &names.dns))
            .or_else(|| find(Kind::Cn, names.cn.as_slice()));
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
                        .map(super::bounded)
                        .unwrap_or_else(|| "(no name)".into())
                ),
                grant: Grant::Nothing,
                on_behalf_of: None,
            },
        }
    }
}

/// The names of a certificate an identity can match.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// SAN URIs, in certificate order.
    pub uris: Vec<String>,
    /// SAN DNS names, in certificate order.
    pub dns: Vec<String>,
    /// The subject CN, only when the certificate has no SANs at all.
    pub cn: Option<String>,
}

impl CertificateNames {
    /// The name that describes the certificate best, for logs.
    pub fn first(&self) -> Option<&str> {
        self.uris
            .first()
            .or(self.dns.first())
            .or(self.cn.as_ref())
            .map(String::as_str)
    }
}

/// The names `der` can be configured by. Empty when it does not parse (the
/// TLS layer already verified it, so that does not happen for a served
/// connection).
pub fn certificate_names(der: &[u8]) -> CertificateNames {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertificateNames::default();
    };
    let mut names = CertificateNames::default();
    let mut has_sans = false;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            has_sans = true;
            match name {
                x509_parser::extensions::GeneralName::URI(u) => names.uris.push(u.to_string()),
                x509_parser::extensions::GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    if !has_sans {
        names.cn = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_string);
    }
    names
}
