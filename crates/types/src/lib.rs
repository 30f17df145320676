//! The vocabulary both sides of volmig speak: a migration's phases, how a host
//! describes its disks, pools and volumes, the checks every name passes, and
//! how sizes are printed. No I/O, no transport, no hypervisor.

pub mod host;
pub mod ownership;
pub mod phase;
pub mod retry;
pub mod units;
pub mod validate;
