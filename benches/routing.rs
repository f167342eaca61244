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

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = mock_upstream::MockUpstream::start().await;
        upstream.stop_recording();
        // Every request is recorded (and fsynced) in an audit log of the bench's own.
        let audit_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let yaml = format!(
            "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n\
             audit: {{dir: \"{}\"}}\n\
             providers:\n  - {{name: mock, kind: openai, base_url: \"{}\", max_concurrency: 64, models: [{{name: mock-large, input_per_million: 1, output_per_million: 2}}]}}\n\
             routing:\n  escalation_models: [mock-large]\n  label_risk: {{\"sensitivity=high\": 90}}\n",
            digest(KEY),
            audit_dir.path().display(),
            upstream.base
        );
        let config = Config::from_yaml(&yaml, std::path::Path::new("bench.yaml")).unwrap();
        let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
        // Never asked: the risk sends every request straight out.
        let local = Arc::new(LocalBackend::loading("local", 1, Duration::from_secs(1)));
        let state = warden::server::build_state(&config, keys, local, &|_| None).unwrap();
        let warden = common::serve(warden::build_app(state, config.server.max_body_bytes)).await;

        let body = json!({
            "model": "auto",
            "messages": [{"role": "user", "content": "Summarise the contract."}],
            "metadata": {"sensitivity": "high"}
        });
        common::compare(
            "routing overhead, risk-routed request vs the upstream called directly",
            (&format!("{}/chat/completions", upstream.base), KEY),
            (&format!("{warden}/v1/chat/completions"), KEY),
            &body,
        )
        .await;
        // A real provider takes tens of milliseconds; the same comparison against one
        // shows the overhead in proportion.
        upstream.always(mock_upstream::Behaviour::Delay(
            UPSTREAM_LATENCY,
            Box::new(mock_upstream::Behaviour::answer("Hello from upstream.")),
        ));
        common::compare(
            "routing overhead with a 30 ms upstream",
            (&format!("{}/chat/completions", upstream.base), KEY),
            (&format!("{warden}/v1/chat/completions"), KEY),
            &body,
        )
        .await;
    });
}
