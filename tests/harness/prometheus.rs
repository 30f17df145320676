//! A real Prometheus server for metrics tests: Debian's `prometheus`, on a
//! loopback port, with its own config and data under a uniquely named temp
//! dir, scraping the targets it is given every second. It runs under
//! coreutils `timeout`, so a test process that dies without dropping it
//! cannot leave it running for long.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{make_dir, remove_dir_noisy, unique_name};

/// Longest life of a test's Prometheus.
const LIFETIME: Duration = Duration::from_secs(900);

/// A free loopback port now (a tiny race with other binders; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A Prometheus process scraping some targets.
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each `(job, host:port)` every
    /// second, and waits until it answers.
    pub fn start(purpose: &str, targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = make_dir(&unique_name(purpose));
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap_or_else(|e| panic!("prometheus.yml: {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.join("prometheus.log"))
            .unwrap_or_else(|e| panic!("prometheus.log: {e}"));
        let child = Command::new("timeout")
            .arg(LIFETIME.as_secs().to_string())
            .arg("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (deploy/setup-tests.sh installs it): {e}")
            });
        let mut prometheus = Prometheus {
            child: Some(child),
            dir,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(get(addr, "/-/ready"), Ok((200, _))) {
            if let Some(Ok(Some(status))) = prometheus.child.as_mut().map(|c| c.try_wait()) {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The values of an instant PromQL query, one per series (empty: no series).
    pub fn query(&self, promql: &str) -> Result<Vec<f64>, String> {
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        let series = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result: {body}"))?;
        series
            .iter()
            .map(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| format!("bad sample: {s}"))
            })
            .collect()
    }

    /// Waits until `promql` has exactly one series satisfying `ok`, and returns its value.
    pub fn wait_for(&self, promql: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(promql);
            if let Ok([v]) = got.as_deref() {
                if ok(*v) {
                    return *v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: last answer {got:?}\n{}",
                super::tail(&self.log(), 20)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", super::tail(&self.log(), 30));
        }
        if let Some(mut child) = self.child.take() {
            // SIGTERM to `timeout`, which passes it on to prometheus and exits with it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        remove_dir_noisy(&self.dir);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {response}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// Runs `promtool check metrics` on an exposition; Err with its complaints.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
