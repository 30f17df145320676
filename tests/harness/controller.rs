//! A real `volmig controller` process for end-to-end tests.

use std::time::Duration;

use tonic::transport::Channel;
use volmig::proto;
use volmig::proto::controller_client::ControllerClient;

use super::service::ServiceProcess;
use super::Pool;

/// A controller with its own state dir, unix socket and config file.
pub struct ControllerProcess {
    service: ServiceProcess,
}

impl ControllerProcess {
    /// Starts a controller with `config` (TOML; `listen` and `state_dir` are set here).
    pub fn start(purpose: &str, config: &str) -> ControllerProcess {
        let service = ServiceProcess::start("controller", purpose, |dir, _| {
            let file = dir.join("controller.toml");
            std::fs::write(&file, config)
                .unwrap_or_else(|e| panic!("writing controller config: {e}"));
            vec!["--config".to_string(), file.to_string_lossy().into_owned()]
        });
        ControllerProcess { service }
    }

    /// Starts a controller listening on TCP `listen` with `config` and
    /// `extra` flags.
    pub fn start_tcp(
        purpose: &str,
        listen: &str,
        config: &str,
        extra: &[&str],
    ) -> ControllerProcess {
        let service = ServiceProcess::start_tcp("controller", purpose, listen, |dir, _| {
            let file = dir.join("controller.toml");
            std::fs::write(&file, config)
                .unwrap_or_else(|e| panic!("writing controller config: {e}"));
            let mut args = vec!["--config".to_string(), file.to_string_lossy().into_owned()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        });
        ControllerProcess { service }
    }

    /// `unix:///…/controller.sock`.
    pub fn endpoint(&self) -> String {
        self.service.endpoint()
    }

    /// What the controller logged.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Waits up to 10 s until `done` holds for the controller's log; returns the log.
    pub fn wait_for_log(&self, done: impl Fn(&str) -> bool) -> String {
        self.service.wait_for_log(done)
    }

    /// SIGKILLs the controller.
    pub fn kill9(&mut self) {
        self.service.kill9();
    }

    /// Starts it again on the same state dir.
    pub fn restart(&mut self) {
        self.service.restart();
    }

    /// A client.
    pub async fn client(&self) -> ControllerClient<Channel> {
        let channel = volmig::api::client::connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connect to controller: {e}"));
        ControllerClient::new(channel)
    }
}

/// A controller config with a 1 s heartbeat (down after 3 s) that tags each
/// of `pools` with `tag` (adding `per_pool` keys to each): tests require the
/// tag so that other tests' pools on the same libvirtd are never chosen.
pub fn tagged_pools_config(tag: &str, pools: &[&dyn Pool], per_pool: &str) -> String {
    let mut config = String::from("heartbeat_interval_seconds = 1\ndown_after_seconds = 3\n");
    for p in pools {
        config.push_str(&format!(
            "[[pools]]\npool = \"{}\"\ntags = [\"{tag}\"]\n{per_pool}",
            p.name()
        ));
    }
    config
}

/// Sends `req` through the controller and requires its refusal as
/// FAILED_PRECONDITION whose message names `rule` (a named pool a placement
/// rule rejects).
pub async fn assert_refused_by_rule(
    client: &mut ControllerClient<Channel>,
    req: proto::MigrateVolumeRequest,
    rule: &str,
) {
    let refused = client
        .migrate_volume(req)
        .await
        .expect_err("a named pool that a rule rejects");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains(rule),
        "{rule} not in: {}",
        refused.message()
    );
}

/// Waits until the controller lists every node of `ids` as up.
pub async fn wait_nodes_up(ctl: &ControllerProcess, ids: &[&str]) {
    let mut client = ctl.client().await;
    for _ in 0..100 {
        let nodes = client
            .list_nodes(proto::ListNodesRequest {})
            .await
            .expect("list nodes")
            .into_inner()
            .nodes;
        let up = ids.iter().all(|id| {
            nodes
                .iter()
                .any(|n| n.node_id == *id && n.state == proto::NodeState::Up as i32)
        });
        if up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("nodes {ids:?} did not register:\n{}", ctl.log());
}

/// Runs `volmig ARGS --json` (a migrate or watch), requires success, and
/// returns its events, one JSON object per line.
pub fn cli_events(args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volmig"))
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("volmig {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "volmig {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// `volmig migrate --controller … --domain DOMAIN --disk vda --tag TAG --json`:
/// the controller places `vda` on a pool carrying `tag`; its events.
pub fn cli_migrate_vda_tagged(
    ctl: &ControllerProcess,
    domain: &str,
    tag: &str,
) -> Vec<serde_json::Value> {
    cli_events(&[
        "migrate",
        "--controller",
        &ctl.endpoint(),
        "--domain",
        domain,
        "--disk",
        "vda",
        "--tag",
        tag,
    ])
}
