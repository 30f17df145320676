//! Process metrics read from `/proc/self` at scrape time (prometheus-client
//! has no process collector): resident memory, CPU time, open descriptors.
//! A value that cannot be read is left out of the scrape, never invented.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The collector of this process's metrics.
#[derive(Debug)]
pub(super) struct Process;

/// `utime + stime` in seconds, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the C library; no memory is shared.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Resident set size in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the C library; no memory is shared.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

/// Open file descriptors (the directory's own handle not counted).
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n.saturating_sub(1)).ok()
}

/// Writes one metric without labels.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(v) = cpu_seconds() {
            emit(
                &mut encoder,
                "process_cpu_seconds",
                "User and system CPU time this process has used",
                ConstCounter::new(v),
            )?;
        }
        if let Some(v) = resident_bytes() {
            emit(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of this process",
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
            )?;
        }
        if let Some(v) = open_fds() {
            emit(
                &mut encoder,
                "process_open_fds",
                "File descriptors this process has open",
                ConstGauge::new(v),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_is_read() {
        assert!(cpu_seconds().is_some_and(|v| v >= 0.0));
        assert!(resident_bytes().is_some_and(|v| v > 0));
        assert!(open_fds().is_some_and(|v| v > 0));
    }
}
