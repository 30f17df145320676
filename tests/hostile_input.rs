//! End-to-end: a generated corpus of hostile inputs (XML metacharacters,
//! `..`, NUL and control characters, terminal escapes, 1 MB strings,
//! unicode, boundary numbers) through every RPC of a real node and a real
//! controller. Every answer must be one of INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, OUT_OF_RANGE, FAILED_PRECONDITION (or OK for a read
//! that finds nothing) — never INTERNAL, UNKNOWN or UNAVAILABLE — neither
//! process may panic, and no log line may carry a raw control character.

mod harness;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use harness::controller::{wait_nodes_up, ControllerProcess};
use harness::node::NodeProcess;
use tonic::Code;
use volmig::proto;
use volmig::proto::controller_client::ControllerClient;
use volmig::proto::node_client::NodeClient;

type Client<T> = T;
type Call<'a> = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

/// The hostile strings.
fn corpus() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("empty", ""),
        ("xml", "a'b\"<c>&d]]></source><disk>"),
        (
            "xml entity",
            "&lt;&#0;&x;<!ENTITY x SYSTEM \"file:///etc/passwd\">",
        ),
        ("dotdot", ".."),
        ("path traversal", "../../etc/shadow"),
        ("absolute traversal", "/var/lib/../../etc/shadow"),
        ("nul", "vda\0evil"),
        (
            "newline log forgery",
            "web01\n2026-01-01T00:00:00Z  INFO volmig: forged line",
        ),
        ("terminal escape", "web01\x1b[2J\x1b]0;owned\x07"),
        ("carriage return", "web01\rINFO forged"),
        ("tab and DEL", "a\tb\x7f"),
        ("unicode", "ドメイン-é-\u{202e}txt.exe"),
        ("emoji", "💥"),
        ("spaces", "   "),
        ("dash option", "--help"),
        ("shell", "$(reboot);`id`|rm -rf /"),
        ("url", "http://169.254.169.254/latest/meta-data"),
        ("unix url", "unix:///run/volmig/node.sock"),
        ("percent", "%s%n%x%00"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    out.push(("4 KiB".into(), "x".repeat(4096)));
    out.push(("1 MB".into(), "y".repeat(1_000_000)));
    out.push(("1 MB of NULs".into(), "\0".repeat(1_000_000)));
    out
}

/// Numbers at and around the limits of their fields.
const NUMBERS: [u64; 8] = [
    0,
    1,
    (1 << 20) - 1,
    1 << 53,
    (1 << 53) + 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

const ENUMS: [i32; 5] = [-1, 0, 3, 99, i32::MAX];

fn allowed(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::FailedPrecondition
    )
}

/// A migration request whose fields are all harmless (nothing would start:
/// the domain does not exist), to be spoiled one field at a time.
fn base() -> proto::MigrateVolumeRequest {
    proto::MigrateVolumeRequest {
        domain: "volmig-hostile-no-such-domain".into(),
        disk: "vda".into(),
        destination_pool: "volmig-hostile-no-such-pool".into(),
        ..Default::default()
    }
}

/// Spoils one string field of a migration request.
fn spoil(field: &str, value: &str) -> proto::MigrateVolumeRequest {
    let mut r = base();
    match field {
        "request_id" => r.request_id = value.into(),
        "domain" => r.domain = value.into(),
        "disk" => r.disk = value.into(),
        "destination_pool" => r.destination_pool = value.into(),
        "destination_volume" => r.destination_volume = value.into(),
        "required_tags" => r.required_tags = vec![value.into()],
        "source_users_elsewhere" => {
            r.options = Some(proto::MigrationOptions {
                source_users_elsewhere: vec![value.into()],
                ..Default::default()
            })
        }
        multi => {
            // A multi-disk request with one entry spoiled.
            r.disk.clear();
            let mut entry = proto::DiskDestination {
                disk: "vda".into(),
                ..Default::default()
            };
            match multi {
                "disks.disk" => entry.disk = value.into(),
                "disks.destination_pool" => entry.destination_pool = value.into(),
                "disks.destination_volume" => entry.destination_volume = value.into(),
                "disks.source_users_elsewhere" => entry.source_users_elsewhere = vec![value.into()],
                other => panic!("no field {other}"),
            }
            r.disks = vec![entry];
        }
    }
    r
}

const REQUEST_FIELDS: [&str; 11] = [
    "request_id",
    "domain",
    "disk",
    "destination_pool",
    "destination_volume",
    "required_tags",
    "source_users_elsewhere",
    "disks.disk",
    "disks.destination_pool",
    "disks.destination_volume",
    "disks.source_users_elsewhere",
];

/// Counts of codes per RPC, and the calls that broke the rule.
#[derive(Default)]
struct Tally {
    codes: BTreeMap<String, BTreeMap<String, usize>>,
    wrong: Vec<String>,
}

impl Tally {
    async fn check(&mut self, rpc: &str, what: &str, call: Call<'_>) {
        let code = match call.await {
            Ok(()) => Code::Ok,
            Err(s) => s.code(),
        };
        *self
            .codes
            .entry(rpc.to_string())
            .or_default()
            .entry(format!("{code:?}"))
            .or_default() += 1;
        if !allowed(code) {
            self.wrong.push(format!("{rpc} with {what}: {code:?}"));
        }
    }
}

/// Reads a stream's first answer, so a refusal carried in it counts.
async fn first<T>(
    resp: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<(), tonic::Status> {
    resp?.into_inner().message().await.map(|_| ())
}

async fn node_rpcs(tally: &mut Tally, c: &mut Client<NodeClient<tonic::transport::Channel>>) {
    for (name, s) in corpus() {
        let what = format!("{name:?}");
        tally
            .check(
                "Node/ListDisks",
                &what,
                Box::pin(async {
                    c.clone()
                        .list_disks(proto::ListDisksRequest { domain: s.clone() })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        for field in REQUEST_FIELDS {
            let req = spoil(field, &s);
            tally
                .check(
                    "Node/MigrateVolume",
                    &format!("{field}={what}"),
                    Box::pin(async { first(c.clone().migrate_volume(req).await).await }),
                )
                .await;
        }
        tally
            .check(
                "Node/WatchMigration",
                &what,
                Box::pin(async {
                    first(
                        c.clone()
                            .watch_migration(proto::WatchMigrationRequest {
                                migration_id: s.clone(),
                            })
                            .await,
                    )
                    .await
                }),
            )
            .await;
        tally
            .check(
                "Node/CancelMigration",
                &what,
                Box::pin(async {
                    c.clone()
                        .cancel_migration(proto::CancelMigrationRequest {
                            migration_id: s.clone(),
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        tally
            .check(
                "Node/GetMigration",
                &what,
                Box::pin(async {
                    c.clone()
                        .get_migration(proto::GetMigrationRequest {
                            migration_id: s.clone(),
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        for (field, req) in [
            (
                "domain",
                proto::ListMigrationsRequest {
                    domain: s.clone(),
                    ..Default::default()
                },
            ),
            (
                "node_id",
                proto::ListMigrationsRequest {
                    node_id: s.clone(),
                    ..Default::default()
                },
            ),
        ] {
            tally
                .check(
                    "Node/ListMigrations",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().list_migrations(req).await.map(|_| ()) }),
                )
                .await;
        }
        for (field, req) in [
            (
                "source",
                proto::FindVolumeUsersRequest {
                    source: s.clone(),
                    exclude_domain: String::new(),
                },
            ),
            (
                "exclude_domain",
                proto::FindVolumeUsersRequest {
                    source: "/var/tmp/volmig-none".into(),
                    exclude_domain: s.clone(),
                },
            ),
        ] {
            tally
                .check(
                    "Node/FindVolumeUsers",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().find_volume_users(req).await.map(|_| ()) }),
                )
                .await;
        }
        tally
            .check(
                "Node/SetBandwidth",
                &what,
                Box::pin(async {
                    c.clone()
                        .set_bandwidth(proto::SetBandwidthRequest {
                            migration_id: s.clone(),
                            bytes_per_sec: 1 << 20,
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
    }
    for n in NUMBERS {
        let what = format!("{n}");
        tally
            .check(
                "Node/SetBandwidth",
                &what,
                Box::pin(async {
                    c.clone()
                        .set_bandwidth(proto::SetBandwidthRequest {
                            migration_id: "volmig-none".into(),
                            bytes_per_sec: n,
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        let mut req = base();
        req.options = Some(proto::MigrationOptions {
            bandwidth_bytes_per_sec: n,
            timeout_seconds: n,
            ..Default::default()
        });
        tally
            .check(
                "Node/MigrateVolume",
                &format!("numbers={what}"),
                Box::pin(async { first(c.clone().migrate_volume(req).await).await }),
            )
            .await;
        let req = proto::ListMigrationsRequest {
            started_after_unix_ms: n,
            started_before_unix_ms: n,
            ..Default::default()
        };
        tally
            .check(
                "Node/ListMigrations",
                &format!("times={what}"),
                Box::pin(async { c.clone().list_migrations(req).await.map(|_| ()) }),
            )
            .await;
    }
    for e in ENUMS {
        let mut req = base();
        req.destination_format = e;
        req.options = Some(proto::MigrationOptions {
            copy_mode: e,
            chain_policy: e,
            source_policy: e,
            verify: e,
            ..Default::default()
        });
        tally
            .check(
                "Node/MigrateVolume",
                &format!("enums={e}"),
                Box::pin(async { first(c.clone().migrate_volume(req).await).await }),
            )
            .await;
        let req = proto::ListMigrationsRequest {
            phases: vec![e],
            ..Default::default()
        };
        tally
            .check(
                "Node/ListMigrations",
                &format!("phase={e}"),
                Box::pin(async { c.clone().list_migrations(req).await.map(|_| ()) }),
            )
            .await;
    }
}

async fn controller_rpcs(
    tally: &mut Tally,
    c: &mut Client<ControllerClient<tonic::transport::Channel>>,
) {
    for (name, s) in corpus() {
        let what = format!("{name:?}");
        for field in REQUEST_FIELDS {
            let req = spoil(field, &s);
            let plan = req.clone();
            tally
                .check(
                    "Controller/PlanMigration",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().plan_migration(plan).await.map(|_| ()) }),
                )
                .await;
            tally
                .check(
                    "Controller/MigrateVolume",
                    &format!("{field}={what}"),
                    Box::pin(async { first(c.clone().migrate_volume(req).await).await }),
                )
                .await;
        }
        tally
            .check(
                "Controller/WatchMigration",
                &what,
                Box::pin(async {
                    first(
                        c.clone()
                            .watch_migration(proto::WatchMigrationRequest {
                                migration_id: s.clone(),
                            })
                            .await,
                    )
                    .await
                }),
            )
            .await;
        tally
            .check(
                "Controller/CancelMigration",
                &what,
                Box::pin(async {
                    c.clone()
                        .cancel_migration(proto::CancelMigrationRequest {
                            migration_id: s.clone(),
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        tally
            .check(
                "Controller/GetMigration",
                &what,
                Box::pin(async {
                    c.clone()
                        .get_migration(proto::GetMigrationRequest {
                            migration_id: s.clone(),
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        tally
            .check(
                "Controller/SetBandwidth",
                &what,
                Box::pin(async {
                    c.clone()
                        .set_bandwidth(proto::SetBandwidthRequest {
                            migration_id: s.clone(),
                            bytes_per_sec: 1 << 20,
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        for (field, req) in [
            (
                "domain",
                proto::ListMigrationsRequest {
                    domain: s.clone(),
                    ..Default::default()
                },
            ),
            (
                "node_id",
                proto::ListMigrationsRequest {
                    node_id: s.clone(),
                    ..Default::default()
                },
            ),
        ] {
            tally
                .check(
                    "Controller/ListMigrations",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().list_migrations(req).await.map(|_| ()) }),
                )
                .await;
        }
        tally
            .check(
                "Controller/ListNodes",
                &what,
                Box::pin(async {
                    c.clone()
                        .list_nodes(proto::ListNodesRequest {})
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        tally
            .check(
                "Controller/ListPools",
                &what,
                Box::pin(async {
                    c.clone()
                        .list_pools(proto::ListClusterPoolsRequest {})
                        .await
                        .map(|_| ())
                }),
            )
            .await;
    }
    for n in NUMBERS {
        let what = format!("{n}");
        tally
            .check(
                "Controller/SetBandwidth",
                &what,
                Box::pin(async {
                    c.clone()
                        .set_bandwidth(proto::SetBandwidthRequest {
                            migration_id: "volmig-none".into(),
                            bytes_per_sec: n,
                        })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
        let mut req = base();
        req.options = Some(proto::MigrationOptions {
            bandwidth_bytes_per_sec: n,
            timeout_seconds: n,
            ..Default::default()
        });
        tally
            .check(
                "Controller/PlanMigration",
                &format!("numbers={what}"),
                Box::pin(async { c.clone().plan_migration(req).await.map(|_| ()) }),
            )
            .await;
    }
    // Last: registrations (a valid one would add a node that cannot be
    // reached, which later calls would rightly report UNAVAILABLE).
    for (name, s) in corpus() {
        let what = format!("{name:?}");
        for (field, req) in [
            (
                "node_id",
                proto::RegisterNodeRequest {
                    node_id: s.clone(),
                    endpoint: "http://".into(),
                    info: None,
                },
            ),
            (
                "endpoint",
                proto::RegisterNodeRequest {
                    node_id: "volmig-hostile".into(),
                    endpoint: s.clone(),
                    info: None,
                },
            ),
            (
                "endpoint",
                proto::RegisterNodeRequest {
                    node_id: "volmig-hostile".into(),
                    endpoint: format!("http://{s}:1"),
                    info: None,
                },
            ),
            (
                "endpoint",
                proto::RegisterNodeRequest {
                    node_id: "volmig-hostile".into(),
                    endpoint: format!("unix:///{s}"),
                    info: None,
                },
            ),
        ] {
            tally
                .check(
                    "Controller/RegisterNode",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().register_node(req).await.map(|_| ()) }),
                )
                .await;
        }
    }
}

/// Lines of `log` that carry a raw control character.
fn raw_control_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.chars().any(|c| c.is_control()))
        .map(|l| l.escape_debug().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_inputs_through_every_rpc_get_contract_codes_and_clean_logs() {
    let ctl = ControllerProcess::start(
        "hostile-ctl",
        "heartbeat_interval_seconds = 1\ndown_after_seconds = 30\n",
    );
    let endpoint = ctl.endpoint();
    let node = NodeProcess::start("hostile-node", &["--controller", &endpoint]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;

    let mut tally = Tally::default();
    let mut nc = node.client().await;
    node_rpcs(&mut tally, &mut nc).await;
    let mut cc = ctl.client().await;
    controller_rpcs(&mut tally, &mut cc).await;

    for (rpc, codes) in &tally.codes {
        eprintln!("{rpc:<28} {codes:?}");
    }
    // Both still serve.
    nc.get_info(proto::GetInfoRequest {})
        .await
        .expect("node alive");
    cc.list_nodes(proto::ListNodesRequest {})
        .await
        .expect("controller alive");
    let (node_log, ctl_log) = (node.log(), ctl.log());
    assert!(
        tally.wrong.is_empty(),
        "codes outside the contract:\n{}",
        tally.wrong.join("\n")
    );
    for (who, log) in [("node", &node_log), ("controller", &ctl_log)] {
        assert!(!log.contains("panicked"), "{who} panicked:\n{log}");
        let bad = raw_control_lines(log);
        assert!(
            bad.is_empty(),
            "{who} log lines with raw control characters:\n{}",
            bad.join("\n")
        );
        assert!(
            !log.contains("forged line\n") || !log.lines().any(|l| l.starts_with("2026-01-01")),
            "{who}: forged line"
        );
    }
}
