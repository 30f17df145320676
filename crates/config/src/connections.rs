//! The `[connections]` table: how long and how many connections a listener
//! keeps, before and after authentication. Every bound here exists because a
//! peer that never authenticates, or authenticates and then does nothing,
//! must not be able to crowd out the callers that do.

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

/// Bounds on a listener's connections (`[connections]`), the same for the
/// main listener and the health listener.
#[derive(Debug, Clone, Deserialize, Serialize, DocumentedFields, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// A TLS handshake not finished within this many seconds is dropped; on
    /// the health listener, a connection without a call for this long is
    /// closed (a probe asks at once). At least 1.
    pub handshake_timeout_seconds: u64,
    /// Most TLS handshakes in progress at once on a listener; they do not
    /// take the places of established connections (`max_connections`).
    pub max_handshakes: usize,
    /// Most TLS handshakes in progress at once from one source address (an
    /// IPv6 source counts by its /64); more are closed at once. Also the most
    /// connections one source address may hold on the health listener.
    pub max_handshakes_per_peer: usize,
    /// Most established connections at once from one source address (an
    /// IPv6 source counts by its /64); more are closed at once.
    pub max_connections_per_peer: usize,
    /// A TCP connection with no call in progress for this many seconds is
    /// closed (0: never); HTTP/2 keepalive pings are not calls.
    pub idle_timeout_seconds: u64,
    /// A TCP connection is closed once it has no call in progress after this
    /// many seconds (GOAWAY: clients reconnect for their next call), so its
    /// certificate is checked again (CA, CRL) at the next handshake (0: never).
    pub max_age_seconds: u64,
    /// Past `max_age_seconds`, calls still in progress get this many seconds
    /// more before the connection is closed under them.
    pub max_age_grace_seconds: u64,
    /// Failed authentications from one source address allowed per minute;
    /// beyond, its calls are refused without being checked until the minute
    /// is over (0: no throttle).
    pub max_auth_failures_per_minute: u32,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            handshake_timeout_seconds: 5,
            max_handshakes: 64,
            max_handshakes_per_peer: 8,
            max_connections_per_peer: 64,
            idle_timeout_seconds: 300,
            max_age_seconds: 3600,
            max_age_grace_seconds: 600,
            max_auth_failures_per_minute: 30,
        }
    }
}
