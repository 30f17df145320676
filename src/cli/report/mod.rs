//! Human-readable output of the one-shot commands: tables for lists,
//! `key  value` blocks for single objects. Pure functions of the replies, so
//! they are tested without a server.
//!
//! One module a family of replies: [`storage_report`] (pools, disks, volumes),
//! [`migration_report`] (`list`, `status`), [`node_report`] (`info`, `nodes`)
//! and [`plan_report`] (`plan`); this file holds the words and fields they share.

mod migration_report;
mod node_report;
mod plan_report;
mod storage_report;

pub use migration_report::{migrations, record};
pub use node_report::{node_info, nodes};
pub use plan_report::plan;
pub use storage_report::{cluster_pools, disks, pool_volumes, pools};

use super::quantities::human_bytes;
use crate::proto::DiskType;

/// An enum's proto name as a lowercase word without its prefix
/// (`POOL_STATE_RUNNING` → `running`), and `-` for UNSPECIFIED.
fn word(name: &str, prefix: &str) -> String {
    match name.strip_prefix(prefix).unwrap_or(name) {
        "UNSPECIFIED" => "-".to_string(),
        rest => rest.to_ascii_lowercase(),
    }
}

fn disk_type(t: DiskType) -> String {
    word(t.as_str_name(), "DISK_TYPE_")
}

fn size_or_dash(bytes: u64) -> String {
    if bytes == 0 {
        "-".to_string()
    } else {
        human_bytes(bytes)
    }
}

fn field(out: &mut String, name: &str, value: &str) {
    let value = if value.is_empty() { "-" } else { value };
    out.push_str(&format!("{name:<12} {value}\n"));
}
