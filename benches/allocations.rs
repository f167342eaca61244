//! What one request allocates inside warden: heap blocks and bytes per request routed to
//! a provider (the mock upstream, in this process), counted by dhat's global allocator,
//! minus what the same request costs the client and the mock when sent to the mock
//! directly. Bytes allocated stand in for copies: every body, header map and record
//! warden builds is an allocation. `cargo bench --bench allocations`.
//!
//! The count is exact for a given build and workload (sequential requests, so no
//! allocation of another request's falls into the window), which makes it the figure to
//! compare builds by, where timings move with the machine's load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warden::auth::{digest, KeyStore};
use warden::backend::local::LocalBackend;
use warden::config::Config;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const KEY: &str = "bench-key";
const WARM_UP: usize = 200;
const REQUESTS: usize = 2_000;

/// warden in front of `upstream`, audit written without fsync.
async fn warden(upstream: &str, audit_dir: &std::path::Path) -> String {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n\
         audit: {{dir: \"{}\", fsync: false}}\n\
         providers:\n  - {{name: mock, kind: openai, base_url: \"{upstream}\", max_concurrency: 64, models: [{{name: mock-large, input_per_million: 1, output_per_million: 2}}]}}\n",
        digest(KEY),
        audit_dir.display(),
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
    let local = Arc::new(LocalBackend::loading("local", 1, Duration::from_secs(1)));
    let state = warden::server::build_state(&config, keys, local, &|_| None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        warden::api::serve_app(listener, state, std::future::pending())
            .await
            .unwrap()
    });
    format!("http://{address}/v1/chat/completions")
}

/// Blocks and bytes allocated per request over `REQUESTS` sequential requests to `url`.
async fn per_request(client: &reqwest::Client, url: &str, body: &[u8]) -> (f64, f64) {
    let send = || async {
        let response = client
            .post(url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    };
    for _ in 0..WARM_UP {
        send().await;
    }
    // Let the audit writer and the runtime settle what the warm-up left.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = dhat::HeapStats::get();
    for _ in 0..REQUESTS {
        send().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = dhat::HeapStats::get();
    let n = REQUESTS as f64;
    (
        (after.total_blocks - before.total_blocks) as f64 / n,
        (after.total_bytes - before.total_bytes) as f64 / n,
    )
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = mock_upstream::MockUpstream::start().await;
        upstream.stop_recording();
        let audit_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let through = warden(&upstream.base, audit_dir.path()).await;
        let direct = format!("{}/chat/completions", upstream.base);
        let body = serde_json::to_vec(&json!({
            "model": "mock-large",
            "messages": [{"role": "user", "content": "Summarise the contract."}]
        }))
        .unwrap();
        let client = reqwest::Client::new();
        let (direct_blocks, direct_bytes) = per_request(&client, &direct, &body).await;
        let (through_blocks, through_bytes) = per_request(&client, &through, &body).await;
        println!("allocations per request, {REQUESTS} sequential requests to a provider (audit written, not fsynced)");
        println!("{:>22} | {:>8} | {:>10}", "", "blocks", "bytes");
        println!("{:>22} | {:>8.0} | {:>10.0}", "mock called directly", direct_blocks, direct_bytes);
        println!("{:>22} | {:>8.0} | {:>10.0}", "through warden", through_blocks, through_bytes);
        println!(
            "{:>22} | {:>8.0} | {:>10.0}",
            "warden's own",
            through_blocks - direct_blocks,
            through_bytes - direct_bytes
        );
    });
}
