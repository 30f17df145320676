//! What libvirt cannot tell about an RBD image: its object size (which the
//! copy's granularity must match for the destination to stay thin) and how
//! many bytes of it hold data (libvirt reports an rbd volume's allocation as
//! its capacity). Both come from `qemu-img`, which links librbd, so the node
//! needs no Ceph tools; the cephx key reaches it on stdin, never on a command
//! line or in a file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use volmig_engine::hypervisor::{CephHost, HvError};

use crate::{qemu_img, timed_command};

/// How long one `qemu-img` call against Ceph may take (a dead monitor would
/// otherwise hang it).
const CEPH_TIMEOUT: Duration = Duration::from_secs(30);

/// One RBD image and the credentials to open it.
pub struct RbdImage<'a> {
    /// Ceph pool.
    pub pool: &'a str,
    /// Image name.
    pub image: &'a str,
    /// Monitors.
    pub hosts: &'a [CephHost],
    /// cephx user and its base64 key; `None` for a cluster without auth.
    pub auth: Option<(&'a str, String)>,
}

impl RbdImage<'_> {
    /// The image's object size in bytes (`cluster-size` in `qemu-img info`).
    pub fn object_size(&self) -> Result<u64, HvError> {
        let out = self.qemu_img("info")?;
        let info: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| HvError::BadXml(format!("qemu-img info output: {e}")))?;
        info.get("cluster-size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| HvError::BadXml("qemu-img info gave no cluster-size".to_string()))
    }

    /// Bytes of the image that hold data, in whole objects (as `rbd du` counts).
    pub fn allocated(&self) -> Result<u64, HvError> {
        let out = self.qemu_img("map")?;
        data_bytes(&out)
    }

    fn spec(&self) -> String {
        let mut spec = serde_json::json!({
            "driver": "rbd",
            "pool": self.pool,
            "image": self.image,
            "server": self.hosts.iter().map(|h| serde_json::json!({
                "host": h.name,
                "port": h.port.unwrap_or(6789).to_string(),
            })).collect::<Vec<_>>(),
        });
        if let Some((user, _)) = &self.auth {
            spec["user"] = serde_json::json!(user);
            spec["key-secret"] = serde_json::json!("volmig-key");
            spec["auth-client-required"] = serde_json::json!(["cephx"]);
        } else {
            spec["auth-client-required"] = serde_json::json!(["none"]);
        }
        format!("json:{spec}")
    }

    /// Runs `qemu-img <subcommand> --output=json` on the image; its stdout.
    fn qemu_img(&self, subcommand: &str) -> Result<Vec<u8>, HvError> {
        let mut cmd = Command::new("qemu-img");
        cmd.args([subcommand, "--output=json"]);
        if self.auth.is_some() {
            cmd.args([
                "--object",
                "secret,id=volmig-key,file=/dev/stdin,format=base64",
            ]);
        }
        cmd.arg(self.spec());
        let key = self.auth.as_ref().map(|(_, key)| key.as_bytes());
        let command = format!("qemu-img {subcommand}");
        let subject = format!("rbd:{}/{}", self.pool, self.image);
        match timed_command::run(cmd, key, CEPH_TIMEOUT) {
            Err(e) => Err(HvError::Unsupported(format!("cannot run qemu-img: {e}"))),
            // InvalidState, as for any image qemu-img cannot read (see
            // qemu_img::unreadable): the engine reports FAILED_PRECONDITION.
            Ok(None) => Err(HvError::InvalidState(format!(
                "{command} on {subject} got no answer from Ceph within {} s; check that this node reaches the cluster's monitors",
                CEPH_TIMEOUT.as_secs()
            ))),
            Ok(Some(output)) if !output.status.success() => {
                Err(qemu_img::unreadable(&command, &subject, &output))
            }
            Ok(Some(output)) => Ok(output.stdout),
        }
    }
}

/// Sum of the extents `qemu-img map --output=json` marks as data.
fn data_bytes(json: &[u8]) -> Result<u64, HvError> {
    let extents: Vec<serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| HvError::BadXml(format!("qemu-img map output: {e}")))?;
    Ok(extents
        .iter()
        .filter(|e| e.get("data").and_then(serde_json::Value::as_bool) == Some(true))
        .filter_map(|e| e.get("length").and_then(serde_json::Value::as_u64))
        .sum())
}

/// The key of `client.<user>` from `<dir>/ceph.client.<user>.keyring`, the
/// file name Ceph's tools use; for secrets libvirt keeps private.
pub fn keyring_key(dir: &Path, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(format!("ceph.client.{user}.keyring"))).ok()?;
    let section = format!("[client.{user}]");
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "key" {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// Standard base64 of a libvirt secret's raw value (the form cephx keys take).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_data_extents() {
        let map = br#"[{"start": 0, "length": 4194304, "depth": 0, "present": true, "zero": false, "data": true},
            {"start": 4194304, "length": 8388608, "depth": 0, "present": true, "zero": true, "data": false},
            {"start": 12582912, "length": 4194304, "depth": 0, "present": true, "zero": false, "data": true}]"#;
        assert_eq!(data_bytes(map).expect("parse"), 8 << 20);
        assert!(data_bytes(b"{").is_err());
    }

    #[test]
    fn encodes_base64_like_ceph() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn reads_a_users_key_from_its_keyring() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ceph.client.libvirt.keyring"),
            "[client.admin]\n\tkey = WRONG==\n[client.libvirt]\n\tkey = AQAC/right==\n\tcaps mon = \"profile rbd\"\n",
        )
        .expect("write");
        assert_eq!(
            keyring_key(dir.path(), "libvirt").as_deref(),
            Some("AQAC/right==")
        );
        assert_eq!(keyring_key(dir.path(), "nobody"), None);
    }

    #[test]
    fn spec_names_pool_image_monitors_and_the_key_object() {
        let hosts = [CephHost {
            name: "10.0.0.5".into(),
            port: Some(6789),
        }];
        let img = RbdImage {
            pool: "vms",
            image: "a\"b",
            hosts: &hosts,
            auth: Some(("libvirt", "KEY".into())),
        };
        let spec = img.spec();
        let json: serde_json::Value =
            serde_json::from_str(spec.trim_start_matches("json:")).expect("json");
        assert_eq!(json["image"], "a\"b");
        assert_eq!(json["server"][0]["port"], "6789");
        assert_eq!(json["key-secret"], "volmig-key");
        assert!(!spec.contains("KEY"));
    }
}
