//! warden on one core: `warden serve` pinned to core 0 (`taskset -c 0`), the mock
//! upstream and the load generator each a process of their own pinned to core 1, the
//! model named by the request served by the mock (which answers at once), the audit
//! log on. What one core of warden serves, and what it adds to each answer, at 1, 8 and
//! 64 connections, against the mock called directly; once with the audit fsynced and
//! once written without fsync. `cargo bench --bench one_core`.
//!
//! Without `taskset` on the machine the three processes run unpinned, and the table
//! says so.
//!
//! Target (issue 21): at least twice the one-core throughput measured before it
//! (827 / 2,988 / 3,802 requests/s fsynced, 1,515 / 5,079 / 3,704 without fsync, at 1 /
//! 8 / 64 connections) and an added p99 under 1 ms at 8 connections without fsync.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use warden::auth::digest;

const KEY: &str = "bench-key";
const WARDEN_CORE: &str = "0";
const OTHERS_CORE: &str = "1";

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned_command(core: &str, program: &Path, pinned: bool) -> Command {
    if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", core]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn taskset_works() -> bool {
    Command::new("taskset")
        .args(["-c", WARDEN_CORE, "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Reads `from` until a line containing `marker`; returns what follows the marker.
fn read_until(from: impl std::io::Read, marker: &str) -> String {
    for line in BufReader::new(from).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find(marker) {
            return line[at + marker.len()..].trim().to_string();
        }
    }
    panic!("the process ended before printing `{marker}`");
}

/// This bench's own executable in role `role` (`mock` or `load`), pinned to the
/// others' core.
fn role(role: &str, args: &[&str], pinned: bool) -> Command {
    let me = std::env::current_exe().unwrap();
    let mut command = pinned_command(OTHERS_CORE, &me, pinned);
    command.args(["--role", role]).args(args);
    command
}

/// `warden serve` on its core, in front of `upstream`; returns its base URL.
fn start_warden(upstream: &str, fsync: bool, dir: &Path, pinned: bool) -> (Process, String) {
    let config = dir.join("warden.yaml");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    std::fs::write(
        &config,
        format!(
            "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n\
             local: {{models_dir: \"{}\", fetch_on_start: false}}\n\
             audit: {{dir: \"{}\", fsync: {fsync}}}\n\
             providers:\n  - {{name: mock, kind: openai, base_url: \"{upstream}\", max_concurrency: 256, models: [{{name: mock-large, input_per_million: 1, output_per_million: 2}}]}}\n",
            digest(KEY),
            models.display(),
            dir.join("audit").display(),
        ),
    )
    .unwrap();
    // Another build of warden (`ONE_CORE_WARDEN=path`) to compare against, side by side.
    let binary = std::env::var("ONE_CORE_WARDEN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warden").to_string());
    let mut child = pinned_command(WARDEN_CORE, Path::new(&binary), pinned)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,warden::server=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(at) = line.find("listening on ") {
                found
                    .send(line[at + "listening on ".len()..].trim().to_string())
                    .unwrap();
                break;
            }
        }
        // Keep draining, so warden never blocks on a full pipe.
        for _ in lines {}
    });
    let base = address.recv_timeout(Duration::from_secs(60)).unwrap();
    // The local model loads in the background at start; let it finish off the clock.
    std::thread::sleep(Duration::from_secs(5));
    (Process(child), base)
}

/// Role `mock`: the mock upstream on a runtime of one worker, its URL on stdout.
fn mock() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = mock_upstream::MockUpstream::start().await;
        upstream.stop_recording();
        println!("mock at {}", upstream.base);
        std::future::pending::<()>().await
    });
}

/// Role `load`: the side-by-side table, on a runtime of one worker.
fn load(title: &str, direct: &str, through: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(common::compare(
        title,
        (&format!("{direct}/chat/completions"), KEY),
        (&format!("{through}/v1/chat/completions"), KEY),
        &common::Requests::fixed(&json!({
            "model": "mock-large",
            "messages": [{"role": "user", "content": "Summarise the contract."}]
        })),
    ));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .map(|at| args[at + 1].clone())
    };
    match value("--role").as_deref() {
        Some("mock") => return mock(),
        Some("load") => {
            return load(
                &value("--title").unwrap(),
                &value("--direct").unwrap(),
                &value("--through").unwrap(),
            )
        }
        _ => {}
    }
    // `cargo bench` passes `--bench`; anything else asking to list or filter is not a
    // run of this bench.
    if args.iter().any(|arg| arg == "--list") {
        return;
    }
    let pinned = taskset_works();
    let placement = if pinned {
        "warden pinned to core 0; mock and load generator to core 1"
    } else {
        "taskset unavailable: the three processes run unpinned"
    };
    let mut mock = role("mock", &[], pinned)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let upstream = read_until(mock.stdout.take().unwrap(), "mock at ");
    let _mock = Process(mock);
    for fsync in [true, false] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (_warden, base) = start_warden(&upstream, fsync, dir.path(), pinned);
        let title = format!(
            "one core ({placement}), model served by an instant mock, audit {}: warden vs the mock called directly",
            if fsync { "fsynced" } else { "written, not fsynced" }
        );
        let status = role(
            "load",
            &["--title", &title, "--direct", &upstream, "--through", &base],
            pinned,
        )
        .status()
        .unwrap();
        assert!(status.success(), "the load generator failed");
    }
}
