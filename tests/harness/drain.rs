//! Driving `volmig drain` in tests: the CLI through a controller, its JSON,
//! and the checks of a moved item.

use super::checks::assert_on_destination;
use super::controller::ControllerProcess;
use super::{volmig, Guest, Pool};
use volmig::proto;

/// `volmig ARGS --controller URL`: exit code and stdout (stderr is printed on failure).
pub fn cli(ctl: &ControllerProcess, args: &[&str]) -> (i32, String) {
    let endpoint = ctl.endpoint();
    let mut full = args.to_vec();
    full.extend(["--controller", &endpoint]);
    let (code, stdout, stderr) = volmig(&full, &[]);
    if code != 0 {
        eprintln!("volmig {full:?} exited {code}:\n{stderr}");
    }
    (code, stdout)
}

/// `drain SRC --to-pool DST --max-parallel 2 --per-node 2 --bandwidth-budget
/// BUDGET --json` and `extra`: every guest of one node may copy at once, within
/// the shared budget.
pub fn drain_both_at_once<'a>(
    src: &'a str,
    dst: &'a str,
    budget: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "drain",
        src,
        "--to-pool",
        dst,
        "--max-parallel",
        "2",
        "--per-node",
        "2",
        "--bandwidth-budget",
        budget,
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// One JSON value per line of `out` (a followed drain's `--json`).
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The planned or moved item of `domain` among `items`.
pub fn item_of<'a>(items: &'a serde_json::Value, domain: &str) -> &'a serde_json::Value {
    items
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["domain"] == domain)
        .unwrap_or_else(|| panic!("{domain} not an item: {items:#}"))
}

/// The `reason_code` of what stays: a domain, or a volume by name.
pub fn left_reason(left: &serde_json::Value, what: &str) -> String {
    left.as_array()
        .expect("left")
        .iter()
        .find(|l| {
            l["domain"] == what
                || l["volumes"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == what))
        })
        .unwrap_or_else(|| panic!("{what} not left behind: {left:#}"))["reason_code"]
        .as_str()
        .expect("reason_code")
        .to_string()
}

/// `item` is done, each of `disks` moved to `dst`, and both definitions of
/// `guest` name its new source.
pub fn assert_moved(guest: &Guest, item: &serde_json::Value, disks: &[&str], dst: &dyn Pool) {
    assert_eq!(item["state"], "DRAIN_ITEM_STATE_DONE", "{item:#}");
    let moves = item["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), disks.len(), "{item:#}");
    for disk in disks {
        let m = moves
            .iter()
            .find(|m| m["disk"] == *disk)
            .unwrap_or_else(|| panic!("{disk} not moved: {item:#}"));
        assert_eq!(m["new_pool"], dst.name(), "{m:#}");
        let result = proto::MigrationResult {
            destination_source: m["new_source"].as_str().expect("new_source").to_string(),
            ..Default::default()
        };
        assert_on_destination(guest, disk, &result);
    }
}
