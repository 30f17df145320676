use super::*;
use crate::api::tls::test_pki::{write, TestPki};

#[test]
fn verdicts_are_remembered_within_a_generation_and_rechecked_after_a_reload() {
    let mut pki = TestPki::new();
    let (leaf, serial) = pki.leaf("client.test");
    let crl = pki.path("crl.pem");
    pki.write_crl(&crl, &[]);
    let trust = Arc::new(Trust::load(&pki.ca, Some(&crl)).expect("trust"));
    let checker = PeerChecker::new(trust.clone());
    let chain = [leaf];

    let before = trust.current();
    assert_eq!(checker.check_with(&before, &chain), (Ok(()), true));
    assert_eq!(
        checker.check_with(&before, &chain),
        (Ok(()), false),
        "the second request of a peer is answered from the cache"
    );

    pki.write_crl(&crl, &[serial]);
    let after = trust.current();
    assert_ne!(after.generation(), before.generation());
    assert_eq!(
        checker.check_with(&after, &chain),
        (Err(PeerRefused::Revoked), true),
        "a new generation re-verifies the peer"
    );
    assert_eq!(
        checker.check_with(&after, &chain),
        (Err(PeerRefused::Revoked), false)
    );
}

#[test]
fn a_peer_whose_ca_was_removed_no_longer_chains() {
    let mut pki = TestPki::new();
    let (leaf, _) = pki.leaf("client.test");
    let trust = Arc::new(Trust::load(&pki.ca, None).expect("trust"));
    let checker = PeerChecker::new(trust.clone());
    let chain = [leaf];
    assert_eq!(checker.check(&chain).0, Ok(()));

    let other = TestPki::new();
    let other_ca = std::fs::read_to_string(&other.ca).expect("CA");
    write(&pki.ca, &other_ca, 0o644);
    let (verdict, fresh) = checker.check_with(&trust.current(), &chain);
    assert_eq!(verdict, Err(PeerRefused::NotChained));
    assert!(fresh);
    let status = Status::from(PeerRefused::NotChained);
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("tls_ca"), "{}", status.message());
}
