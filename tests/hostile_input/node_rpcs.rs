//! Every RPC of the node, called with every hostile input.

use volmig::proto;
use volmig::proto::node_client::NodeClient;

use crate::corpus::{base, corpus, spoil, ENUMS, NUMBERS, REQUEST_FIELDS};
use crate::tally::{first, Client, Tally};

pub async fn node_rpcs(tally: &mut Tally, c: &mut Client<NodeClient<tonic::transport::Channel>>) {
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
                "Node/ListPoolVolumes",
                &what,
                Box::pin(async {
                    c.clone()
                        .list_pool_volumes(proto::ListPoolVolumesRequest { pool: s.clone() })
                        .await
                        .map(|_| ())
                }),
            )
            .await;
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
