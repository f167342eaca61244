//! Routing overhead: a request that must go to an external provider (its risk is above
//! the local ceiling), sent once straight to the mock upstream and once through warden,
//! which assesses it, routes it, streams it from the upstream and answers in OpenAI's
//! shape. `cargo bench --bench routing`.
//!
//! Target (issue 3): added p99 under 1 ms and throughput at least 0.9x direct, at 1, 8
//! and 64 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warden::auth::{digest, KeyStore};
use warden::backend::local::LocalBackend;
use warden::config::Config;

const KEY: &str = "bench-key";
const UPSTREAM_LATENCY: Duration = Duration::from_millis(30);

/// warden in front of `upstream`, recording every request in an audit log of its own;
/// `fsync: false` leaves out the durability wait, to tell routing from audit.
async fn warden(upstream: &str, fsync: bool, audit_dir: &std::path::Path) -> String {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n\
         audit: {{dir: \"{}\", fsync: {fsync}}}\n\
         providers:\n  - {{name: mock, kind: openai, base_url: \"{upstream}\", max_concurrency: 64, models: [{{name: mock-large, input_per_million: 1, output_per_million: 2}}]}}\n\
         routing:\n  escalation_models: [mock-large]\n  label_risk: {{\"sensitivity=high\": 90}}\n",
        digest(KEY),
        audit_dir.display(),
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
    // Never asked: the risk sends every request straight out.
    let local = Arc::new(LocalBackend::loading("local", 1, Duration::from_secs(1)));
    let state = warden::server::build_state(&config, keys, local, &|_| None).unwrap();
    common::serve(warden::build_app(state, config.server.max_body_bytes)).await
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = mock_upstream::MockUpstream::start().await;
        upstream.stop_recording();
        let durable_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let unsynced_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let durable = warden(&upstream.base, true, durable_dir.path()).await;
        let unsynced = warden(&upstream.base, false, unsynced_dir.path()).await;
        let direct = format!("{}/chat/completions", upstream.base);
        let body = json!({
            "model": "auto",
            "messages": [{"role": "user", "content": "Summarise the contract."}],
            "metadata": {"sensitivity": "high"}
        });
        common::compare(
            "routing overhead, risk-routed request (audit fsynced) vs the upstream called directly",
            (&direct, KEY),
            (&format!("{durable}/v1/chat/completions"), KEY),
            &body,
        )
        .await;
        // A real provider takes tens of milliseconds; the same comparison against one
        // shows the overhead in proportion, with and without the audit's fsync.
        upstream.always(mock_upstream::Behaviour::Delay(
            UPSTREAM_LATENCY,
            Box::new(mock_upstream::Behaviour::answer("Hello from upstream.")),
        ));
        common::compare(
            "routing overhead with a 30 ms upstream (audit fsynced)",
            (&direct, KEY),
            (&format!("{durable}/v1/chat/completions"), KEY),
            &body,
        )
        .await;
        common::compare(
            "routing overhead with a 30 ms upstream (audit written, not fsynced)",
            (&direct, KEY),
            (&format!("{unsynced}/v1/chat/completions"), KEY),
            &body,
        )
        .await;
    });
}
