//! The mount table of the node's process (`/proc/self/mountinfo`), read to
//! tell which file system a pool's directory lives on: a directory on an NFS
//! export or a cluster file system is storage other hosts reach too.
//!
//! Parsing is a pure function over the file's text, so it is tested on real
//! lines; only [`read_own`] touches `/proc`. A line that does not have the
//! documented shape is skipped rather than failing the whole table: one odd
//! mount must not hide the others.

use std::path::Path;

/// One line of `mountinfo` (proc(5)), the fields volmig uses, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the directory of the mounted file system that appears at the
    /// mount point (`/` unless a bind mount shows a subdirectory).
    pub root: String,
    /// Field 5: where it is mounted, in this process's mount namespace.
    pub mount_point: String,
    /// The file system type after the ` - ` separator (`nfs4`, `fuse.glusterfs`).
    pub fstype: String,
    /// The mount source (`filer1:/export/vms`, `/dev/sda1`).
    pub source: String,
}

/// The mounts of `text` (the contents of a `mountinfo` file), in file order.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw`: six
/// fixed fields, optional fields up to a lone `-`, then type, source, options.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fixed: Vec<&str> = before.split(' ').collect();
    if fixed.len() < 6 {
        return None;
    }
    let mut tail = after.split(' ');
    let fstype = tail.next().filter(|t| !t.is_empty())?;
    let source = tail.next()?;
    Some(Mount {
        root: unescape(fixed[3]),
        mount_point: unescape(fixed[4]),
        fstype: unescape(fstype),
        source: unescape(source),
    })
}

/// The kernel writes space, tab, newline and backslash in these fields as
/// three octal digits (`\040`); anything else after a backslash is kept.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (absolute, without `..`): the one whose mount
/// point is the longest whole-component prefix of it; of several at one mount
/// point the last, which is the one on top.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if relative_to(&m.mount_point, path).is_some()
            && best.is_none_or(|b| m.mount_point.len() >= b.mount_point.len())
        {
            best = Some(m);
        }
    }
    best
}

/// `path` below `mount_point`, as `/rest` (`/` for the mount point itself);
/// `None` when it is not below it (`/mnt/nfs2` is not below `/mnt/nfs`).
pub fn relative_to<'a>(mount_point: &str, path: &'a str) -> Option<&'a str> {
    let base = mount_point.trim_end_matches('/');
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// This process's mounts; none when `/proc` cannot be read (then no directory
/// is recognised as shared automatically, which is the safe side: its sources
/// are treated as local).
pub fn read_own() -> Vec<Mount> {
    std::fs::read_to_string(Path::new("/proc/self/mountinfo"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as a host with a local root, an NFS export, a CIFS share with a space
    /// in its mount point and a bind mount of a glusterfs subdirectory shows them.
    const SAMPLE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw,errors=remount-ro
25 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
61 22 0:52 / /var/lib/libvirt/nfs rw,relatime shared:30 - nfs4 filer1:/export/vms rw,vers=4.2,rsize=1048576,addr=10.0.0.5
62 22 0:53 / /mnt/win\\040share rw,relatime shared:31 - cifs //fs1/vm\\040images rw,vers=3.1.1
63 22 0:54 /tenants/a /var/lib/libvirt/gluster rw,relatime - fuse.glusterfs gl1:/vol0 rw,user_id=0
64 22 0:55 / /var/lib/libvirt/nfs2 rw,relatime - nfs filer2:/other rw
";

    #[test]
    fn fields_are_read_and_octal_escapes_decoded() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            mounts[2],
            Mount {
                root: "/".into(),
                mount_point: "/var/lib/libvirt/nfs".into(),
                fstype: "nfs4".into(),
                source: "filer1:/export/vms".into(),
            }
        );
        assert_eq!(mounts[3].mount_point, "/mnt/win share");
        assert_eq!(mounts[3].source, "//fs1/vm images");
        assert_eq!(mounts[4].root, "/tenants/a");
        assert_eq!(unescape("a\\011b\\012c\\134d"), "a\tb\nc\\d");
        assert_eq!(unescape("keep\\9x\\04"), "keep\\9x\\04");
    }

    #[test]
    fn optional_fields_may_be_absent_or_many_and_bad_lines_are_skipped() {
        let text = "30 22 0:40 / /a rw - tmpfs tmpfs rw\n\
                    31 22 0:41 / /b rw shared:5 master:2 propagate_from:1 - xfs /dev/sdb rw\n\
                    not a mountinfo line\n\
                    32 22 0:42 / /c rw -\n";
        let mounts = parse(text);
        assert_eq!(
            mounts.iter().map(|m| m.fstype.as_str()).collect::<Vec<_>>(),
            ["tmpfs", "xfs"]
        );
    }

    #[test]
    fn the_longest_whole_component_prefix_holds_a_path() {
        let mounts = parse(SAMPLE);
        let at = |p: &str| mount_of(&mounts, p).map(|m| m.mount_point.as_str());
        assert_eq!(at("/var/lib/libvirt/nfs/vms"), Some("/var/lib/libvirt/nfs"));
        assert_eq!(at("/var/lib/libvirt/nfs"), Some("/var/lib/libvirt/nfs"));
        assert_eq!(at("/var/lib/libvirt/nfs2/x"), Some("/var/lib/libvirt/nfs2"));
        assert_eq!(at("/var/lib/libvirt/nfsx"), Some("/"));
        assert_eq!(at("/mnt/win share/d"), Some("/mnt/win share"));
        assert_eq!(relative_to("/", "/var/x"), Some("/var/x"));
        assert_eq!(relative_to("/a/b", "/a/b/c/d"), Some("/c/d"));
    }

    #[test]
    fn a_mount_over_another_at_the_same_point_wins() {
        let text =
            "40 22 0:60 / /srv rw - nfs4 old:/x rw\n41 40 0:61 / /srv rw - ext4 /dev/sdc rw\n";
        let mounts = parse(text);
        assert_eq!(
            mount_of(&mounts, "/srv/p").map(|m| m.fstype.as_str()),
            Some("ext4")
        );
    }
}
