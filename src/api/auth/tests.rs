use super::*;
use prost::Message;

fn grant(name: &str, role: Role, node_id: Option<&str>, sha: Option<&str>) -> GrantConfig {
    GrantConfig {
        name: name.into(),
        role,
        node_id: node_id.map(str::to_string),
        sha256: sha.map(str::to_string),
    }
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
        Policy::new(&[grant("n", Role::Node, None, None)], &[]),
        Err(PolicyError::NodeWithoutId { .. })
    ));
}

#[test]
fn certificate_names_are_sans_then_cn() {
    let mut params =
        rcgen::CertificateParams::new(vec!["kvm1.example".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://volmig/node/kvm1".try_into().expect("uri"),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kvm1-cn");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let names = certificate_names(cert.der());
    assert!(names.contains(&"kvm1.example".to_string()), "{names:?}");
    assert!(
        names.contains(&"spiffe://volmig/node/kvm1".to_string()),
        "{names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("kvm1-cn"));
    assert!(certificate_names(b"not a certificate").is_empty());
}
