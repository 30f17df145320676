//! Test PKI made with rcgen: a CA, leaf certificates signed by it (or by
//! another CA, or already expired) and its revocation lists, written as PEM
//! files for `volmig`'s `--ca/--cert/--key` flags and `tls_*` config keys.
//! Keys are written readable by their owner only, as volmig requires.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

/// A CA that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
    dir: PathBuf,
    /// Serial number of the next leaf (and number of the next CRL).
    next_serial: AtomicU64,
}

/// A leaf certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The CA file that verifies peers (the issuing CA's).
    pub ca: PathBuf,
    /// Certificate PEM.
    pub cert: PathBuf,
    /// Key PEM (mode 0600).
    pub key: PathBuf,
    /// The certificate's serial number, which a CRL names it by.
    pub serial: u64,
}

impl Leaf {
    /// `--ca CA --cert CERT --key KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
        ]
    }

    /// `tls_ca = …`, `tls_cert = …`, `tls_key = …` lines for a config file.
    pub fn toml(&self) -> String {
        format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// The library's view of these files.
    pub fn files(&self) -> volmig::api::tls::TlsFiles {
        volmig::api::tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            crl: None,
        }
    }

    /// A plain rustls client presenting this certificate and trusting its
    /// CA (ALPN h2), for tests that speak TLS below gRPC.
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        for cert in volmig::api::tls::load_certs(&self.ca).expect("ca") {
            roots.add(cert).expect("root");
        }
        let chain = volmig::api::tls::load_certs(&self.cert).expect("cert");
        let key = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::PrivateKeyDer::from_pem_file(&self.key).expect("key")
        };
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

/// What a leaf certificate looks like.
pub struct LeafSpec<'a> {
    /// File name stem.
    pub stem: &'a str,
    /// Subject CN.
    pub cn: &'a str,
    /// SAN DNS names (and IP addresses, written as such).
    pub dns: &'a [&'a str],
    /// A SAN URI, if any.
    pub uri: Option<&'a str>,
    /// Already expired (valid 2000-2001).
    pub expired: bool,
}

impl<'a> LeafSpec<'a> {
    /// A valid certificate for `cn` whose SANs are `dns`.
    pub fn new(stem: &'a str, cn: &'a str, dns: &'a [&'a str]) -> Self {
        LeafSpec {
            stem,
            cn,
            dns,
            uri: None,
            expired: false,
        }
    }
}

impl TestCa {
    /// A new CA whose files go to `dir` (named after `name`).
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("volmig test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        TestCa {
            issuer: Issuer::new(params, key),
            ca_file,
            dir: dir.to_path_buf(),
            next_serial: AtomicU64::new(1),
        }
    }

    /// Writes `file` (PEM) as this CA's CRL revoking `revoked` (none: an
    /// empty CRL, which says every certificate of this CA is good).
    pub fn write_crl(&self, file: &Path, revoked: &[&Leaf]) {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(self.next_serial.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| RevokedCertParams {
                    serial_number: SerialNumber::from(leaf.serial),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign CRL");
        // Replaced atomically, as an operator's CRL update would be.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, crl.pem().expect("CRL PEM")).expect("write CRL");
        std::fs::rename(&tmp, file).expect("rename CRL");
    }

    /// Signs a leaf certificate and writes `<stem>.pem` and `<stem>-key.pem`.
    pub fn leaf(&self, spec: LeafSpec<'_>) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        for name in spec.dns {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("dns name")),
            });
        }
        if let Some(uri) = spec.uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("uri")));
        }
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            ca: self.ca_file.clone(),
            cert: self.dir.join(format!("{}.pem", spec.stem)),
            key: self.dir.join(format!("{}-key.pem", spec.stem)),
            serial,
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        write_private(&leaf.key, &key.serialize_pem());
        leaf
    }
}

/// Writes `text` to a new `path` readable by its owner only (no moment
/// where others could read it).
pub fn write_private(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
