//! Nodes: what one is and can do (`info`), and the controller's list (`nodes`).

use super::{disk_type, field, word};
use crate::cli::progress::{format_name, or_dash};
use crate::cli::quantities::utc_time;
use crate::cli::table::Table;
use crate::proto::{NodeInfo, NodeStatus};

/// What a node is and can do (`info`).
pub fn node_info(i: &NodeInfo) -> String {
    let caps = i.capabilities.clone().unwrap_or_default();
    let mut out = String::new();
    field(&mut out, "node id", &i.node_id);
    field(&mut out, "hostname", &i.hostname);
    field(&mut out, "volmig", &i.volmig_version);
    field(
        &mut out,
        "libvirt",
        &format!(
            "{} ({})",
            or_dash(&i.libvirt_version),
            or_dash(&i.libvirt_uri)
        ),
    );
    field(&mut out, "qemu", &i.hypervisor_version);
    let disk_types: Vec<String> = caps.disk_types().map(disk_type).collect();
    field(&mut out, "disk types", &disk_types.join(", "));
    let formats: Vec<&str> = caps.formats().map(format_name).collect();
    field(&mut out, "formats", &formats.join(", "));
    field(&mut out, "pool types", &caps.pool_types.join(", "));
    field(
        &mut out,
        "concurrency",
        &caps.max_concurrent_migrations.to_string(),
    );
    out
}

/// The controller's nodes.
pub fn nodes(nodes: &[NodeStatus]) -> String {
    let mut t = Table::new(&[
        "NODE",
        "STATE",
        "ENDPOINT",
        "HOSTNAME",
        "LIBVIRT",
        "QEMU",
        "LAST-SEEN",
        "SOURCE",
    ]);
    for n in nodes {
        let info = n.info.clone().unwrap_or_default();
        t.row(vec![
            n.node_id.clone(),
            word(n.state().as_str_name(), "NODE_STATE_"),
            n.endpoint.clone(),
            info.hostname,
            info.libvirt_version,
            info.hypervisor_version,
            utc_time(n.last_seen_unix_ms),
            if n.configured {
                "configured"
            } else {
                "registered"
            }
            .to_string(),
        ]);
    }
    t.render()
}
