use super::policy::sha256;
use super::*;
use crate::config::GrantConfig;
use prost::Message;

fn grant(name: &str, role: Role, node_id: Option<&str>, sha: Option<&str>) -> GrantConfig {
    GrantConfig {
        name: name.into(),
        role,
        node_id: node_id.map(str::to_string),
        sha256: sha.map(str::to_string),
        ..GrantConfig::default()
    }
}

fn identity(kind: &str, value: &str, role: Role, node_id: Option<&str>) -> GrantConfig {
    let mut g = GrantConfig {
        role,
        node_id: node_id.map(str::to_string),
        ..GrantConfig::default()
    };
    match kind {
        "uri" => g.uri = Some(value.into()),
        "dns" => g.dns = Some(value.into()),
        _ => g.cn = Some(value.into()),
    }
    g
}

/// A self-signed certificate (DER) with subject `cn` and these SANs.
fn cert(cn: &str, dns: &[&str], uris: &[&str]) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .expect("params");
    for uri in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*uri).try_into().expect("uri")));
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().expect("key");
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn request(path: &str, token: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::builder().uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(()).expect("request")
}

#[test]
fn every_volmig_rpc_has_a_rule() {
    let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut count = 0;
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                assert!(need(&path).is_some(), "{path} has no authorization rule");
                count += 1;
            }
        }
    }
    assert!(count >= 23, "only {count} RPCs found");
    assert_eq!(need("/volmig.v1.Node/NoSuchCall"), None);
    assert_eq!(need("nonsense"), None);
}

#[test]
fn tokens_map_to_roles_and_unknown_ones_are_unauthenticated() {
    let viewer = hex(&sha256(b"view-token"));
    let policy = Policy::new(
        &[],
        &[
            grant("dash", Role::Viewer, None, Some(&viewer)),
            grant(
                "n1",
                Role::Node,
                Some("kvm1"),
                Some(&hex(&sha256(b"node-token"))),
            ),
        ],
    )
    .expect("policy");
    let ok = policy
        .authorize(&request("/volmig.v1.Node/ListPools", Some("view-token")))
        .expect("viewer may list");
    assert_eq!(ok.identity, "token:dash");
    let denied = policy
        .authorize(&request(
            "/volmig.v1.Node/MigrateVolume",
            Some("view-token"),
        ))
        .expect_err("viewer may not migrate");
    let denied = tonic::Status::from(denied);
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("operator"),
        "{}",
        denied.message()
    );
    let unknown = policy
        .authorize(&request("/volmig.v1.Node/ListPools", Some("guess")))
        .expect_err("unknown token");
    assert_eq!(unknown, AuthError::UnknownToken);
    let none = policy
        .authorize(&request("/volmig.v1.Node/ListPools", None))
        .expect_err("no credentials");
    assert_eq!(
        tonic::Status::from(none).code(),
        tonic::Code::Unauthenticated
    );
    let node = policy
        .authorize(&request(
            "/volmig.v1.Controller/RegisterNode",
            Some("node-token"),
        ))
        .expect("node registers");
    assert!(node.may_register("kvm1") && !node.may_register("kvm2"));
    // Open services need nothing.
    assert!(policy
        .authorize(&request("/grpc.health.v1.Health/Check", None))
        .is_ok());
}

#[test]
fn configuration_mistakes_are_refused() {
    assert!(matches!(
        Policy::new(&[], &[grant("t", Role::Viewer, None, Some("abc"))]),
        Err(PolicyError::BadHash { .. })
    ));
    assert!(matches!(
        Policy::new(&[identity("dns", "n", Role::Node, None)], &[]),
        Err(PolicyError::NodeWithoutId { .. })
    ));
}

#[test]
fn certificate_names_are_typed_and_the_cn_only_without_sans() {
    let names = certificate_names(&cert(
        "kvm1-cn",
        &["kvm1.example"],
        &["spiffe://volmig/node/kvm1"],
    ));
    assert_eq!(
        names,
        CertificateNames {
            uris: vec!["spiffe://volmig/node/kvm1".into()],
            dns: vec!["kvm1.example".into()],
            cn: None,
        }
    );
    assert_eq!(
        certificate_names(&cert("lonely", &[], &[])).cn.as_deref(),
        Some("lonely")
    );
    assert_eq!(
        certificate_names(b"not a certificate"),
        CertificateNames::default()
    );
}

#[test]
fn a_certificate_with_sans_is_never_matched_by_its_cn() {
    let policy = Policy::new(
        &[
            identity("dns", "operator.example", Role::Operator, None),
            identity("cn", "operator.example", Role::Operator, None),
            identity("dns", "viewer2.example", Role::Viewer, None),
            identity("uri", "spiffe://volmig/node/B", Role::Node, Some("B")),
            identity("cn", "spiffe://volmig/node/B", Role::Node, Some("B")),
        ],
        &[],
    )
    .expect("policy");
    // CN=operator.example with a DNS SAN of a viewer: the viewer, never operator.
    let caller = policy.by_certificate(&cert("operator.example", &["viewer2.example"], &[]));
    assert_eq!(caller.identity, "cert:viewer2.example");
    assert_eq!(
        caller.grant,
        Grant::Role {
            role: Role::Viewer,
            node_id: None
        }
    );
    // CN naming node B plus an unrelated DNS SAN: no role, cannot register as B.
    let caller =
        policy.by_certificate(&cert("spiffe://volmig/node/B", &["unrelated.example"], &[]));
    assert_eq!(caller.grant, Grant::Nothing);
    assert!(!caller.may_register("B"));
    // Without SANs the CN is used, but only against `cn` identities.
    let caller = policy.by_certificate(&cert("operator.example", &[], &[]));
    assert_eq!(caller.identity, "cert:operator.example");
    assert!(caller.allows(Need::Operator));
}

#[test]
fn a_uri_identity_never_matches_a_dns_san_of_the_same_text() {
    let policy = Policy::new(
        &[
            identity("uri", "node-b.example", Role::Node, Some("B")),
            identity("dns", "spiffe://volmig/node/A", Role::Node, Some("A")),
        ],
        &[],
    )
    .expect("policy");
    let caller = policy.by_certificate(&cert("x", &["node-b.example"], &[]));
    assert_eq!(caller.grant, Grant::Nothing);
    let caller = policy.by_certificate(&cert("x", &[], &["spiffe://volmig/node/A"]));
    assert_eq!(caller.grant, Grant::Nothing);
    // URIs are tried before DNS names, whatever the order in the file.
    let policy = Policy::new(
        &[
            identity("dns", "kvm1.example", Role::Viewer, None),
            identity("uri", "spiffe://volmig/node/kvm1", Role::Node, Some("kvm1")),
        ],
        &[],
    )
    .expect("policy");
    let caller = policy.by_certificate(&cert(
        "x",
        &["kvm1.example"],
        &["spiffe://volmig/node/kvm1"],
    ));
    assert!(caller.may_register("kvm1"), "{caller:?}");
}

#[test]
fn an_untyped_identity_is_refused_with_how_to_rewrite_it() {
    let err = Policy::new(&[grant("ops.example", Role::Operator, None, None)], &[])
        .err()
        .expect("refused")
        .to_string();
    for hint in [
        "uri = \"ops.example\"",
        "dns = \"ops.example\"",
        "cn = \"ops.example\"",
    ] {
        assert!(err.contains(hint), "{err}");
    }
    let mut two = identity("dns", "a.example", Role::Viewer, None);
    two.cn = Some("a".into());
    assert!(matches!(
        Policy::new(&[two], &[]),
        Err(PolicyError::NotOneType { .. })
    ));
    let mut token = grant("t", Role::Viewer, None, Some(&"ab".repeat(32)));
    token.dns = Some("a.example".into());
    assert!(matches!(
        Policy::new(&[], &[token]),
        Err(PolicyError::TokenWithCertName { .. })
    ));
}

/// A request from TCP peer `peer` to `path`.
fn from(peer: &str, path: &str, token: Option<&str>) -> http::Request<()> {
    let mut req = request(path, token);
    req.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer.parse().expect("addr")),
    });
    req
}

#[test]
fn an_address_past_its_failures_is_throttled_without_checking_its_token() {
    let now = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let read = now.clone();
    let guard = Guard::new(3, Arc::new(move || *read.lock().expect("clock")));
    let good = hex(&sha256(b"good"));
    let policy = Policy::new(&[], &[grant("ci", Role::Viewer, None, Some(&good))]).expect("policy");
    let list = "/volmig.v1.Node/ListPools";
    for attempt in ["guess1", "guess2", "guess3"] {
        let err = guard
            .check(&policy, &from("192.0.2.7:4000", list, Some(attempt)))
            .expect_err("unknown token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    // Even the right token is refused now, from any port of that address.
    let err = guard
        .check(&policy, &from("192.0.2.7:4001", list, Some("good")))
        .expect_err("throttled");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("too many failed authentications from 192.0.2.7")
            && err.message().contains("retry in 60 s"),
        "{}",
        err.message()
    );
    // Other addresses, open services and local callers are not affected.
    assert!(guard
        .check(&policy, &from("192.0.2.8:1", list, Some("good")))
        .is_ok());
    assert!(guard
        .check(
            &policy,
            &from("192.0.2.7:1", "/grpc.health.v1.Health/Check", None)
        )
        .is_ok());
    *now.lock().expect("clock") += throttle::WINDOW;
    assert!(guard
        .check(&policy, &from("192.0.2.7:1", list, Some("good")))
        .is_ok());
}

#[test]
fn missing_credentials_and_roleless_certificates_count_as_failures_but_a_lacking_role_does_not() {
    let guard = Guard::new(2, Arc::new(std::time::Instant::now));
    let viewer = hex(&sha256(b"viewer"));
    let policy =
        Policy::new(&[], &[grant("v", Role::Viewer, None, Some(&viewer))]).expect("policy");
    let migrate = "/volmig.v1.Node/MigrateVolume";
    for _ in 0..5 {
        let err = guard
            .check(&policy, &from("192.0.2.9:1", migrate, Some("viewer")))
            .expect_err("a viewer may not migrate");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    for _ in 0..2 {
        guard
            .check(&policy, &from("192.0.2.9:1", migrate, None))
            .expect_err("no credentials");
    }
    let err = guard
        .check(&policy, &from("192.0.2.9:1", migrate, Some("viewer")))
        .expect_err("throttled");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}

#[test]
fn a_refused_call_is_logged_with_peer_identity_and_rpc_and_floods_are_suppressed() {
    let now = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let read = now.clone();
    let guard = Guard::new(0, Arc::new(move || *read.lock().expect("clock")));
    let viewer = hex(&sha256(b"viewer"));
    let policy = Policy::new(
        &[],
        &[grant("dash board", Role::Viewer, None, Some(&viewer))],
    )
    .expect("policy");
    let migrate = "/volmig.v1.Node/MigrateVolume";
    let log = crate::api::audit::tests::text_log(|| {
        let _ = guard.check(&policy, &from("192.0.2.10:5555", migrate, Some("viewer")));
        for _ in 0..100 {
            let _ = guard.check(&policy, &from("192.0.2.11:6666", migrate, Some("guess")));
        }
        *now.lock().expect("clock") += refusals::QUIET;
        let _ = guard.check(&policy, &from("192.0.2.11:6667", migrate, None));
    });
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[0].contains(r#"peer="192.0.2.10:5555""#)
            && lines[0].contains(r#"identity="token:dash board""#)
            && lines[0].contains(r#"rpc="volmig.v1.Node/MigrateVolume""#)
            && lines[0].contains(r#"code="PERMISSION_DENIED""#),
        "{log}"
    );
    assert!(
        lines[1].contains(r#"peer="192.0.2.11:6666""#)
            && lines[1].contains(r#"identity="token:(unknown)""#)
            && lines[1].contains("suppressed=0"),
        "{log}"
    );
    assert!(
        lines[2].contains(r#"identity="none""#) && lines[2].contains("suppressed=99"),
        "{log}"
    );
}
