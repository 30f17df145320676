//! The trust peers are verified against: the CA roots of `tls_ca` and the
//! revocation lists of `tls_crl`, re-read when either file changes.
//!
//! One [`Trust`] serves every check a component makes: the server's client
//! certificate verifier at the handshake, the client's server certificate
//! verifier, and the per-request re-check of established connections
//! ([`crate::api::peer_check`]). So a CA removed or a certificate revoked is
//! refused everywhere from the same reload on. Each reload gets a new
//! generation number, which is what caches of verdicts are keyed by.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};

use super::{load_certs, parse_err, provider, read, Reloading, TlsError};
use crate::api::secret_files::{self, SecretKind};

/// How often [`Trust::recent`] looks at the files, in nanoseconds: the
/// per-request path stats them at most once a second, not at every call.
const LOOK_EVERY_NANOS: u64 = 1_000_000_000;

/// Generation numbers, unique in the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The CA roots and CRLs of one reload, as verifiers.
pub struct TrustMaterial {
    generation: u64,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<dyn ServerCertVerifier>,
}

impl TrustMaterial {
    /// Which reload this is; a later reload has a different number.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The verifier of client certificates (mandatory client authentication).
    pub fn clients(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.clients
    }

    /// The verifier of server certificates, for outgoing connections.
    pub fn servers(&self) -> &Arc<dyn ServerCertVerifier> {
        &self.servers
    }

    /// Verifies a client's chain (leaf first) as a handshake would, now.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.clients
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }

    /// Builds the material from `[ca]` or `[ca, crl]`, refusing files others
    /// can change.
    fn build(paths: &[PathBuf]) -> Result<TrustMaterial, TlsError> {
        let (ca, crl) = match paths {
            [ca] => (ca, None),
            [ca, crl] => (ca, Some(crl)),
            _ => return Err(TlsError::Incomplete("tls_ca".into())),
        };
        secret_files::check(ca, SecretKind::Trust, "CA file")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| parse_err(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let crls = match crl {
            Some(crl) => {
                secret_files::check(crl, SecretKind::Trust, "CRL file")?;
                load_crls(crl)?
            }
            None => Vec::new(),
        };
        let crl_err = |e: VerifierBuilderError| match (e, crl) {
            (VerifierBuilderError::InvalidCrl(e), Some(crl)) => {
                parse_err(crl, format!("not a valid CRL: {e:?}"))
            }
            (e, _) => TlsError::Verifier(e.to_string()),
        };
        // Only leaf certificates are looked up in the CRLs (intermediates
        // would need their issuers' CRLs too); a leaf whose issuer has no
        // CRL in the file is refused rather than let through unchecked.
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(crl_err)?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(crl_err)?;
        Ok(TrustMaterial {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            clients,
            servers,
        })
    }
}

/// Every CRL in a PEM file (at least one).
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(path, e))?;
    if crls.is_empty() {
        return Err(parse_err(path, "no X509 CRL in the file"));
    }
    Ok(crls)
}

/// The trust of one component, re-read when `tls_ca` or `tls_crl` changes.
pub struct Trust {
    material: Reloading<TrustMaterial>,
    epoch: Instant,
    /// Nanoseconds after `epoch` from which [`Trust::recent`] looks at the files again.
    next_look: AtomicU64,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("files", &self.material.paths)
            .finish()
    }
}

impl Trust {
    /// Reads the CA file and the CRL file (if any) now: a file that is
    /// missing, does not parse or that others can change is an error naming it.
    pub fn load(ca: &Path, crl: Option<&Path>) -> Result<Trust, TlsError> {
        let mut paths = vec![ca.to_path_buf()];
        paths.extend(crl.map(Path::to_path_buf));
        Ok(Trust {
            material: Reloading::new("trust (CA and CRL)", paths, TrustMaterial::build)?,
            epoch: Instant::now(),
            next_look: AtomicU64::new(0),
        })
    }

    /// The current material, re-read first if the files changed (for
    /// handshakes, which are rare enough to look every time).
    pub fn current(&self) -> Arc<TrustMaterial> {
        self.material.get()
    }

    /// The current material, looking at the files at most every
    /// a second (for every request).
    pub fn recent(&self) -> Arc<TrustMaterial> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let next = self.next_look.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_look
                .compare_exchange(
                    next,
                    now.saturating_add(LOOK_EVERY_NANOS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return self.material.get();
        }
        self.material.last()
    }
}

#[cfg(test)]
mod tests;
