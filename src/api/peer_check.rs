//! Re-checking the peer of an established TLS connection at every request.
//!
//! The handshake verifies a client certificate once, and a connection then
//! lives for as long as the client keeps it open. So that removing a CA from
//! `tls_ca` or revoking a certificate in `tls_crl` also ends what open
//! connections may do, every request's peer chain is verified again against
//! the component's current [`Trust`], before authorization. Verdicts are
//! remembered per leaf certificate and trust generation, so the steady state
//! costs a hash and a map lookup; a reload (a new generation) forgets them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls::{self, CertificateError};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::api::auth::certificate_names;
use crate::api::tls::{Trust, TrustMaterial};

/// Most verdicts remembered; past that they are forgotten all at once (a
/// component has far fewer distinct peers, so this only bounds memory).
const MAX_VERDICTS: usize = 4096;

/// Why a connection's peer is no longer accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeerRefused {
    /// The CRL lists the certificate.
    #[error("the client certificate is revoked (listed in tls_crl); connect with a certificate that is not revoked")]
    Revoked,
    /// The CRL file has no CRL from the certificate's issuer.
    #[error("the client certificate's revocation status is unknown: tls_crl holds no CRL from its issuer")]
    RevocationUnknown,
    /// The CA no longer is (or never was) in the CA file.
    #[error("the client certificate no longer chains to the configured CA (tls_ca); connect with a certificate from the current CA")]
    NotChained,
    /// The certificate expired since the handshake.
    #[error("the client certificate has expired; connect with a current certificate")]
    Expired,
    /// Anything else the verifier refused.
    #[error("the client certificate is no longer accepted: {0}")]
    Other(String),
}

impl From<rustls::Error> for PeerRefused {
    fn from(err: rustls::Error) -> PeerRefused {
        match err {
            rustls::Error::InvalidCertificate(e) => match e {
                CertificateError::Revoked => PeerRefused::Revoked,
                CertificateError::UnknownRevocationStatus => PeerRefused::RevocationUnknown,
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    PeerRefused::NotChained
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    PeerRefused::Expired
                }
                other => PeerRefused::Other(format!("{other:?}")),
            },
            other => PeerRefused::Other(other.to_string()),
        }
    }
}

/// Verdicts of one trust generation, by leaf certificate (DER).
#[derive(Default)]
struct Verdicts {
    generation: u64,
    by_leaf: HashMap<Vec<u8>, Result<(), PeerRefused>>,
}

/// The re-check itself, shared by every connection of a listener.
pub struct PeerChecker {
    trust: Arc<Trust>,
    verdicts: Mutex<Verdicts>,
}

impl PeerChecker {
    /// A checker against `trust`.
    pub fn new(trust: Arc<Trust>) -> PeerChecker {
        PeerChecker {
            trust,
            verdicts: Mutex::new(Verdicts::default()),
        }
    }

    /// Whether `chain` (leaf first) is still trusted; `fresh` tells whether
    /// the verdict was computed now (and not remembered).
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> (Result<(), PeerRefused>, bool) {
        self.check_with(&self.trust.recent(), chain)
    }

    fn check_with(
        &self,
        material: &TrustMaterial,
        chain: &[CertificateDer<'_>],
    ) -> (Result<(), PeerRefused>, bool) {
        let Some(leaf) = chain.first() else {
            return (Err(PeerRefused::Other("no certificate".into())), true);
        };
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.generation == material.generation() {
            if let Some(verdict) = verdicts.by_leaf.get(leaf.as_ref()) {
                return (verdict.clone(), false);
            }
        } else {
            verdicts.generation = material.generation();
            verdicts.by_leaf.clear();
        }
        // Verified under the lock: concurrent first requests of one peer
        // then cost one signature check, not one each.
        let verdict = material.verify_client(chain).map_err(PeerRefused::from);
        if verdicts.by_leaf.len() >= MAX_VERDICTS {
            verdicts.by_leaf.clear();
        }
        verdicts
            .by_leaf
            .insert(leaf.as_ref().to_vec(), verdict.clone());
        (verdict, true)
    }
}

/// The tower layer re-checking TLS peers; without TLS it passes requests on.
#[derive(Clone)]
pub struct PeerCheckLayer {
    checker: Option<Arc<PeerChecker>>,
}

impl PeerCheckLayer {
    /// A layer checking peers against `trust` (none: no TLS, nothing to check).
    pub fn new(trust: Option<Arc<Trust>>) -> PeerCheckLayer {
        PeerCheckLayer {
            checker: trust.map(|t| Arc::new(PeerChecker::new(t))),
        }
    }
}

impl<S> tower::Layer<S> for PeerCheckLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> PeerCheck<S> {
        PeerCheck {
            inner,
            checker: self.checker.clone(),
        }
    }
}

/// The service of [`PeerCheckLayer`].
#[derive(Clone)]
pub struct PeerCheck<S> {
    inner: S,
    checker: Option<Arc<PeerChecker>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for PeerCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let refused = self.checker.as_ref().and_then(|checker| {
            let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
            let chain = tls.peer_certs()?;
            let (verdict, fresh) = checker.check(&chain);
            let refused = verdict.err()?;
            let peer = tls.get_ref().remote_addr();
            // Logged when judged, not at every refused request of the
            // peer, so a client retrying in a loop cannot fill the log.
            if fresh {
                let names = chain
                    .first()
                    .map(|leaf| certificate_names(leaf.as_ref()))
                    .unwrap_or_default();
                tracing::info!(peer = ?peer, certificate = ?names, reason = %refused, "refused a request on an established connection");
            } else {
                tracing::debug!(peer = ?peer, reason = %refused, "refused a request on an established connection");
            }
            Some(refused)
        });
        match refused {
            None => Box::pin(self.inner.call(req)),
            Some(refused) => Box::pin(std::future::ready(Ok(Status::from(refused).into_http()))),
        }
    }
}

#[cfg(test)]
mod tests;
