//! A throw-away PKI for unit tests: a CA in a temporary directory, leaf
//! certificates it signs, and its CRLs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;

pub(crate) struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file (mode 0644).
    pub ca: PathBuf,
    next_serial: u64,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "volmig unit test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA cert");
        let ca = dir.path().join("ca.pem");
        write(&ca, &cert.pem(), 0o644);
        TestPki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
            next_serial: 1,
        }
    }

    /// A path in the PKI's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client certificate for `name` and its serial number.
    pub fn leaf(&mut self, name: &str) -> (CertificateDer<'static>, u64) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.der().clone(), serial)
    }

    /// Writes (by rename) this CA's CRL revoking the serials `revoked` to `path`.
    pub fn write_crl(&mut self, path: &Path, revoked: &[u64]) {
        let number = self.next_serial;
        self.next_serial += 1;
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("sign CRL");
        write(path, &crl.pem().expect("PEM"), 0o644);
    }
}

/// Writes `text` to `path` by rename (a new file, as a rotation would), with `mode`.
pub fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}
