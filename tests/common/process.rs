//! `warden serve` as a child process, for what only a real process shows: start-up from
//! the command line, signals, a crash; and the `warden audit verify` command.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A running `warden serve`, killed when dropped however the test ends.
pub struct Spawned {
    child: Child,
    pub base: String,
    logs: Receiver<String>,
    /// Every line read so far.
    read: Vec<String>,
}

impl Spawned {
    /// Starts `warden serve --config config` on an ephemeral port with `envs` set, and
    /// waits until it listens.
    pub fn start(config: &Path, envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (lines, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[warden] {line}");
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut spawned = Spawned {
            child,
            base: String::new(),
            logs,
            read: Vec::new(),
        };
        let line = spawned
            .wait_for_log("listening on http://", Duration::from_secs(60))
            .expect("the server never listened");
        let at = line.find("listening on ").unwrap() + "listening on ".len();
        spawned.base = line[at..].trim().to_string();
        spawned
    }

    /// Waits until `/readyz` says the local model is loaded; false past `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let http = reqwest::Client::new();
        let url = self.url("/readyz");
        super::wait_until_async(
            || {
                let probe = http.get(&url).send();
                async move { matches!(probe.await, Ok(response) if response.status() == 200) }
            },
            limit,
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process's resident memory, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Sends the process a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} failed");
    }

    /// The next log line containing `needle`, skipping others; `None` past `limit`.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.read.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every line read so far, in order.
    pub fn lines_read(&self) -> &[String] {
        &self.read
    }

    /// A line containing `needle` among those already read (by `start`, or while
    /// waiting for another).
    pub fn logged(&self, needle: &str) -> Option<&str> {
        self.read
            .iter()
            .find(|line| line.contains(needle))
            .map(String::as_str)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warden serve --config config` when it is expected to refuse to start: whether it
/// exited with success, and what it printed. Killed (and a failure) past `limit`.
pub fn serve_to_exit(config: &Path, limit: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (status.is_some_and(|status| status.success()), text)
}

/// `warden audit verify PATH`: whether it passed, and what it printed.
pub fn audit_verify(path: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
