//! The one question libvirt cannot answer: does a qcow2 image hold internal
//! snapshots? `qemu-img info` reads the image header (with `-U`, since the
//! running guest holds the image's lock).

use std::process::Command;

use crate::hypervisor::HvError;

/// Number of internal snapshots in the qcow2 image at `path`.
pub fn internal_snapshots(path: &str) -> Result<u32, HvError> {
    let output = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2", "--", path])
        .output()
        .map_err(|e| HvError::Unsupported(format!("cannot run qemu-img: {e}")))?;
    if !output.status.success() {
        return Err(HvError::Failed {
            op: "qemu-img info",
            code: output.status.code().unwrap_or(-1),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    count_snapshots(&output.stdout)
}

fn count_snapshots(json: &[u8]) -> Result<u32, HvError> {
    let info: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| HvError::BadXml(format!("qemu-img info output: {e}")))?;
    Ok(info
        .get("snapshots")
        .and_then(|s| s.as_array())
        .map(|a| a.len() as u32)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_snapshots_in_qemu_img_output() {
        let with = br#"{"virtual-size": 1048576, "format": "qcow2",
            "snapshots": [{"id": "1", "name": "s1"}, {"id": "2", "name": "s2"}]}"#;
        assert_eq!(count_snapshots(with).expect("parse"), 2);
        let without = br#"{"virtual-size": 1048576, "format": "qcow2"}"#;
        assert_eq!(count_snapshots(without).expect("parse"), 0);
        assert!(count_snapshots(b"not json").is_err());
    }
}
