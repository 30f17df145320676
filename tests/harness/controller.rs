//! A real `volmig controller` process for end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use volmig::proto::controller_client::ControllerClient;

use super::{make_dir, remove_dir_noisy, unique_name};

/// A controller with its own state dir, unix socket and config file.
pub struct ControllerProcess {
    child: Option<Child>,
    dir: PathBuf,
}

impl ControllerProcess {
    /// Starts a controller with `config` (TOML; `listen` and `state_dir` are set here).
    pub fn start(purpose: &str, config: &str) -> ControllerProcess {
        super::ensure_host();
        let dir = make_dir(&unique_name(purpose));
        std::fs::write(dir.join("controller.toml"), config)
            .unwrap_or_else(|e| panic!("writing controller config: {e}"));
        let mut c = ControllerProcess { child: None, dir };
        c.spawn();
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("controller.sock")
    }

    /// `unix:///…/controller.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// What the controller logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller.log"))
            .unwrap_or_else(|e| panic!("controller log: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_volmig"))
            .arg("controller")
            .arg("--config")
            .arg(self.dir.join("controller.toml"))
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env("RUST_LOG", "volmig=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start volmig controller: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "controller did not listen within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the controller.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same state dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A client.
    pub async fn client(&self) -> ControllerClient<Channel> {
        let channel = volmig::api::client::connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("connect to controller: {e}"));
        ControllerClient::new(channel)
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", super::tail(&self.log(), 40));
        }
        self.kill9();
        remove_dir_noisy(&self.dir);
    }
}
