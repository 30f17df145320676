//! Reading libvirt snapshot metadata (`<domainsnapshot>`) and rewriting the
//! image paths it names, so that snapshots follow a backing chain that moved.
//!
//! A snapshot stores the domain definitions of its moment (`<domain>`, and
//! since libvirt 9.0 `<inactiveDomain>`), whose disks and backing chains name
//! images, and per disk the overlay it started (`<disks><disk><source>`).
//! Every one of those paths must follow the move, or reverting and deleting
//! would touch the old files.

use super::xml_tree::{self, Element};
use volmig_engine::hypervisor::{SnapshotDiskMode, SnapshotSpec};

/// The facts of one snapshot's XML.
pub fn parse_snapshot(xml: &str) -> Result<SnapshotSpec, String> {
    let root = xml_tree::parse(xml)?;
    let name = root
        .child("name")
        .map(|n| n.text.trim().to_string())
        .ok_or("snapshot XML without <name>")?;
    let state = root
        .child("state")
        .map(|n| n.text.trim().to_string())
        .unwrap_or_default();
    // A memory image in a file (`<memory snapshot='external' file=…>`) or
    // inside the disks (an internal snapshot of a running domain).
    let memory_mode = root.child("memory").and_then(|m| m.attr("snapshot"));
    let has_memory =
        matches!(memory_mode, Some("external") | Some("internal")) || is_run_state(&state);
    let disks = root
        .child("disks")
        .map(|d| {
            d.children_named("disk")
                .filter_map(|disk| {
                    let target = disk.attr("name")?.to_string();
                    let mode = match disk.attr("snapshot") {
                        Some("external") => SnapshotDiskMode::External,
                        Some("no") => SnapshotDiskMode::No,
                        // libvirt's default for a qcow2 disk is internal.
                        _ => SnapshotDiskMode::Internal,
                    };
                    Some((target, mode))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut images = Vec::new();
    collect_images(&root, &mut images);
    Ok(SnapshotSpec {
        name,
        state,
        has_memory,
        disks,
        images,
    })
}

/// libvirt records the domain's run state for a snapshot with memory, and
/// `disk-snapshot` (or `shutoff` for an offline one) otherwise.
fn is_run_state(state: &str) -> bool {
    matches!(state, "running" | "paused" | "blocked" | "pmsuspended")
}

fn collect_images(el: &Element, out: &mut Vec<String>) {
    if el.name == "source" {
        if let Some(file) = el.attr("file") {
            out.push(file.to_string());
        }
    }
    for child in &el.children {
        collect_images(child, out);
    }
}

/// The snapshot XML with every `<source file=…>` that equals an old path of
/// `renames` (old, new) replaced by its new path; nothing else changes.
pub fn rewrite_images(xml: &str, renames: &[(String, String)]) -> Result<String, String> {
    let mut root = xml_tree::parse(xml)?;
    rewrite(&mut root, renames);
    Ok(root.to_xml())
}

fn rewrite(el: &mut Element, renames: &[(String, String)]) {
    if el.name == "source" {
        let new = el
            .attr("file")
            .and_then(|f| renames.iter().find(|(old, _)| old == f))
            .map(|(_, new)| new.clone());
        if let Some(new) = new {
            el.set_attr("file", new);
        }
    }
    for child in &mut el.children {
        rewrite(child, renames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK_ONLY: &str = r#"<domainsnapshot><name>s1</name><state>disk-snapshot</state>
      <memory snapshot='no'/>
      <disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>
        <source file='/src/s1.qcow2'/></disk></disks>
      <domain type='qemu'><name>g</name><devices>
        <disk type='file' device='disk'><source file='/src/top.qcow2'/>
          <backingStore type='file'><source file='/src/tmpl.qcow2'/></backingStore>
          <target dev='vda'/></disk>
        <serial type='file'><source path='/log'/></serial>
      </devices></domain>
      <inactiveDomain type='qemu'><devices><disk type='file' device='disk'>
        <source file='/src/top.qcow2'/><target dev='vda'/></disk></devices></inactiveDomain>
    </domainsnapshot>"#;

    #[test]
    fn reads_a_disk_only_external_snapshot() {
        let s = parse_snapshot(DISK_ONLY).expect("parse");
        assert_eq!(s.name, "s1");
        assert!(!s.has_memory);
        assert_eq!(
            s.disks,
            vec![("vda".to_string(), SnapshotDiskMode::External)]
        );
        assert_eq!(
            s.images,
            vec![
                "/src/s1.qcow2",
                "/src/top.qcow2",
                "/src/tmpl.qcow2",
                "/src/top.qcow2"
            ]
        );
    }

    #[test]
    fn memory_and_internal_snapshots_are_told_apart() {
        let s = parse_snapshot(
            "<domainsnapshot><name>m</name><state>running</state>\
             <memory snapshot='external' file='/m.save'/>\
             <disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>",
        )
        .expect("parse");
        assert!(s.has_memory);
        assert_eq!(
            s.disks,
            vec![("vda".to_string(), SnapshotDiskMode::Internal)]
        );
    }

    #[test]
    fn rewrites_every_named_image_and_nothing_else() {
        let renames = vec![
            ("/src/s1.qcow2".to_string(), "/dst/s1.qcow2".to_string()),
            ("/src/top.qcow2".to_string(), "/dst/top.qcow2".to_string()),
            ("/src/tmpl.qcow2".to_string(), "/dst/tmpl.qcow2".to_string()),
        ];
        let xml = rewrite_images(DISK_ONLY, &renames).expect("rewrite");
        let s = parse_snapshot(&xml).expect("parse");
        assert!(s.images.iter().all(|i| i.starts_with("/dst/")), "{xml}");
        assert!(
            xml.contains("path=\"/log\"") || xml.contains("path='/log'"),
            "{xml}"
        );
    }
}
