//! End-to-end: every RPC of the node and the controller × every role (none,
//! viewer, operator, node) → the code the authorization layer gives, against
//! real processes on TCP — bearer tokens on plaintext loopback, and
//! certificate identities over mutual TLS. Allowed calls reach their handler
//! (empty requests, so they answer with anything but UNAUTHENTICATED or
//! PERMISSION_DENIED); refused ones never do.

mod harness;

use std::path::PathBuf;

use bytes::{Buf, BufMut};
use harness::certs::{free_port, LeafSpec, TestCa};
use harness::controller::ControllerProcess;
use harness::node::NodeProcess;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;
use volmig::api::client::{self, Credentials, Peer};
use volmig::proto;

/// Raw protobuf bytes in and out, so any RPC can be called by its path.
#[derive(Default, Clone)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// One RPC: its path and whether its answer is a stream.
struct Rpc {
    path: String,
    streaming: bool,
}

/// Every RPC of `service` (e.g. "volmig.v1.Node"), from the descriptors.
fn rpcs(service: &str) -> Vec<Rpc> {
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut out = Vec::new();
    for file in &set.file {
        for svc in &file.service {
            if format!("{}.{}", file.package(), svc.name()) != service {
                continue;
            }
            for m in &svc.method {
                out.push(Rpc {
                    path: format!("/{service}/{}", m.name()),
                    streaming: m.server_streaming(),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no RPCs for {service}");
    out
}

/// Calls `rpc` with `body`; the status code (Ok when it answered).
async fn call(channel: client::AuthChannel, rpc: &Rpc, body: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let path: http::uri::PathAndQuery = rpc.path.parse().expect("path");
    let request = tonic::Request::new(body);
    let result = if rpc.streaming {
        match grpc.server_streaming(request, path, Raw).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match stream.message().await {
                    Ok(_) => Ok(()),
                    Err(s) => Err(s),
                }
            }
            Err(s) => Err(s),
        }
    } else {
        grpc.unary(request, path, Raw).await.map(|_| ())
    };
    match result {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Viewer,
    Operator,
    Node,
}

const EVERYONE: [Who; 4] = [Who::Nobody, Who::Viewer, Who::Operator, Who::Node];

/// What the table says `who` gets for `path`: `None` when the call must reach
/// its handler, else the refusal code.
fn expected(path: &str, who: Who, nobody_code: Code) -> Option<Code> {
    use volmig::api::auth::{need, Need};
    let need = need(path).expect("every RPC has a rule");
    let allowed = match (need, who) {
        (Need::Open, _) => true,
        (_, Who::Nobody) => return Some(nobody_code),
        (Need::Viewer, Who::Viewer | Who::Operator) => true,
        (Need::Operator, Who::Operator) => true,
        (Need::Node, Who::Node) => true,
        _ => false,
    };
    (!allowed).then_some(Code::PermissionDenied)
}

fn sha256_hex(token: &str) -> String {
    let out = harness::run_ok(
        "sh",
        &[
            "-c",
            &format!("printf %s '{token}' | sha256sum | cut -d' ' -f1"),
        ],
    );
    out.trim().to_string()
}

/// The `[[tokens]]` or `[[identities]]` entries for the three roles.
fn grants(kind: &str, names: [&str; 3], node_id: &str) -> String {
    let [viewer, operator, node] = names;
    let key = if kind == "tokens" { "sha256" } else { "" };
    let entry = |name: &str, role: &str, extra: &str| {
        let (name_line, hash_line) = if kind == "tokens" {
            (
                format!("name = \"{role}-token\"\n"),
                format!("{key} = \"{}\"\n", sha256_hex(name)),
            )
        } else {
            (format!("dns = \"{name}\"\n"), String::new())
        };
        format!("[[{kind}]]\n{name_line}{hash_line}role = \"{role}\"\n{extra}")
    };
    [
        entry(viewer, "viewer", ""),
        entry(operator, "operator", ""),
        entry(node, "node", &format!("node_id = \"{node_id}\"\n")),
    ]
    .concat()
}

/// Runs the whole table against `endpoint` for `service`; returns the rows
/// that disagree.
async fn check_table(
    service: &str,
    endpoint: &str,
    credentials: &[(Who, Credentials)],
    nobody_code: Code,
    node_id: &str,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut all = rpcs(service);
    all.push(Rpc {
        path: "/grpc.health.v1.Health/Check".into(),
        streaming: false,
    });
    all.extend(rpcs("volmig.v1.Identity"));
    for (who, creds) in credentials {
        let channel = client::connect_with(Peer::Node, endpoint, creds)
            .await
            .unwrap_or_else(|e| panic!("connect as {who:?}: {e}"));
        for rpc in &all {
            let body = if rpc.path.ends_with("/RegisterNode") {
                proto::RegisterNodeRequest {
                    node_id: node_id.to_string(),
                    endpoint: "http://127.0.0.1:9".into(),
                    info: None,
                }
                .encode_to_vec()
            } else {
                Vec::new()
            };
            let got = call(channel.clone(), rpc, body).await;
            let want = expected(&rpc.path, *who, nobody_code);
            let ok = match want {
                Some(code) => got == code,
                None => !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
            };
            let row = format!(
                "{:<44} {:<9} → {:?} (want {})",
                rpc.path,
                format!("{who:?}"),
                got,
                want.map(|c| format!("{c:?}"))
                    .unwrap_or("the handler".into())
            );
            eprintln!("{row}");
            if !ok {
                wrong.push(row);
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_by_every_role_gets_its_code() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("authz"));
    let node_id = "authz-node";
    let tokens = ["viewer-secret", "operator-secret", "node-secret"];
    let names = [
        "viewer.volmig.test",
        "operator.volmig.test",
        "node.volmig.test",
    ];
    let ca = TestCa::new(&dir, "authz");
    let leaf = |stem: &str, name: &str| ca.leaf(LeafSpec::new(stem, name, &[name]));
    let server = ca.leaf(LeafSpec::new(
        "server",
        "server",
        &["localhost", "127.0.0.1"],
    ));
    let certs = [
        (Who::Nobody, leaf("nobody", "unmapped.volmig.test")),
        (Who::Viewer, leaf("viewer", names[0])),
        (Who::Operator, leaf("operator", names[1])),
        (Who::Node, leaf("node", names[2])),
    ];
    let config = format!(
        "{}{}",
        grants("tokens", tokens, node_id),
        grants("identities", names, node_id)
    );
    let cfg_file: PathBuf = dir.join("node.toml");
    std::fs::write(&cfg_file, &config).expect("config");

    let token_creds: Vec<(Who, Credentials)> = EVERYONE
        .iter()
        .map(|who| {
            let token = match who {
                Who::Nobody => None,
                Who::Viewer => Some(tokens[0]),
                Who::Operator => Some(tokens[1]),
                Who::Node => Some(tokens[2]),
            };
            (*who, Credentials::new(None, token).expect("token"))
        })
        .collect();
    let cert_creds: Vec<(Who, Credentials)> = certs
        .iter()
        .map(|(who, leaf)| {
            let mut files = leaf.files();
            files.ca = server.ca.clone();
            (*who, Credentials::new(Some(files), None).expect("creds"))
        })
        .collect();

    let mut wrong = Vec::new();
    // Plaintext loopback with tokens; no token is UNAUTHENTICATED.
    let node_addr = format!("127.0.0.1:{}", free_port());
    let cfg = cfg_file.display().to_string();
    let node = NodeProcess::start_tcp("authz-node", &node_addr, &["--config", &cfg]);
    wrong.extend(
        check_table(
            "volmig.v1.Node",
            &format!("http://{node_addr}"),
            &token_creds,
            Code::Unauthenticated,
            node_id,
        )
        .await,
    );
    let ctl_addr = format!("127.0.0.1:{}", free_port());
    let ctl = ControllerProcess::start_tcp("authz-ctl", &ctl_addr, &config, &[]);
    for service in ["volmig.v1.Controller", "volmig.v1.Fleet"] {
        wrong.extend(
            check_table(
                service,
                &format!("http://{ctl_addr}"),
                &token_creds,
                Code::Unauthenticated,
                node_id,
            )
            .await,
        );
    }
    // Mutual TLS with certificate identities; a certificate the
    // configuration does not know has no role: PERMISSION_DENIED.
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let mut flags = server.flags();
    flags.extend(["--config".to_string(), cfg.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls_node = NodeProcess::start_tcp("authz-tls", &tls_addr, &flags);
    let port = tls_addr.rsplit(':').next().expect("port");
    wrong.extend(
        check_table(
            "volmig.v1.Node",
            &format!("https://localhost:{port}"),
            &cert_creds,
            Code::PermissionDenied,
            node_id,
        )
        .await,
    );
    let tls_ctl_addr = format!("127.0.0.1:{}", free_port());
    let tls_ctl = ControllerProcess::start_tcp(
        "authz-tls-ctl",
        &tls_ctl_addr,
        &format!("{}{config}", server.toml()),
        &[],
    );
    let port = tls_ctl_addr.rsplit(':').next().expect("port");
    for service in ["volmig.v1.Controller", "volmig.v1.Fleet"] {
        wrong.extend(
            check_table(
                service,
                &format!("https://localhost:{port}"),
                &cert_creds,
                Code::PermissionDenied,
                node_id,
            )
            .await,
        );
    }
    drop((node, ctl, tls_node, tls_ctl));
    harness::remove_dir_noisy(&dir);
    assert!(
        wrong.is_empty(),
        "rows that disagree:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_names_the_role_needed() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("authz-msg"));
    let config = grants("tokens", ["v", "o", "n"], "n1");
    let cfg_file = dir.join("node.toml");
    std::fs::write(&cfg_file, config).expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = cfg_file.display().to_string();
    let node = NodeProcess::start_tcp("authz-msg", &addr, &["--config", &cfg]);
    let creds = Credentials::new(None, Some("v")).expect("token");
    let channel = client::connect_with(Peer::Node, &format!("http://{addr}"), &creds)
        .await
        .expect("connect");
    let err = proto::node_client::NodeClient::new(channel)
        .cancel_migration(proto::CancelMigrationRequest {
            migration_id: "m".into(),
        })
        .await
        .expect_err("a viewer may not cancel");
    drop(node);
    harness::remove_dir_noisy(&dir);
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("token:viewer-token") && err.message().contains("operator role"),
        "{}",
        err.message()
    );
}
