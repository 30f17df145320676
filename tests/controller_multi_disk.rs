//! End-to-end: a multi-disk migration placed by the controller. Each pool of
//! this test takes one migration at a time (`max_in_flight = 1`), so two disks
//! must spread over two pools: placement counts the first disk against its pool
//! before it judges the second, and `same_pool` is refused with the disk that
//! no pool can take together with the others.

mod harness;

use std::time::Duration;

use harness::checks::assert_on_destination;
use harness::controller::{cli_events, tagged_pools_config, wait_nodes_up, ControllerProcess};
use harness::node::NodeProcess;
use harness::{DirPool, Guest};
use volmig::proto;

const MIB: u64 = 1 << 20;
const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn two_disks_spread_over_pools_that_take_one_migration_each() {
    let src = DirPool::new("cm-src");
    let a = DirPool::new("cm-a");
    let b = DirPool::new("cm-b");
    let guest = Guest::builder("cm", &src)
        .format("qcow2")
        .disk_bytes(64 * MIB)
        .data_disk_prewritten(32 * MIB, "qcow2")
        .pause_ms(20)
        .start();
    guest.wait_writing(10, BOOT);
    let tag = harness::unique_name("tag");
    let config = tagged_pools_config(&tag, &[&a, &b], "max_in_flight = 1\n");
    let ctl = ControllerProcess::start("cm-ctl", &config);
    let node = NodeProcess::start("cm-n1", &["--controller", &ctl.endpoint()]);
    wait_nodes_up(&ctl, &[node.node_id()]).await;
    let mut client = ctl.client().await;
    let request = |same_pool: bool| proto::MigrateVolumeRequest {
        domain: guest.name().to_string(),
        all_disks: true,
        required_tags: vec![tag.clone()],
        same_pool,
        ..Default::default()
    };

    let plan = client
        .plan_migration(request(false))
        .await
        .expect("plan")
        .into_inner();
    let chosen: Vec<&str> = plan.disks.iter().map(|d| d.chosen_pool.as_str()).collect();
    assert_eq!(chosen.len(), 2, "{plan:#?}");
    assert_ne!(chosen[0], chosen[1], "both disks on one pool: {plan:#?}");
    let second = &plan.disks[1];
    let rejected = second
        .candidates
        .iter()
        .find(|c| c.pool == chosen[0])
        .expect("the first disk's pool judged for the second");
    assert_eq!(rejected.rejected_by, "in_flight_limit", "{rejected:#?}");

    let refused = client
        .migrate_volume(request(true))
        .await
        .expect_err("no pool takes both disks");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("disk vdb"), "{refused:?}");

    // The operator's way: the CLI through the controller, one JSON object per event.
    let events = cli_events(&[
        "migrate",
        "--controller",
        &ctl.endpoint(),
        "--domain",
        guest.name(),
        "--all-disks",
        "--tag",
        &tag,
    ]);
    let last = events.last().expect("events");
    assert_eq!(last["phase"], "PHASE_COMPLETED", "{last:#}");
    let disks = last["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 2, "{last:#}");
    let mut pools = Vec::new();
    for d in disks {
        let target = d["disk"].as_str().expect("disk");
        let result = proto::MigrationResult {
            destination_source: d["result"]["destination_source"]
                .as_str()
                .expect("destination_source")
                .to_string(),
            ..Default::default()
        };
        assert_on_destination(&guest, target, &result);
        pools.push(d["result"]["destination_pool"].as_str().map(str::to_string));
    }
    assert_ne!(pools[0], pools[1], "{last:#}");
    guest.verify_data_after_cold_restart();
}
