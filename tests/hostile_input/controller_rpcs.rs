//! Every RPC of the controller, called with every hostile input.

use volmig::proto;
use volmig::proto::controller_client::ControllerClient;

use crate::corpus::{base, corpus, spoil, NUMBERS, REQUEST_FIELDS};
use crate::tally::{first, Client, Tally};

pub async fn controller_rpcs(
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
        for (field, req) in [
            (
                "pool",
                proto::SetPoolMaintenanceRequest {
                    pool: s.clone(),
                    maintenance: true,
                    reason: String::new(),
                },
            ),
            (
                "reason",
                proto::SetPoolMaintenanceRequest {
                    pool: "volmig-none".into(),
                    maintenance: true,
                    reason: s.clone(),
                },
            ),
        ] {
            tally
                .check(
                    "Controller/SetPoolMaintenance",
                    &format!("{field}={what}"),
                    Box::pin(async { c.clone().set_pool_maintenance(req).await.map(|_| ()) }),
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
