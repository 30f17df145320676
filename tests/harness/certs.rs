//! Test PKI made with rcgen: a CA, leaf certificates signed by it (or by
//! another CA, or already expired), written as PEM files for `volmig`'s
//! `--ca/--cert/--key` flags and `tls_*` config keys.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

/// A leaf certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The CA file that verifies peers (the issuing CA's).
    pub ca: PathBuf,
    /// Certificate PEM.
    pub cert: PathBuf,
    /// Key PEM.
    pub key: PathBuf,
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
        }
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
        }
    }

    /// Signs a leaf certificate and writes `<stem>.pem` and `<stem>-key.pem`.
    pub fn leaf(&self, spec: LeafSpec<'_>) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
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
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
