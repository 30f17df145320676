use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn name(s: &str) -> CString {
    CString::new(s).expect("name")
}

/// A directory only we can write (tempdir's are 0700).
fn private_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A root-owned (or our) file with mode 0600: what an attacker would like
/// the socket's chmod/chown to land on.
fn target(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("secret");
    std::fs::write(&target, "secret").expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    target
}

/// A group other than the file's, so a chown would show.
fn other_gid(path: &Path) -> u32 {
    let gid = std::fs::metadata(path).expect("stat").gid();
    if gid == 65534 {
        1
    } else {
        65534
    }
}

#[tokio::test]
async fn unix_sockets_replace_only_stale_sockets() {
    let dir = private_dir();
    let path = dir.path().join("node.sock");

    // A regular file is never removed.
    std::fs::write(&path, "precious").expect("write");
    let err = bind_unix(&path, 0o660, None).expect_err("not a socket");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
    std::fs::remove_file(&path).expect("rm");

    // A live server keeps its socket.
    let live = bind_unix(&path, 0o600, None).expect("bind");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").mode() & 0o777,
        0o600
    );
    let err = bind_unix(&path, 0o660, None).expect_err("in use");
    assert!(err.to_string().contains("another process"), "{err}");

    // Once nobody serves it, it is stale and replaced.
    drop(live);
    let _again = bind_unix(&path, 0o660, None).expect("stale socket replaced");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").mode() & 0o777,
        0o660
    );

    let err = bind_unix(
        &dir.path().join("x.sock"),
        0o660,
        Some("volmig-no-such-group"),
    )
    .expect_err("unknown group");
    assert!(matches!(err, ServeError::NoSuchGroup(_)), "{err}");
}

#[tokio::test]
async fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    let dir = private_dir();
    let target = target(dir.path());
    let path = dir.path().join("node.sock");
    std::os::unix::fs::symlink(&target, &path).expect("symlink");
    let err = bind_unix(&path, 0o666, Some("root")).expect_err("a symlink");
    assert!(err.to_string().contains("not a socket"), "{err}");
    let meta = std::fs::metadata(&target).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "secret");
}

#[tokio::test]
async fn a_socket_swapped_for_a_symlink_after_bind_is_not_followed() {
    let dir = private_dir();
    let target = target(dir.path());
    let before = std::fs::metadata(&target).expect("stat");
    let sockets = dir.path().join("run");
    std::fs::create_dir(&sockets).expect("mkdir");
    let socket_dir = SocketDir::open(&sockets).expect("open");
    let _listener = socket_dir.bind(&name("node.sock")).expect("bind");
    // The race of the issue, made deterministic: the socket is replaced by
    // a link to a file of ours between bind and chmod/chown.
    std::fs::remove_file(sockets.join("node.sock")).expect("rm");
    std::os::unix::fs::symlink(&target, sockets.join("node.sock")).expect("symlink");
    let err = socket_dir
        .set_group_and_mode(&name("node.sock"), Some(other_gid(&target)), 0o666)
        .expect_err("not a socket any more");
    assert!(err.to_string().contains("replaced after bind"), "{err}");
    let after = std::fs::metadata(&target).expect("stat");
    assert_eq!(
        after.mode() & 0o7777,
        0o600,
        "the link's target was chmod'ed"
    );
    assert_eq!(after.gid(), before.gid(), "the link's target was chown'ed");
    assert_eq!(after.uid(), before.uid());
}

#[tokio::test]
async fn a_directory_swapped_after_it_was_opened_is_not_followed() {
    let dir = private_dir();
    let sockets = dir.path().join("run");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&sockets).expect("mkdir");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let socket_dir = SocketDir::open(&sockets).expect("open");
    // The directory is moved away and a link to another put in its place.
    let moved = dir.path().join("moved");
    std::fs::rename(&sockets, &moved).expect("rename");
    std::os::unix::fs::symlink(&elsewhere, &sockets).expect("symlink");
    let _listener = socket_dir.bind(&name("node.sock")).expect("bind");
    socket_dir
        .set_group_and_mode(&name("node.sock"), None, 0o600)
        .expect("mode");
    assert!(
        moved.join("node.sock").exists(),
        "not bound in the opened directory"
    );
    assert!(
        !elsewhere.join("node.sock").exists(),
        "bound through the link"
    );
}

#[tokio::test]
async fn a_symlink_in_place_of_the_directory_is_refused() {
    let dir = private_dir();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("run");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let err = bind_unix(&link.join("node.sock"), 0o660, None).expect_err("a link");
    assert!(
        matches!(err, ServeError::UnsafeSocketDir { .. })
            && err.to_string().contains("symbolic link"),
        "{err}"
    );
    assert!(!real.join("node.sock").exists());
}

#[tokio::test]
async fn a_socket_directory_others_can_write_is_refused_unless_sticky() {
    let dir = private_dir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = bind_unix(&open.join("node.sock"), 0o660, None).expect_err("world-writable");
    let text = err.to_string();
    assert!(
        text.contains(&open.display().to_string()) && text.contains("0777"),
        "{text}"
    );
    assert!(!open.join("node.sock").exists());

    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).expect("chmod");
    let err = bind_unix(&open.join("node.sock"), 0o660, None).expect_err("group-writable");
    assert!(err.to_string().contains("0775"), "{err}");

    // Sticky (as /tmp): others cannot remove or rename our socket.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let _listener = bind_unix(&open.join("node.sock"), 0o660, None).expect("sticky directory");
}

#[tokio::test]
async fn a_socket_directory_owned_by_another_user_is_refused() {
    // Giving a directory away needs root, as the tests run (CI included).
    let dir = private_dir();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown");
    let err = bind_unix(&theirs.join("node.sock"), 0o660, None).expect_err("not ours");
    assert!(err.to_string().contains("uid 65534"), "{err}");
}
