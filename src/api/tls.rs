//! TLS for every TCP listener and client: rustls (ring), mutual
//! authentication against a configured CA and its revocation lists, and
//! certificates re-read when their files change.
//!
//! The server's rustls configuration is built here rather than by tonic so
//! that certificates can be rotated without a restart: the server certificate
//! comes from a [`ResolvesServerCert`] and client certificates are verified by
//! a [`ClientCertVerifier`] over the component's [`Trust`], both of which look
//! at their files at each handshake and reload when they changed. A file that
//! cannot be read or parsed, or that other users could change (or, for a key,
//! read), keeps the previous material in use (and is logged), so a
//! half-written rotation never takes a running service down and a loosened
//! file is never trusted; at start the same faults refuse the start.
//!
//! Accepting connections (and their handshakes) is [`crate::api::listener`]'s job.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::api::file_stamp::{self, FileStamp};
use crate::api::secret_files::{self, SecretFileError, SecretKind};

mod connector;
#[cfg(test)]
pub(crate) mod test_pki;
mod trust;

pub use connector::TlsConnector;
pub use trust::{Trust, TrustMaterial};

/// The PEM files of one component: the CA that signs its peers (and its
/// revocation lists), and its own certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This component's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// This component's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CRLs (PEM) of the CA; a peer certificate they list is refused.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The files when all three are set, `None` when none is, an error naming
    /// the missing ones otherwise.
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca,
                cert,
                key,
                crl: None,
            })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("tls_ca", ca.is_none()),
                    ("tls_cert", cert.is_none()),
                    ("tls_key", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }

    /// `files` with the CRL file `crl`; a CRL without the other files is an
    /// error (there would be nothing to check it against).
    pub fn with_crl(
        files: Option<TlsFiles>,
        crl: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (files, crl) {
            (None, Some(_)) => Err(TlsError::Incomplete(
                "tls_ca, tls_cert, tls_key (tls_crl is set)".into(),
            )),
            (files, None) => Ok(files),
            (Some(files), crl) => Ok(Some(TlsFiles { crl, ..files })),
        }
    }

    /// The trust these files describe (CA and CRL), read now.
    pub fn trust(&self) -> Result<Trust, TlsError> {
        Trust::load(&self.ca, self.crl.as_deref())
    }
}

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Some but not all of the three files are configured.
    #[error("TLS needs a CA, a certificate and a key; missing: {0}")]
    Incomplete(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material or the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// A file others could change (or, for a key, read).
    #[error(transparent)]
    Mode(#[from] SecretFileError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_err(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Parse {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(path, e))?;
    if certs.is_empty() {
        return Err(parse_err(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| parse_err(path, e))
}

/// The stamps of a set of files (see [`file_stamp`]).
fn stamp(paths: &[&Path]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| file_stamp::of(p)).collect()
}

/// A value built from files, rebuilt when any file's mtime changes.
struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: fn(&[PathBuf]) -> Result<T, TlsError>,
    state: Mutex<(Vec<Option<FileStamp>>, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: fn(&[PathBuf]) -> Result<T, TlsError>,
    ) -> Result<Self, TlsError> {
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let stamps = stamp(&refs);
        let value = build(&paths)?;
        Ok(Reloading {
            what,
            paths,
            build,
            state: Mutex::new((stamps, Arc::new(value))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Option<FileStamp>>, Arc<T>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value as last built, without looking at the files.
    fn last(&self) -> Arc<T> {
        self.lock().1.clone()
    }

    /// The current value, rebuilt first when the files changed.
    fn get(&self) -> Arc<T> {
        let refs: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        let now = stamp(&refs);
        let mut state = self.lock();
        if state.0 != now {
            match (self.build)(&self.paths) {
                Ok(value) => {
                    state.1 = Arc::new(value);
                    tracing::info!(what = self.what, files = ?self.paths, "reloaded TLS material");
                }
                Err(e) => {
                    tracing::warn!(what = self.what, error = %e, "cannot reload TLS material; keeping the previous one");
                }
            }
            // Also on failure: retry only after the files change again.
            state.0 = now;
        }
        state.1.clone()
    }
}

fn build_certified_key(paths: &[PathBuf]) -> Result<CertifiedKey, TlsError> {
    let [cert, key] = paths else {
        return Err(TlsError::Incomplete("tls_cert, tls_key".into()));
    };
    secret_files::check(cert, SecretKind::Trust, "certificate file")?;
    secret_files::check(key, SecretKind::Private, "private key")?;
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| parse_err(key, e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        parse_err(
            cert,
            format!("does not match the key in {}: {e}", key.display()),
        )
    })?;
    Ok(certified)
}

/// The server's certificate, re-read when its files change.
struct ServerCert(Reloading<CertifiedKey>);

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("files", &self.0.paths)
            .finish()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// Verifies client certificates against the component's trust (CA and
/// CRLs), re-read when it changes.
#[derive(Debug)]
struct ClientVerifier(Arc<Trust>);

impl ClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.current().clients().clone()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are advisory; a fixed empty list lets clients pick any
        // certificate, which the verification below then judges.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The server's rustls configuration: TLS 1.2/1.3, HTTP/2 only, a client
/// certificate required and verified against `trust` (`files.ca` and
/// `files.crl`, already read); the certificate and key are read now (so a
/// wrong path fails the start-up) and again when they change.
pub fn server_config(
    files: &TlsFiles,
    trust: Arc<Trust>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert = ServerCert(Reloading::new(
        "server certificate",
        vec![files.cert.clone(), files.key.clone()],
        build_certified_key,
    )?);
    let verifier = ClientVerifier(trust);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A fingerprint of the client material's files (their modification times),
/// so long-lived channels can be re-opened after a rotation or a new CRL.
pub fn generation(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.ca),
        Some(&files.cert),
        Some(&files.key),
        files.crl.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(TlsFiles::from_parts(None, None, None).expect("none"), None);
        assert!(TlsFiles::from_parts(p("ca"), p("c"), p("k"))
            .expect("all")
            .is_some());
        let err = TlsFiles::from_parts(p("ca"), None, p("k")).expect_err("no cert");
        assert!(err.to_string().contains("tls_cert"), "{err}");
    }

    #[test]
    fn unreadable_or_mismatched_material_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            path
        };
        let key_a = rcgen::KeyPair::generate().expect("key");
        let key_b = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key_a)
            .expect("cert");
        let files = TlsFiles {
            ca: write("ca.pem", &cert.pem()),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key_a.serialize_pem()),
            crl: None,
        };
        let config = |files: &TlsFiles| server_config(files, Arc::new(files.trust()?));
        assert!(config(&files).is_ok());
        let wrong_key = TlsFiles {
            key: write("other-key.pem", &key_b.serialize_pem()),
            ..files.clone()
        };
        let err = config(&wrong_key).expect_err("mismatched key");
        assert!(err.to_string().contains("does not match"), "{err}");
        let no_ca = TlsFiles {
            ca: write("empty.pem", ""),
            ..files
        };
        assert!(config(&no_ca).is_err());
    }

    #[test]
    fn a_key_others_can_read_is_refused_at_start_and_at_reload() {
        use test_pki::write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pair = |mode: u32| {
            let key_pair = rcgen::KeyPair::generate().expect("key");
            let made = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .expect("params")
                .self_signed(&key_pair)
                .expect("cert");
            write(&cert, &made.pem(), 0o644);
            write(&key, &key_pair.serialize_pem(), mode);
        };
        let paths = vec![cert.clone(), key.clone()];

        pair(0o644);
        let err = Reloading::new("server certificate", paths.clone(), build_certified_key)
            .err()
            .expect("a key others can read");
        let text = err.to_string();
        assert!(
            text.contains(&key.display().to_string()) && text.contains("0644"),
            "{text}"
        );

        pair(0o600);
        let served = Reloading::new("server certificate", paths, build_certified_key)
            .expect("a private key");
        let first = served.get();
        pair(0o640);
        assert!(
            Arc::ptr_eq(&served.get(), &first),
            "a key the group can read is not loaded"
        );
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        assert!(!Arc::ptr_eq(&served.get(), &first), "loaded once private");
    }
}
