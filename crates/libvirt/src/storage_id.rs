//! The storage id of a pool: the name under which the controller recognises
//! one storage reached by several hosts (it merges pools by this id, and asks
//! the other nodes of a shared pool what uses a source before deleting it).
//!
//! Computed where a pool's description is built, from what only the host
//! knows: its host name, its mount table and the node's `[shared_pools]`
//! setting. Two hosts must compute the same id for the same storage and
//! different ids for different storage, so each rule uses only what every
//! host that reaches the storage sees alike:
//!
//! 1. `[shared_pools]` names the pool: `shared:<the operator's id>`, shared.
//! 2. `netfs`, `rbd`, `iscsi`: the remote source libvirt was given, shared.
//! 3. `dir`/`fs` whose target lies on a network or cluster file system
//!    ([`NETWORK_FS`]): `fs:<family>:<mount source>:<directory in that
//!    file system>`, shared.
//! 4. Anything else: `local:<host name>:<target path>`, not shared.

use std::collections::BTreeMap;

use crate::mountinfo::{self, Mount};
use crate::pool_xml::PoolXml;

/// File system types whose contents other hosts can mount too, and the
/// family each belongs to (one export mounted as `nfs` by one host and as
/// `nfs4` by another is the same storage). 9p, sshfs and other FUSE systems
/// are left out: they are usually a view of one machine's files, not storage
/// several hypervisors share.
pub const NETWORK_FS: &[(&str, &str)] = &[
    ("nfs", "nfs"),
    ("nfs4", "nfs"),
    ("cifs", "cifs"),
    ("smb3", "cifs"),
    ("ceph", "ceph"),
    ("fuse.cephfs", "ceph"),
    ("fuse.ceph-fuse", "ceph"),
    ("glusterfs", "glusterfs"),
    ("fuse.glusterfs", "glusterfs"),
    ("ocfs2", "ocfs2"),
    ("gfs2", "gfs2"),
    ("lustre", "lustre"),
    ("beegfs", "beegfs"),
];

/// What the host knows that decides storage ids.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts<'a> {
    /// The host name, scoping local storage.
    pub hostname: &'a str,
    /// The node process's mounts.
    pub mounts: &'a [Mount],
    /// The node's `[shared_pools]`: pool name → operator-chosen id.
    pub shared_pools: &'a BTreeMap<String, String>,
}

/// A pool's storage id and whether other hosts reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageIdentity {
    /// The id.
    pub id: String,
    /// Whether the storage is shared.
    pub shared: bool,
}

impl StorageIdentity {
    fn shared(id: String) -> Self {
        StorageIdentity { id, shared: true }
    }
}

/// The identity of pool `name` described by `xml`. The target path is taken
/// as written: resolving symbolic links would touch the file system, and a
/// stat on a dead hard-mounted NFS export hangs the pool listing with it.
pub fn identify(name: &str, xml: &PoolXml, host: HostFacts<'_>) -> StorageIdentity {
    if let Some(id) = host.shared_pools.get(name) {
        return StorageIdentity::shared(format!("shared:{id}"));
    }
    let first_host = || xml.hosts.first().map(|h| h.name.as_str()).unwrap_or("");
    match xml.pool_type.as_str() {
        "netfs" => StorageIdentity::shared(format!("netfs:{}:{}", first_host(), xml.source_dir)),
        "rbd" => {
            let monitors: Vec<String> = xml
                .hosts
                .iter()
                .map(|h| match h.port {
                    Some(port) => format!("{}:{port}", h.name),
                    None => h.name.clone(),
                })
                .collect();
            StorageIdentity::shared(format!("rbd:{}/{}", monitors.join(","), xml.source_name))
        }
        "iscsi" | "iscsi-direct" => {
            StorageIdentity::shared(format!("iscsi:{}:{}", first_host(), xml.devices.join(",")))
        }
        "dir" | "fs" => {
            on_network_fs(&xml.target_path, host.mounts).unwrap_or_else(|| local(xml, host))
        }
        _ => local(xml, host),
    }
}

fn local(xml: &PoolXml, host: HostFacts<'_>) -> StorageIdentity {
    StorageIdentity {
        id: format!("local:{}:{}", host.hostname, xml.target_path),
        shared: false,
    }
}

/// `fs:<family>:<source>:<dir>` when `target` is on a [`NETWORK_FS`] mount.
/// The directory is the mount's root joined with the target's place below the
/// mount point, so a host that mounts the export at another place, or bind
/// mounts a subdirectory of it, still names the same directory.
fn on_network_fs(target: &str, mounts: &[Mount]) -> Option<StorageIdentity> {
    let mount = mountinfo::mount_of(mounts, target)?;
    let family = NETWORK_FS
        .iter()
        .find(|(fstype, _)| *fstype == mount.fstype)
        .map(|(_, family)| *family)?;
    let below = mountinfo::relative_to(&mount.mount_point, target)?;
    let dir = match (mount.root.trim_end_matches('/'), below) {
        ("", below) => below.to_string(),
        (root, "/") => root.to_string(),
        (root, below) => format!("{root}{below}"),
    };
    Some(StorageIdentity::shared(format!(
        "fs:{family}:{}:{dir}",
        mount.source
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use volmig_engine::hypervisor::CephHost;

    fn dir_pool(target: &str) -> PoolXml {
        PoolXml {
            pool_type: "dir".into(),
            target_path: target.into(),
            ..PoolXml::default()
        }
    }

    fn facts<'a>(
        hostname: &'a str,
        mounts: &'a [Mount],
        shared_pools: &'a BTreeMap<String, String>,
    ) -> HostFacts<'a> {
        HostFacts {
            hostname,
            mounts,
            shared_pools,
        }
    }

    const ROOT: &str = "22 1 253:0 / / rw - ext4 /dev/vda1 rw\n";

    #[test]
    fn a_local_dir_on_two_host_names_is_two_local_pools_unless_the_setting_names_it() {
        let mounts = mountinfo::parse(ROOT);
        let none = BTreeMap::new();
        let pool = dir_pool("/srv/vms");
        let on = |host, settings| identify("vms", &pool, facts(host, &mounts, settings));
        let (a, b) = (on("h1", &none), on("h2", &none));
        assert_eq!(a.id, "local:h1:/srv/vms");
        assert_eq!(b.id, "local:h2:/srv/vms");
        assert!(!a.shared && !b.shared);

        let setting = BTreeMap::from([("vms".to_string(), "filer1:/export/vms".to_string())]);
        let (a, b) = (on("h1", &setting), on("h2", &setting));
        assert_eq!(a, b);
        assert_eq!(
            a,
            StorageIdentity::shared("shared:filer1:/export/vms".into())
        );
        // The setting names pools, not paths: another pool stays local.
        let other = identify("other", &pool, facts("h1", &mounts, &setting));
        assert_eq!(other.id, "local:h1:/srv/vms");
    }

    #[test]
    fn one_export_mounted_differently_on_two_hosts_is_one_id() {
        // Host 1 mounts the export at /var/lib/libvirt/nfs with nfs4; host 2
        // mounts it at /mnt/filer with nfs and bind mounts its subdirectory `vms`.
        let h1 = mountinfo::parse(&format!(
            "{ROOT}61 22 0:52 / /var/lib/libvirt/nfs rw - nfs4 filer1:/export rw\n"
        ));
        let h2 = mountinfo::parse(&format!(
            "{ROOT}61 22 0:52 / /mnt/filer rw - nfs filer1:/export rw\n\
             62 22 0:52 /vms /var/lib/libvirt/vms rw - nfs filer1:/export rw\n"
        ));
        let none = BTreeMap::new();
        let a = identify(
            "p1",
            &dir_pool("/var/lib/libvirt/nfs/vms"),
            facts("h1", &h1, &none),
        );
        let b = identify(
            "p2",
            &dir_pool("/var/lib/libvirt/vms"),
            facts("h2", &h2, &none),
        );
        assert_eq!(
            a,
            StorageIdentity::shared("fs:nfs:filer1:/export:/vms".into())
        );
        assert_eq!(a, b);
        let c = identify(
            "p3",
            &dir_pool("/mnt/filer/vms/sub"),
            facts("h2", &h2, &none),
        );
        assert_eq!(c.id, "fs:nfs:filer1:/export:/vms/sub");
    }

    #[test]
    fn cluster_file_systems_are_shared_and_local_ones_are_not() {
        let mounts = mountinfo::parse(&format!(
            "{ROOT}70 22 8:16 / /cluster rw - gfs2 /dev/mapper/lun7 rw\n\
             71 22 0:60 / /gl rw - fuse.glusterfs gl1:/vol0 rw\n\
             72 22 0:61 / /tmpd rw - tmpfs tmpfs rw\n\
             73 22 0:62 / /nine rw - 9p share rw\n"
        ));
        let none = BTreeMap::new();
        let id = |target: &str| identify("p", &dir_pool(target), facts("h", &mounts, &none)).id;
        assert_eq!(id("/cluster/vms"), "fs:gfs2:/dev/mapper/lun7:/vms");
        assert_eq!(id("/gl"), "fs:glusterfs:gl1:/vol0:/");
        assert_eq!(id("/tmpd/vms"), "local:h:/tmpd/vms");
        assert_eq!(id("/nine/vms"), "local:h:/nine/vms");
    }

    #[test]
    fn remote_pool_types_keep_their_source_ids() {
        let mounts = mountinfo::parse(ROOT);
        let none = BTreeMap::new();
        let host = |name: &str, port| CephHost {
            name: name.into(),
            port,
        };
        let rbd = PoolXml {
            pool_type: "rbd".into(),
            hosts: vec![host("m1", Some(6789)), host("m2", None)],
            source_name: "vms".into(),
            ..PoolXml::default()
        };
        let netfs = PoolXml {
            pool_type: "netfs".into(),
            hosts: vec![host("filer1", None)],
            source_dir: "/export/vms".into(),
            target_path: "/mnt/x".into(),
            ..PoolXml::default()
        };
        let iscsi = PoolXml {
            pool_type: "iscsi".into(),
            hosts: vec![host("t1", None)],
            devices: vec!["iqn.2026-01.test:lun".into()],
            ..PoolXml::default()
        };
        let id = |xml: &PoolXml| identify("p", xml, facts("h", &mounts, &none));
        assert_eq!(
            id(&rbd),
            StorageIdentity::shared("rbd:m1:6789,m2/vms".into())
        );
        assert_eq!(id(&netfs).id, "netfs:filer1:/export/vms");
        assert_eq!(id(&iscsi).id, "iscsi:t1:iqn.2026-01.test:lun");
        assert!(id(&netfs).shared && id(&iscsi).shared);
    }
}
