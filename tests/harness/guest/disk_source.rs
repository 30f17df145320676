//! The parts of a domain XML's `<disk>` that tests look at.

use super::super::xml::{self, Element};

/// A disk as a domain XML describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSource {
    /// `<disk type=…>`: `file`, `block` or `network`.
    pub disk_type: String,
    /// `<disk device=…>`: `disk`, `cdrom`, …
    pub device: String,
    /// The file, the device, or for network disks the `name` (`radospool/image` for rbd).
    pub path: String,
    /// For network disks: `rbd`, …
    pub protocol: Option<String>,
    /// `<driver type=…>`: `raw`, `qcow2`.
    pub format: Option<String>,
    /// `<slices><slice type='storage' size=…>` if the source presents only a prefix.
    pub slice_size: Option<u64>,
    /// The backing chain libvirt shows (nearest first): usually only in the live XML.
    pub backing: Vec<String>,
    /// `<readonly/>`.
    pub readonly: bool,
    /// Whether the live XML shows a `<mirror>` (a block copy in progress).
    pub mirror: bool,
    /// Whether that mirror has caught up with its source (`<mirror ready=…>`,
    /// set once QEMU reports the copy ready and kept through pivot or abort).
    pub mirror_ready: bool,
}

fn source_path(source: &Element) -> String {
    ["file", "dev", "name", "volume"]
        .iter()
        .find_map(|a| source.attr(a))
        .unwrap_or_default()
        .to_string()
}

impl DiskSource {
    fn from_disk(disk: &Element) -> DiskSource {
        let source = disk.child("source");
        let mut backing = Vec::new();
        let mut node = disk.child("backingStore");
        while let Some(bs) = node {
            match bs.child("source") {
                Some(src) => backing.push(source_path(src)),
                None => break,
            }
            node = bs.child("backingStore");
        }
        DiskSource {
            disk_type: disk.attr("type").unwrap_or_default().to_string(),
            device: disk.attr("device").unwrap_or("disk").to_string(),
            path: source.map(source_path).unwrap_or_default(),
            protocol: source.and_then(|s| s.attr("protocol")).map(String::from),
            format: disk
                .child("driver")
                .and_then(|d| d.attr("type"))
                .map(String::from),
            slice_size: source
                .and_then(|s| s.find(&["slices", "slice"]))
                .and_then(|s| s.attr("size"))
                .and_then(|s| s.parse().ok()),
            backing,
            readonly: disk.child("readonly").is_some(),
            mirror: disk.child("mirror").is_some(),
            mirror_ready: disk
                .child("mirror")
                .is_some_and(|m| m.attr("ready").is_some()),
        }
    }
}

/// The disk with target `target` in a domain XML document.
pub fn disk_in_domain_xml(domain_xml: &str, target: &str) -> Result<DiskSource, String> {
    let root = xml::parse(domain_xml)?;
    let devices = root.child("devices").ok_or("no <devices>")?;
    let disk = devices
        .children_named("disk")
        .find(|d| d.child("target").and_then(|t| t.attr("dev")) == Some(target))
        .map(DiskSource::from_disk);
    disk.ok_or_else(|| format!("no disk with target {target}"))
}
