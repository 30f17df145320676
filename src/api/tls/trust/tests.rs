use super::*;
use crate::api::tls::test_pki::{write, TestPki};

#[test]
fn a_crl_file_that_does_not_parse_is_refused_naming_it() {
    let pki = TestPki::new();
    let crl = pki.path("crl.pem");
    for (text, why) in [
        ("", "no X509 CRL"),
        (
            "-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n",
            "",
        ),
        (
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "not a valid CRL",
        ),
    ] {
        write(&crl, text, 0o644);
        let err = Trust::load(&pki.ca, Some(&crl)).expect_err("bad CRL");
        let text = err.to_string();
        assert!(text.contains(&crl.display().to_string()), "{text}");
        assert!(text.contains(why), "{text}");
    }
    let err = Trust::load(&pki.ca, Some(&pki.path("missing.pem"))).expect_err("missing");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn a_revoked_certificate_is_refused_and_another_is_not() {
    let mut pki = TestPki::new();
    let (revoked, serial) = pki.leaf("revoked.test");
    let (good, _) = pki.leaf("good.test");
    let crl = pki.path("crl.pem");
    pki.write_crl(&crl, &[serial]);
    let trust = Trust::load(&pki.ca, Some(&crl)).expect("trust");
    let err = trust
        .current()
        .verify_client(&[revoked])
        .expect_err("revoked");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{err:?}"
    );
    trust.current().verify_client(&[good]).expect("not revoked");
}

#[test]
fn a_reload_gets_a_new_generation_and_a_refused_reload_keeps_the_previous_material() {
    let mut pki = TestPki::new();
    let (leaf, serial) = pki.leaf("client.test");
    let chain = [leaf];
    let crl = pki.path("crl.pem");
    pki.write_crl(&crl, &[]);
    let trust = Trust::load(&pki.ca, Some(&crl)).expect("trust");
    let first = trust.current();
    assert_eq!(
        trust.current().generation(),
        first.generation(),
        "no change, no reload"
    );
    first.verify_client(&chain).expect("trusted");

    // A CRL others can change is not loaded: the previous trust stays.
    pki.write_crl(&crl, &[serial]);
    std::fs::set_permissions(&crl, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let kept = trust.current();
    assert_eq!(kept.generation(), first.generation());
    kept.verify_client(&chain)
        .expect("the revocation in a refused file is not applied");

    // Made private again, the same file is loaded.
    std::fs::set_permissions(&crl, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let reloaded = trust.current();
    assert_ne!(reloaded.generation(), first.generation());
    assert!(reloaded.verify_client(&chain).is_err(), "revoked now");
}

#[test]
fn a_ca_file_others_can_change_is_refused_at_start() {
    let pki = TestPki::new();
    std::fs::set_permissions(&pki.ca, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let err = Trust::load(&pki.ca, None).expect_err("0666 CA");
    let text = err.to_string();
    assert!(
        text.contains(&pki.ca.display().to_string()) && text.contains("0666"),
        "{text}"
    );
}
