//! Routing overhead: a request that must go to an external provider (its risk is above
//! the local ceiling), sent once straight to the mock upstream and once through warden,
//! which assesses it, routes it, streams it from the upstream and answers in OpenAI's
//! shape. `cargo bench --bench routing`.
//!
//! The three parties run apart, as they would as processes: warden on the runtime
//! `warden serve` builds, the mock upstream and the load generator on runtimes of their
//! own. They still share this machine's cores.
//!
//! Target (issue 3): added p99 under 1 ms and throughput at least 0.9x direct, at 1, 8
//! and 64 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use serde_json::json;
use warden::auth::{digest, KeyStore};
use warden::backend::local::LocalBackend;
use warden::config::Config;

const KEY: &str = "bench-key";
/// A provider's latency, drawn per request (µs).
const UPSTREAM_LATENCY_US: std::ops::Range<u64> = 20_000..40_000;

/// warden in front of `upstream`, recording every request in an audit log of its own;
/// `fsync: false` leaves out the durability wait, to tell routing from audit.
fn warden(upstream: &str, fsync: bool, audit_dir: &std::path::Path) -> String {
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
    common::apart(
        warden::server::runtime().unwrap(),
        common::serve_warden(state),
    )
}

/// The same hop with nothing on it: axum in front of reqwest, on the same runtime, the
/// upstream's answer passed back whole. What any proxy built on this HTTP stack adds on
/// this machine; the rest of warden's figure is its own work.
fn bare_proxy(upstream: &str) -> String {
    let target: reqwest::Url = format!("{upstream}/chat/completions").parse().unwrap();
    let client = reqwest::Client::new();
    let forward = move |body: Bytes| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let answer = client
                .post(target)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let content_type = answer.headers()["content-type"].clone();
            (
                [("content-type", content_type)],
                answer.bytes().await.unwrap(),
            )
        }
    };
    let app = Router::new().route("/v1/chat/completions", post(forward));
    common::apart(warden::server::runtime().unwrap(), common::serve(app))
}

fn main() {
    let upstream = common::apart(
        common::server_runtime(),
        mock_upstream::MockUpstream::start(),
    );
    upstream.stop_recording();
    let durable_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let unsynced_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let durable = warden(&upstream.base, true, durable_dir.path());
    let unsynced = warden(&upstream.base, false, unsynced_dir.path());
    let bare = bare_proxy(&upstream.base);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
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
            &common::Requests::fixed(&body),
        )
        .await;
        // A real provider takes tens of milliseconds, and not the same each time: each
        // request asks the mock for its own latency, and the figures are what an answer
        // took beyond it.
        upstream.always(mock_upstream::Behaviour::DelayAsked(Box::new(
            mock_upstream::Behaviour::answer("Hello from upstream."),
        )));
        let provider_like = common::Requests::AskedLatency {
            body,
            range_us: UPSTREAM_LATENCY_US,
        };
        for (title, through) in [
            (
                "routing overhead with a 20-40 ms upstream (audit fsynced): latency beyond the upstream's",
                &durable,
            ),
            (
                "routing overhead with a 20-40 ms upstream (audit written, not fsynced): latency beyond the upstream's",
                &unsynced,
            ),
            (
                "for reference, a bare forwarding proxy on the same stack (\"warden\" columns) with a 20-40 ms upstream",
                &bare,
            ),
        ] {
            common::compare(
                title,
                (&direct, KEY),
                (&format!("{through}/v1/chat/completions"), KEY),
                &provider_like,
            )
            .await;
        }
    });
}
