//! End-to-end: identities and tokens are re-read from the configuration file
//! while the process runs — when the file changes, and on SIGHUP — without
//! dropping open connections; refused calls are audited with the peer
//! address and the identity presented.

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::certs::{free_port, LeafSpec, TestCa};
use harness::node::NodeProcess;
use tonic::Code;
use volmig::api::client::{self, AuthChannel, Credentials, Peer};
use volmig::proto;
use volmig::proto::node_client::NodeClient;

/// Long enough for the 2 s poll and a loaded CI host.
const RELOAD: Duration = Duration::from_secs(20);

fn sha256_hex(token: &str) -> String {
    let out = harness::run_ok(
        "sh",
        &[
            "-c",
            &format!("printf %s '{token}' | sha256sum | cut -d' ' -f1"),
        ],
    );
    out.trim().to_string()
}

/// A viewer `[[tokens]]` entry.
fn token(name: &str, secret: &str) -> String {
    format!(
        "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"viewer\"\n",
        sha256_hex(secret)
    )
}

async fn channel(endpoint: &str, creds: &Credentials) -> AuthChannel {
    client::connect_with(Peer::Node, endpoint, creds)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// The code of a ListMigrations (a viewer's call) on `channel`.
async fn list(channel: &AuthChannel) -> Code {
    match NodeClient::new(channel.clone())
        .list_migrations(proto::ListMigrationsRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Polls `list` on `channel` until it answers `want`; false after [`RELOAD`].
async fn until_code(channel: &AuthChannel, want: Code) -> bool {
    let deadline = tokio::time::Instant::now() + RELOAD;
    while tokio::time::Instant::now() < deadline {
        if list(channel).await == want {
            return true;
        }
        // Unhurried: each refused try counts against the address's throttle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Rewrites `path` in place with `text` (of the same length as before) and
/// gives it back its old modification time, so that only a SIGHUP can tell
/// the process it changed.
fn rewrite_unnoticed(path: &Path, text: &str) {
    let reference = path.with_extension("ref");
    std::fs::copy(path, &reference).expect("copy");
    harness::run_ok(
        "touch",
        &[
            "-r",
            &path.display().to_string(),
            &reference.display().to_string(),
        ],
    );
    assert_eq!(
        std::fs::metadata(path).expect("stat").len(),
        text.len() as u64,
        "same length, so the size does not give it away"
    );
    std::fs::write(path, text).expect("rewrite");
    harness::run_ok(
        "touch",
        &[
            "-r",
            &reference.display().to_string(),
            &path.display().to_string(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_removed_from_the_file_or_on_sighup_stops_working_and_open_connections_stay() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("auth-reload"));
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}{}{}",
            token("keeper", "keep-secret"),
            token("revoked", "revoke-secret"),
            token("hupped1", "hup-secret-1")
        ),
    )
    .expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{addr}");
    let cfg_arg = cfg.display().to_string();
    let node = NodeProcess::start_tcp("auth-reload", &addr, &["--config", &cfg_arg]);

    let keep = channel(
        &endpoint,
        &Credentials::new(None, Some("keep-secret")).expect("creds"),
    )
    .await;
    let revoke = channel(
        &endpoint,
        &Credentials::new(None, Some("revoke-secret")).expect("creds"),
    )
    .await;
    let hup = channel(
        &endpoint,
        &Credentials::new(None, Some("hup-secret-1")).expect("creds"),
    )
    .await;
    assert_eq!(list(&keep).await, Code::Ok);
    assert_eq!(list(&revoke).await, Code::Ok);
    assert_eq!(list(&hup).await, Code::Ok);

    // Revoked by editing the file: the next call on the same connection fails.
    std::fs::write(
        &cfg,
        format!(
            "{}{}",
            token("keeper", "keep-secret"),
            token("hupped1", "hup-secret-1")
        ),
    )
    .expect("edit");
    assert!(
        until_code(&revoke, Code::Unauthenticated).await,
        "the removed token still works:\n{}",
        harness::tail(&node.log(), 30)
    );
    assert_eq!(
        list(&keep).await,
        Code::Ok,
        "the kept token, on its old connection"
    );

    // Revoked by SIGHUP: a change the modification time does not show.
    rewrite_unnoticed(
        &cfg,
        &format!(
            "{}{}",
            token("keeper", "keep-secret"),
            token("hupped2", "hup-secret-2")
        ),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        list(&hup).await,
        Code::Ok,
        "the poll must not have seen this change"
    );
    harness::run_ok("kill", &["-HUP", &node.pid().to_string()]);
    assert!(
        until_code(&hup, Code::Unauthenticated).await,
        "SIGHUP did not reload:\n{}",
        harness::tail(&node.log(), 30)
    );
    assert_eq!(list(&keep).await, Code::Ok);

    // A broken file changes nothing, and says why, naming the file.
    std::fs::write(
        &cfg,
        "[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\nrole = \"viewer\"\n",
    )
    .expect("break");
    let log = node.wait_for_log(|l| l.contains("configuration not reloaded"));
    assert!(
        log.contains(&cfg_arg) && log.contains("64 hex digits"),
        "{log}"
    );
    assert_eq!(list(&keep).await, Code::Ok, "the policy in force stays");

    // A refused change is audited with the peer address and the identity.
    let err = NodeClient::new(keep.clone())
        .migrate_volume(harness::node::request("web01", "vda", "pool"))
        .await
        .expect_err("a viewer may not migrate");
    assert_eq!(err.code(), Code::PermissionDenied);
    let log = node.wait_for_log(|l| {
        l.lines().any(|line| {
            line.contains(r#"rpc="volmig.v1.Node/MigrateVolume""#) && line.contains("refused")
        })
    });
    let line = log
        .lines()
        .find(|line| line.contains(r#"rpc="volmig.v1.Node/MigrateVolume""#))
        .expect("audit line");
    assert!(
        line.contains(r#"peer="127.0.0.1:"#)
            && line.contains(r#"identity="token:keeper""#)
            && line.contains(r#"code="PERMISSION_DENIED""#),
        "{line}"
    );
    drop(node);
    harness::remove_dir_noisy(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_added_to_the_file_works_without_a_restart() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("auth-reload-id"));
    let ca = TestCa::new(&dir, "reload");
    let server = ca.leaf(LeafSpec::new(
        "server",
        "server",
        &["localhost", "127.0.0.1"],
    ));
    let viewer = ca.leaf(LeafSpec::new(
        "viewer",
        "viewer.volmig.test",
        &["viewer.volmig.test"],
    ));
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, "").expect("config");
    let port = free_port();
    let mut flags = server.flags();
    flags.extend(["--config".to_string(), cfg.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = NodeProcess::start_tcp("auth-reload-id", &format!("127.0.0.1:{port}"), &flags);
    let mut files = viewer.files();
    files.ca = server.ca.clone();
    let creds = Credentials::new(Some(files), None).expect("creds");
    let conn = channel(&format!("https://localhost:{port}"), &creds).await;
    assert_eq!(
        list(&conn).await,
        Code::PermissionDenied,
        "not configured yet"
    );
    std::fs::write(
        &cfg,
        "[[identities]]\ndns = \"viewer.volmig.test\"\nrole = \"viewer\"\n",
    )
    .expect("add");
    assert!(
        until_code(&conn, Code::Ok).await,
        "the added identity is not accepted:\n{}",
        harness::tail(&node.log(), 30)
    );
    drop(node);
    harness::remove_dir_noisy(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_throttled_per_address_and_their_log_lines_limited() {
    harness::ensure_host();
    let dir = harness::make_dir(&harness::unique_name("auth-throttle"));
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[connections]\nmax_auth_failures_per_minute = 3\n{}",
            token("ci", "good-secret")
        ),
    )
    .expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{addr}");
    let cfg_arg = cfg.display().to_string();
    let node = NodeProcess::start_tcp("auth-throttle", &addr, &["--config", &cfg_arg]);
    let good = channel(
        &endpoint,
        &Credentials::new(None, Some("good-secret")).expect("creds"),
    )
    .await;
    assert_eq!(list(&good).await, Code::Ok);
    for guess in ["guess-1", "guess-2", "guess-3"] {
        let bad = channel(
            &endpoint,
            &Credentials::new(None, Some(guess)).expect("creds"),
        )
        .await;
        assert_eq!(list(&bad).await, Code::Unauthenticated);
    }
    let err = NodeClient::new(good.clone())
        .list_migrations(proto::ListMigrationsRequest::default())
        .await
        .expect_err("the address is throttled, whatever its token");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("too many failed authentications")
            && err.message().contains("retry in"),
        "{}",
        err.message()
    );
    // Four refusals within seconds from one address: one line.
    let log = node.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("refused unauthenticated call"))
        .count();
    assert_eq!(lines, 1, "{}", harness::tail(&log, 30));
    drop(node);
    harness::remove_dir_noisy(&dir);
}
