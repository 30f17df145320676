//! Reading disks out of domain XML and writing `<disk>` elements for block copy
//! and for repairing a persistent definition.
//!
//! Every element is built through [`Element`], so values from requests, pools or
//! the domain itself are escaped on the way out.

use super::xml_tree::{self, Element};
use volmig_engine::hypervisor::{
    BackingLayer, CephAuth, CephHost, DiskSource, DiskSpec, ImageFormat, MirrorState,
};

/// Parses every `<disk>` under `<devices>`.
pub fn parse_disks(domain_xml: &str) -> Result<Vec<DiskSpec>, String> {
    let root = xml_tree::parse(domain_xml)?;
    let Some(devices) = root.child("devices") else {
        return Ok(Vec::new());
    };
    Ok(devices
        .children_named("disk")
        .filter_map(disk_spec)
        .collect())
}

/// One image a disk of a domain refers to: its own source or a layer of its
/// backing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The disk's target.
    pub target: String,
    /// The image, as [`DiskSource::display_name`] names it.
    pub name: String,
    /// A layer of the backing chain rather than the disk's own source.
    pub backing: bool,
    /// The disk is read-only.
    pub read_only: bool,
    /// The disk is shareable.
    pub shareable: bool,
}

/// Every image the disks of a domain refer to, backing chains included.
pub fn image_refs(domain_xml: &str) -> Result<Vec<ImageRef>, String> {
    let root = xml_tree::parse(domain_xml)?;
    let mut refs = Vec::new();
    let Some(devices) = root.child("devices") else {
        return Ok(refs);
    };
    for disk in devices.children_named("disk") {
        let Some(target) = disk.find(&["target"]).and_then(|t| t.attr("dev")) else {
            continue;
        };
        let (read_only, shareable) = (
            disk.child("readonly").is_some(),
            disk.child("shareable").is_some(),
        );
        let mut layer = Some(disk);
        let mut backing = false;
        while let Some(el) = layer {
            if let Some(source) = source_of(el) {
                refs.push(ImageRef {
                    target: target.to_string(),
                    name: source.display_name(),
                    backing,
                    read_only,
                    shareable,
                });
            }
            layer = el.child("backingStore");
            backing = true;
        }
    }
    Ok(refs)
}

/// The `<disk>` element for `target`, as written in the document.
pub fn find_disk(domain_xml: &str, target: &str) -> Result<Option<Element>, String> {
    let root = xml_tree::parse(domain_xml)?;
    Ok(root.child("devices").and_then(|devices| {
        devices
            .children_named("disk")
            .find(|d| d.find(&["target"]).and_then(|t| t.attr("dev")) == Some(target))
            .cloned()
    }))
}

fn disk_spec(disk: &Element) -> Option<DiskSpec> {
    let target = disk.find(&["target"])?.attr("dev")?.to_string();
    let mut backing = Vec::new();
    let mut node = disk.child("backingStore");
    while let Some(bs) = node {
        let Some(source) = source_of(bs) else {
            break;
        };
        backing.push(BackingLayer {
            source,
            format: bs
                .child("format")
                .and_then(|f| f.attr("type"))
                .map(str::to_string),
        });
        node = bs.child("backingStore");
    }
    let mirror = disk.child("mirror").map(|m| MirrorState {
        source: source_of(m),
        ready: matches!(m.attr("ready"), Some("yes") | Some("pivot") | Some("abort")),
    });
    Some(DiskSpec {
        target,
        device: disk.attr("device").unwrap_or("disk").to_string(),
        format: disk
            .child("driver")
            .and_then(|d| d.attr("type"))
            .map(str::to_string),
        source: source_of(disk),
        backing_depth: backing.len() as u32,
        backing,
        read_only: disk.child("readonly").is_some(),
        shareable: disk.child("shareable").is_some(),
        mirror,
    })
}

/// The source of a `<disk>` or `<mirror>` element.
fn source_of(el: &Element) -> Option<DiskSource> {
    let source = el.child("source")?;
    match el.attr("type")? {
        "file" => Some(DiskSource::File {
            path: source.attr("file")?.to_string(),
        }),
        "block" => Some(DiskSource::Block {
            path: source.attr("dev")?.to_string(),
            slice_size: source
                .find(&["slices", "slice"])
                .filter(|s| s.attr("type") == Some("storage"))
                .and_then(|s| s.attr("size"))
                .and_then(|s| s.parse().ok()),
        }),
        "network" if source.attr("protocol") == Some("rbd") => {
            let name = source.attr("name")?;
            let (pool, image) = name.split_once('/')?;
            let hosts = source
                .children_named("host")
                .filter_map(|h| {
                    Some(CephHost {
                        name: h.attr("name")?.to_string(),
                        port: h.attr("port").and_then(|p| p.parse().ok()),
                    })
                })
                .collect();
            let auth = source
                .child("auth")
                .or_else(|| el.child("auth"))
                .and_then(|a| {
                    Some(CephAuth {
                        username: a.attr("username")?.to_string(),
                        secret_uuid: a.child("secret")?.attr("uuid")?.to_string(),
                    })
                });
            Some(DiskSource::Rbd {
                pool: pool.to_string(),
                image: image.to_string(),
                hosts,
                auth,
            })
        }
        _ => None,
    }
}

/// The `type` attribute a `<disk>` with this source needs.
fn disk_type(source: &DiskSource) -> &'static str {
    match source {
        DiskSource::File { .. } => "file",
        DiskSource::Block { .. } => "block",
        DiskSource::Rbd { .. } => "network",
    }
}

/// The `<source>` element for a disk source.
pub fn source_element(source: &DiskSource) -> Element {
    match source {
        DiskSource::File { path } => Element::new("source").with_attr("file", path.as_str()),
        DiskSource::Block { path, slice_size } => {
            let el = Element::new("source").with_attr("dev", path.as_str());
            match slice_size {
                Some(size) => el.with_child(
                    Element::new("slices").with_child(
                        Element::new("slice")
                            .with_attr("type", "storage")
                            .with_attr("offset", "0")
                            .with_attr("size", size.to_string()),
                    ),
                ),
                None => el,
            }
        }
        DiskSource::Rbd {
            pool,
            image,
            hosts,
            auth,
        } => {
            let mut el = Element::new("source")
                .with_attr("protocol", "rbd")
                .with_attr("name", format!("{pool}/{image}"));
            for host in hosts {
                let mut h = Element::new("host").with_attr("name", host.name.as_str());
                if let Some(port) = host.port {
                    h.set_attr("port", port.to_string());
                }
                el.children.push(h);
            }
            if let Some(auth) = auth {
                el.children.push(
                    Element::new("auth")
                        .with_attr("username", auth.username.as_str())
                        .with_child(
                            Element::new("secret")
                                .with_attr("type", "ceph")
                                .with_attr("uuid", auth.secret_uuid.as_str()),
                        ),
                );
            }
            el
        }
    }
}

/// The `<backingStore>` element of a chain (nearest first), ending in an
/// empty `<backingStore/>` that tells libvirt the chain ends there.
fn backing_store(chain: &[BackingLayer]) -> Element {
    let Some((first, rest)) = chain.split_first() else {
        return Element::new("backingStore");
    };
    let mut el = Element::new("backingStore").with_attr("type", disk_type(&first.source));
    if let Some(format) = &first.format {
        el.children
            .push(Element::new("format").with_attr("type", format.as_str()));
    }
    el.with_child(source_element(&first.source))
        .with_child(backing_store(rest))
}

/// The destination `<disk>` document passed to virDomainBlockCopy; a shallow
/// copy names the chain below it (nearest first), so libvirt opens exactly
/// that chain instead of probing the image headers.
pub fn copy_destination_xml(
    source: &DiskSource,
    format: ImageFormat,
    backing: &[BackingLayer],
) -> String {
    let mut disk = Element::new("disk")
        .with_attr("type", disk_type(source))
        .with_child(source_element(source))
        .with_child(Element::new("driver").with_attr("type", format.as_str()));
    if !backing.is_empty() {
        disk.children.push(backing_store(backing));
    }
    disk.to_xml()
}

/// Rewrites a persistent `<disk>` so it points at `source` over `backing`
/// (nearest first; empty for a flattened destination, which has none), keeping
/// everything else (target, bus, address, cache settings) as it was.
pub fn retarget_disk(
    mut disk: Element,
    source: &DiskSource,
    format: ImageFormat,
    backing: &[BackingLayer],
) -> Element {
    disk.set_attr("type", disk_type(source));
    disk.replace_child(source_element(source));
    disk.remove_children("backingStore");
    if !backing.is_empty() {
        disk.children.push(backing_store(backing));
    }
    disk.remove_children("mirror");
    // An rbd disk may carry <auth> beside <source> (older syntax); the new source
    // carries its own, so a stale one must not survive.
    disk.remove_children("auth");
    match disk.child_mut("driver") {
        Some(driver) => driver.set_attr("type", format.as_str()),
        None => disk.children.insert(
            0,
            Element::new("driver")
                .with_attr("name", "qemu")
                .with_attr("type", format.as_str()),
        ),
    }
    disk
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'><name>g</name><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/pools/a/root.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='/pools/a/tmpl.qcow2'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/>
        <mirror type='block' job='copy' ready='yes'><format type='raw'/><source dev='/dev/loop0p1'/></mirror>
      </disk>
      <disk type='network' device='disk'>
        <driver name='qemu' type='raw'/>
        <source protocol='rbd' name='volmig/img'><host name='127.0.0.1' port='6789'/><auth username='libvirt'><secret type='ceph' uuid='u-1'/></auth></source>
        <target dev='vdb' bus='virtio'/><shareable/>
      </disk>
      <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    </devices></domain>"#;

    #[test]
    fn image_refs_follow_backing_chains() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/p/top.qcow2'/>\
              <backingStore type='file'><source file='/p/base.qcow2'/><backingStore/></backingStore>\
              <target dev='vda'/></disk>\
            <disk type='network' device='disk'><source protocol='rbd' name='rbd/img'/>\
              <target dev='vdb'/><shareable/></disk>\
            <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>\
            </devices></domain>";
        let refs = image_refs(xml).expect("parse");
        let names: Vec<(&str, &str, bool)> = refs
            .iter()
            .map(|r| (r.target.as_str(), r.name.as_str(), r.backing))
            .collect();
        assert_eq!(
            names,
            vec![
                ("vda", "/p/top.qcow2", false),
                ("vda", "/p/base.qcow2", true),
                ("vdb", "rbd/img", false)
            ]
        );
        assert!(refs[2].shareable);
    }

    #[test]
    fn parses_file_rbd_and_empty_cdrom() {
        let disks = parse_disks(DOMAIN).expect("parse");
        assert_eq!(disks.len(), 3);
        let vda = &disks[0];
        assert_eq!(vda.target, "vda");
        assert_eq!(vda.format.as_deref(), Some("qcow2"));
        assert_eq!(vda.backing_depth, 1);
        let mirror = vda.mirror.as_ref().expect("mirror");
        assert!(mirror.ready);
        assert_eq!(
            mirror.source,
            Some(DiskSource::Block {
                path: "/dev/loop0p1".into(),
                slice_size: None
            })
        );
        let vdb = &disks[1];
        assert!(vdb.shareable);
        assert_eq!(
            vdb.source,
            Some(DiskSource::Rbd {
                pool: "volmig".into(),
                image: "img".into(),
                hosts: vec![CephHost {
                    name: "127.0.0.1".into(),
                    port: Some(6789)
                }],
                auth: Some(CephAuth {
                    username: "libvirt".into(),
                    secret_uuid: "u-1".into()
                }),
            })
        );
        assert_eq!(disks[2].device, "cdrom");
        assert!(disks[2].read_only);
        assert_eq!(disks[2].source, None);
    }

    #[test]
    fn block_destination_has_exact_slice() {
        let xml = copy_destination_xml(
            &DiskSource::Block {
                path: "/dev/loop3p1".into(),
                slice_size: Some(268_435_456),
            },
            ImageFormat::Raw,
            &[],
        );
        let el = xml_tree::parse(&xml).expect("parse");
        assert_eq!(el.attr("type"), Some("block"));
        let slice = el.find(&["source", "slices", "slice"]).expect("slice");
        assert_eq!(slice.attr("size"), Some("268435456"));
        assert_eq!(slice.attr("offset"), Some("0"));
    }

    #[test]
    fn retarget_keeps_target_and_drops_chain() {
        let disk = find_disk(DOMAIN, "vda").expect("parse").expect("vda");
        let dest = DiskSource::File {
            path: "/pools/b/root.qcow2".into(),
        };
        let new = retarget_disk(disk, &dest, ImageFormat::Qcow2, &[]);
        let xml = new.to_xml();
        let spec = parse_disks(&format!("<domain><devices>{xml}</devices></domain>"))
            .expect("parse")
            .remove(0);
        assert_eq!(spec.source, Some(dest));
        assert_eq!(spec.backing_depth, 0);
        assert_eq!(spec.mirror, None);
        assert_eq!(
            new.find(&["target"]).and_then(|t| t.attr("bus")),
            Some("virtio")
        );
    }

    #[test]
    fn shallow_destination_names_its_chain_and_parses_back() {
        let layer = |p: &str| BackingLayer {
            source: DiskSource::File { path: p.into() },
            format: Some("qcow2".into()),
        };
        let chain = vec![layer("/b/d1.qcow2"), layer("/b/tmpl.qcow2")];
        let top = DiskSource::File {
            path: "/b/top.qcow2".into(),
        };
        let xml = copy_destination_xml(&top, ImageFormat::Qcow2, &chain);
        let spec = parse_disks(&format!(
            "<domain><devices>{}</devices></domain>",
            xml_with_target(&xml)
        ))
        .expect("parse")
        .remove(0);
        assert_eq!(spec.backing, chain);
        assert_eq!(spec.backing_depth, 2);
        let disk = find_disk(DOMAIN, "vda").expect("parse").expect("vda");
        let new = retarget_disk(disk, &top, ImageFormat::Qcow2, &chain);
        let spec = parse_disks(&format!(
            "<domain><devices>{}</devices></domain>",
            new.to_xml()
        ))
        .expect("parse")
        .remove(0);
        assert_eq!(spec.backing, chain, "the old chain is replaced, not kept");
    }

    #[test]
    fn hostile_paths_stay_inside_their_attribute() {
        for evil in [
            "/x'/><source file='/etc/shadow",
            "/x\"/><a b=\"",
            "/x&amp;<>",
            "]]><!--",
        ] {
            let src = DiskSource::File { path: evil.into() };
            let xml = copy_destination_xml(&src, ImageFormat::Raw, &[]);
            let spec = parse_disks(&format!(
                "<domain><devices>{}</devices></domain>",
                xml_with_target(&xml)
            ))
            .expect("parse")
            .remove(0);
            assert_eq!(spec.source, Some(src), "{xml}");
        }
    }

    fn xml_with_target(disk_xml: &str) -> String {
        let mut el = xml_tree::parse(disk_xml).expect("parse");
        el.children
            .push(Element::new("target").with_attr("dev", "vda"));
        el.to_xml()
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn with_target(disk_xml: &str) -> String {
            let mut el = xml_tree::parse(disk_xml).expect("builder output parses");
            el.children
                .push(Element::new("target").with_attr("dev", "vda"));
            format!("<domain><devices>{}</devices></domain>", el.to_xml())
        }

        // Any printable text, quotes, markup and entity syntax included. Control
        // characters cannot appear in XML 1.0 at all; validation refuses them earlier.
        const TEXT: &str = "\\PC*";

        proptest! {
            #[test]
            fn file_and_block_sources_round_trip(path in TEXT, size in any::<u64>()) {
                for src in [
                    DiskSource::File { path: path.clone() },
                    DiskSource::Block { path: path.clone(), slice_size: Some(size) },
                ] {
                    let xml = copy_destination_xml(&src, ImageFormat::Raw, &[]);
                    let root = xml_tree::parse(&xml).expect("parses");
                    prop_assert_eq!(root.children.len(), 2, "{}", xml);
                    let disks = parse_disks(&with_target(&xml)).expect("parses");
                    prop_assert_eq!(disks.len(), 1);
                    prop_assert_eq!(disks[0].source.as_ref(), Some(&src));
                }
            }

            #[test]
            fn rbd_sources_round_trip(
                pool in "[^/\\p{Cc}]*",
                image in TEXT,
                host in TEXT,
                port in any::<u16>(),
                user in TEXT,
                uuid in TEXT,
            ) {
                let src = DiskSource::Rbd {
                    pool,
                    image,
                    hosts: vec![CephHost { name: host, port: Some(port) }],
                    auth: Some(CephAuth { username: user, secret_uuid: uuid }),
                };
                let xml = copy_destination_xml(&src, ImageFormat::Raw, &[]);
                let disks = parse_disks(&with_target(&xml)).expect("parses");
                prop_assert_eq!(disks[0].source.as_ref(), Some(&src));
            }

            #[test]
            fn retargeting_keeps_the_document_shape(path in TEXT) {
                let disk = find_disk(DOMAIN, "vda").expect("parse").expect("vda");
                let children_before = disk.children.len();
                let src = DiskSource::File { path };
                let new = retarget_disk(disk, &src, ImageFormat::Qcow2, &[]);
                // <backingStore> and <mirror> go, nothing is added.
                prop_assert_eq!(new.children.len(), children_before - 2);
                let reparsed = xml_tree::parse(&new.to_xml()).expect("parses");
                prop_assert_eq!(&reparsed, &new);
            }
        }
    }
}
