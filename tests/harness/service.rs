//! A `volmig` service process (node or controller) for end-to-end tests: its own
//! directory, unix socket and log, started from the test binary's
//! `CARGO_BIN_EXE_volmig`, so tests can `kill -9` and restart it as a host would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{make_dir, remove_dir_noisy, unique_name};

/// A running `volmig <component> …` listening on `<dir>/<component>.sock`.
pub struct ServiceProcess {
    child: Option<Child>,
    dir: PathBuf,
    name: String,
    component: &'static str,
    args: Vec<String>,
    /// A TCP address to listen on instead of the unix socket.
    tcp: Option<String>,
}

impl ServiceProcess {
    /// Starts `volmig <component> --listen unix://<dir>/<component>.sock
    /// --state-dir <dir>/state ARGS`, where `args` gets the new directory and
    /// the unique name (so it can write files there or use the name as an id).
    pub fn start(
        component: &'static str,
        purpose: &str,
        args: impl FnOnce(&Path, &str) -> Vec<String>,
    ) -> ServiceProcess {
        Self::start_listening(component, purpose, None, args)
    }

    /// [`ServiceProcess::start`] listening on the TCP address `tcp`
    /// (`127.0.0.1:PORT`) instead of the unix socket.
    pub fn start_tcp(
        component: &'static str,
        purpose: &str,
        tcp: &str,
        args: impl FnOnce(&Path, &str) -> Vec<String>,
    ) -> ServiceProcess {
        Self::start_listening(component, purpose, Some(tcp.to_string()), args)
    }

    fn start_listening(
        component: &'static str,
        purpose: &str,
        tcp: Option<String>,
        args: impl FnOnce(&Path, &str) -> Vec<String>,
    ) -> ServiceProcess {
        super::ensure_host();
        let name = unique_name(purpose);
        let dir = make_dir(&name);
        let args = args(&dir, &name);
        let mut service = ServiceProcess {
            child: None,
            dir,
            name,
            component,
            args,
            tcp,
        };
        service.spawn();
        service
    }

    /// The unique name this service was started under (its directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.component))
    }

    /// `unix:///…/<component>.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// What `--listen` gets: the TCP address, or the unix endpoint.
    fn listen(&self) -> String {
        self.tcp.clone().unwrap_or_else(|| self.endpoint())
    }

    /// Whether the service accepts connections yet.
    fn listening(&self) -> bool {
        match &self.tcp {
            Some(addr) => std::net::TcpStream::connect(addr).is_ok(),
            // The socket file exists from bind() on, before listen(): connect.
            None => std::os::unix::net::UnixStream::connect(self.socket()).is_ok(),
        }
    }

    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The state directory passed with `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The service's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.component))
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits up to 10 s until `done` holds for the log, and returns the log. A
    /// client sees a refused handshake before the server has logged why.
    pub fn wait_for_log(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if done(&log) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("{} log: {e}", self.component));
        let child = Command::new(env!("CARGO_BIN_EXE_volmig"))
            .arg(self.component)
            .arg("--listen")
            .arg(self.listen())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.args)
            .env("RUST_LOG", "volmig=debug,info")
            // The test Ceph keeps its keyrings here; its libvirt secrets are private.
            .env("VOLMIG_CEPH_KEYRING_DIR", super::pools::CEPH_DIR)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start volmig {}: {e}", self.component));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.listening() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "volmig {} exited with {status}:\n{}",
                    self.component,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "volmig {} did not listen within 30 s:\n{}",
                self.component,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the service, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the service again on the same directory and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last {} log lines ({}) ---\n{}",
                self.component,
                self.name,
                super::tail(&self.log(), 40)
            );
        }
        self.kill9();
        remove_dir_noisy(&self.dir);
    }
}
