//! What libvirt cannot do for volmig with images: read a qcow2 header
//! (internal snapshots, backing link), compare two images, and copy one
//! backing layer exactly. `qemu-img` reads with `-U` (force-share), since a
//! running guest holds its images' locks; the layers it reads are read-only
//! while the guest runs, so the shared read is consistent.

use std::process::Command;

use volmig_engine::hypervisor::{HvError, ImageFormat, ImageInfo};

fn run(program: &str, args: &[&str]) -> Result<std::process::Output, HvError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HvError::Unsupported(format!("cannot run {program}: {e}")))?;
    Ok(output)
}

/// A failed run of `qemu-img compare`, `qemu-img rebase` or `cp`.
fn failed(command: &'static str, output: &std::process::Output) -> HvError {
    HvError::Tool {
        command,
        status: exit_status(output),
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    }
}

/// "exit status N", or the signal that killed the process.
fn exit_status(output: &std::process::Output) -> String {
    match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => output.status.to_string(),
    }
}

/// `qemu-img` could not read the image `subject` (missing, unreadable to the
/// node, or not an image of the format asked for): `command` named as what
/// failed, with the image, the exit status and qemu-img's first line of
/// stderr, e.g. "qemu-img info on /p/a.qcow2 failed (exit status 1): …".
pub(crate) fn unreadable(command: &str, subject: &str, output: &std::process::Output) -> HvError {
    let status = exit_status(output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = stderr
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("nothing on stderr");
    // `InvalidState` rather than `Failed`: `Failed` is worded as a libvirt
    // call with a libvirt error number, and this is neither. The image stays
    // unreadable until someone fixes it, which the engine reports as
    // FAILED_PRECONDITION whichever of the two it gets (SourceUnreadable).
    HvError::InvalidState(format!("{command} on {subject} failed ({status}): {why}"))
}

/// `qemu-img info` of the image alone (its backing chain is not followed).
pub fn image_info(path: &str) -> Result<ImageInfo, HvError> {
    let output = run("qemu-img", &["info", "-U", "--output=json", "--", path])?;
    if !output.status.success() {
        return Err(unreadable("qemu-img info", path, &output));
    }
    parse_info(&output.stdout)
}

fn parse_info(json: &[u8]) -> Result<ImageInfo, HvError> {
    let info: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| HvError::BadXml(format!("qemu-img info output: {e}")))?;
    let text = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let number = |k: &str| info.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(ImageInfo {
        format: text("format").unwrap_or_default(),
        virtual_size: number("virtual-size"),
        actual_size: number("actual-size"),
        backing: text("full-backing-filename").or_else(|| text("backing-filename")),
        backing_format: text("backing-filename-format"),
    })
}

/// `qemu-img compare -U`: whether the two images, each read through its own
/// backing chain, show the guest the same bytes.
pub fn images_equal(
    a: &str,
    a_format: ImageFormat,
    b: &str,
    b_format: ImageFormat,
) -> Result<bool, HvError> {
    let output = run(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-q",
            "-f",
            a_format.as_str(),
            "-F",
            b_format.as_str(),
            "--",
            a,
            b,
        ],
    )?;
    // 0: identical, 1: they differ; anything else is an error.
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed("qemu-img compare", &output)),
    }
}

/// Copies the image file `source` over the file `dest` (truncating it in place,
/// so the file volmig created keeps its identity), sparse, then sets its
/// backing link without touching its data (`qemu-img rebase -u`): the copy
/// holds exactly the source's clusters, and reads through the destination's
/// copy of the layer below.
pub fn copy_layer(
    source: &str,
    dest: &str,
    format: ImageFormat,
    backing: Option<(&str, ImageFormat)>,
) -> Result<(), HvError> {
    let output = run("cp", &["--sparse=always", "--", source, dest])?;
    if !output.status.success() {
        return Err(failed("cp", &output));
    }
    // The bottom layer has no link to set, and a raw layer can only be a bottom.
    let Some((back, back_format)) = backing.filter(|_| format == ImageFormat::Qcow2) else {
        return Ok(());
    };
    let args = [
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        back,
        "-F",
        back_format.as_str(),
        "--",
        dest,
    ];
    let output = run("qemu-img", &args)?;
    if !output.status.success() {
        return Err(failed("qemu-img rebase", &output));
    }
    Ok(())
}

/// Number of internal snapshots in the qcow2 image at `path`.
pub fn internal_snapshots(path: &str) -> Result<u32, HvError> {
    let output = run(
        "qemu-img",
        &["info", "-U", "--output=json", "-f", "qcow2", "--", path],
    )?;
    if !output.status.success() {
        return Err(unreadable("qemu-img info -f qcow2", path, &output));
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

    #[test]
    fn reads_the_backing_link_of_an_image() {
        let info = parse_info(
            br#"{"virtual-size": 67108864, "format": "qcow2", "actual-size": 200704,
                "backing-filename": "tmpl.qcow2", "full-backing-filename": "/p/tmpl.qcow2",
                "backing-filename-format": "qcow2"}"#,
        )
        .expect("parse");
        assert_eq!(info.backing.as_deref(), Some("/p/tmpl.qcow2"));
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(info.virtual_size, 64 << 20);
        let base = parse_info(br#"{"virtual-size": 1, "format": "raw"}"#).expect("parse");
        assert_eq!(base.backing, None);
    }

    #[test]
    fn a_failed_compare_names_qemu_img_not_libvirt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.raw");
        let missing = missing.to_str().expect("utf-8 path");
        let err = images_equal(missing, ImageFormat::Raw, missing, ImageFormat::Raw)
            .expect_err("comparing a missing image fails");
        assert!(matches!(err, HvError::Tool { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("qemu-img compare failed (exit status 2): "),
            "{text}"
        );
        assert!(text.contains(missing), "{text}");
        assert!(!text.contains("libvirt"), "{text}");
    }

    /// What the operator reads when qemu-img cannot read an image: qemu-img
    /// named, with the image and its own reason, and nothing about libvirt.
    fn assert_names_qemu_img(err: &HvError, command: &str, path: &str, reason: &str) {
        let HvError::InvalidState(message) = err else {
            panic!("an unreadable image must stay a precondition failure, got {err:?}");
        };
        let shown = err.to_string();
        assert_eq!(&shown, message);
        assert!(
            shown.starts_with(&format!("{command} on {path} failed (exit status 1): ")),
            "{shown}"
        );
        assert!(shown.contains(reason), "{shown}");
        assert!(!shown.to_lowercase().contains("libvirt"), "{shown}");
        assert!(!shown.contains("error code"), "{shown}");
    }

    #[test]
    fn a_missing_image_is_reported_as_qemu_img_failing_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone.qcow2");
        let path = path.to_str().expect("utf-8 path");
        let err = image_info(path).expect_err("no such file");
        assert_names_qemu_img(&err, "qemu-img info", path, "No such file or directory");
    }

    #[test]
    fn a_file_that_is_not_qcow2_is_reported_as_qemu_img_failing_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.qcow2");
        std::fs::write(&path, "not an image\n").expect("write");
        let path = path.to_str().expect("utf-8 path");
        let err = internal_snapshots(path).expect_err("not qcow2");
        assert_names_qemu_img(&err, "qemu-img info -f qcow2", path, "not in qcow2 format");
    }

    #[test]
    fn a_qemu_img_killed_by_a_signal_says_so() {
        use std::os::unix::process::ExitStatusExt;
        let output = std::process::Output {
            status: std::process::ExitStatus::from_raw(9),
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let shown = unreadable("qemu-img info", "/p/a.qcow2", &output).to_string();
        assert!(
            shown.starts_with("qemu-img info on /p/a.qcow2 failed (signal: 9"),
            "{shown}"
        );
        assert!(shown.ends_with(": nothing on stderr"), "{shown}");
    }
}
