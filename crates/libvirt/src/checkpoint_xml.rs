//! Reading and rewriting libvirt checkpoint XML (`<domaincheckpoint>`).
//!
//! A checkpoint names, per disk, the persistent dirty bitmap that records the
//! writes since it was taken, and embeds the domain definition of that moment.
//! After a disk moved, the embedded definition is pointed at the new source so
//! the metadata describes where the checkpoint's data now lives.

use crate::domain_xml::retarget_disk;
use crate::xml_tree::{self, Element};
use volmig_engine::hypervisor::{Checkpoint, CheckpointDisk, DiskSource, ImageFormat};

/// Parses a checkpoint document (as `virDomainCheckpointGetXMLDesc` returns it,
/// with or without `size` attributes and the embedded domain).
pub fn parse_checkpoint(xml: &str) -> Result<Checkpoint, String> {
    let root = xml_tree::parse(xml)?;
    if root.name != "domaincheckpoint" {
        return Err(format!(
            "expected <domaincheckpoint>, found <{}>",
            root.name
        ));
    }
    let name = root
        .child("name")
        .map(|n| n.text.clone())
        .filter(|n| !n.is_empty())
        .ok_or("checkpoint without a name")?;
    let disks = root
        .child("disks")
        .map(|disks| {
            disks
                .children_named("disk")
                .filter_map(|d| {
                    let target = d.attr("name")?.to_string();
                    let bitmap = match d.attr("checkpoint") {
                        Some("no") => None,
                        // libvirt names the bitmap after the checkpoint unless told otherwise.
                        _ => Some(d.attr("bitmap").unwrap_or(&name).to_string()),
                    };
                    let dirty_bytes = d.attr("size").and_then(|s| s.parse().ok());
                    Some(CheckpointDisk {
                        target,
                        bitmap,
                        dirty_bytes,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Checkpoint { name, disks })
}

/// The checkpoint document with its embedded domain's `target` disk moved to
/// `source` in `format`; everything else as it was. A checkpoint without an
/// embedded domain (or without that disk in it) is returned unchanged.
pub fn retarget_checkpoint(
    xml: &str,
    target: &str,
    source: &DiskSource,
    format: ImageFormat,
) -> Result<String, String> {
    let mut root = xml_tree::parse(xml)?;
    let disk = root
        .child_mut("domain")
        .and_then(|d| d.child_mut("devices"))
        .and_then(|devices| {
            devices.children.iter_mut().find(|d| {
                d.name == "disk" && d.find(&["target"]).and_then(|t| t.attr("dev")) == Some(target)
            })
        });
    if let Some(disk) = disk {
        let old = std::mem::replace(disk, Element::new("disk"));
        // Flattened: SHALLOW copies of disks with checkpoints are refused.
        *disk = retarget_disk(old, source, format, &[]);
    }
    Ok(root.to_xml())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZED: &str = r#"<domaincheckpoint>
  <name>cp3</name>
  <parent><name>cp2</name></parent>
  <creationTime>1795866609</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='cp3' size='65536'/>
    <disk name='vdb' checkpoint='bitmap' bitmap='cp3'/>
    <disk name='vdc' checkpoint='no'/>
  </disks>
</domaincheckpoint>"#;

    #[test]
    fn reads_bitmaps_and_sizes_per_disk() {
        let cp = parse_checkpoint(SIZED).expect("parse");
        assert_eq!(cp.name, "cp3");
        assert_eq!(
            cp.disks,
            vec![
                CheckpointDisk {
                    target: "vda".into(),
                    bitmap: Some("cp3".into()),
                    dirty_bytes: Some(65536),
                },
                CheckpointDisk {
                    target: "vdb".into(),
                    bitmap: Some("cp3".into()),
                    dirty_bytes: None,
                },
                CheckpointDisk {
                    target: "vdc".into(),
                    bitmap: None,
                    dirty_bytes: None,
                },
            ]
        );
        assert!(cp.bitmap_on("vda").is_some());
        assert!(cp.bitmap_on("vdc").is_none());
        assert!(parse_checkpoint("<domain/>").is_err());
    }

    #[test]
    fn moves_only_the_migrated_disk_of_the_embedded_domain() {
        let xml = r#"<domaincheckpoint><name>cp1</name><parent><name>cp0</name></parent>
  <disks><disk name='vda' checkpoint='bitmap' bitmap='cp1'/></disks>
  <domain type='qemu'><name>g</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/pools/a/root.qcow2'/><backingStore/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/pools/a/data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  </devices></domain></domaincheckpoint>"#;
        let dest = DiskSource::File {
            path: "/pools/b/root.qcow2".into(),
        };
        let out = retarget_checkpoint(xml, "vda", &dest, ImageFormat::Qcow2).expect("rewrite");
        let root = xml_tree::parse(&out).expect("reparse");
        let disks: Vec<_> = root
            .find(&["domain", "devices"])
            .expect("devices")
            .children_named("disk")
            .filter_map(|d| d.child("source").and_then(|s| s.attr("file")))
            .collect();
        assert_eq!(disks, vec!["/pools/b/root.qcow2", "/pools/a/data.qcow2"]);
        assert_eq!(
            root.find(&["parent", "name"]).map(|n| n.text.as_str()),
            Some("cp0")
        );
        assert_eq!(parse_checkpoint(&out).expect("parse").name, "cp1");
        // Without an embedded domain the document is kept as it is.
        let bare = "<domaincheckpoint><name>c</name></domaincheckpoint>";
        let same = retarget_checkpoint(bare, "vda", &dest, ImageFormat::Qcow2).expect("bare");
        assert_eq!(xml_tree::parse(&same), xml_tree::parse(bare));
    }
}
