//! Audit log cost. First the log alone: concurrent appenders of request-sized records,
//! with durability on (each group commit fdatasynced before its appenders are answered)
//! and off, side by side: records/s and append latency. Then its share of a request:
//! warden around an instant backend with fsync on against the same with fsync off (the
//! added latency is what durability costs a request). `cargo bench --bench audit`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::instant::{body, warden_url, InstantBackend, KEY};
use serde_json::json;
use warden::audit::{AuditConfig, AuditLog, Entry};
use warden::backend::Backend;
use warden::metrics::Metrics;

const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

/// A record the size of a completed request's (about 1.5 kB of JSON).
fn record() -> serde_json::Value {
    json!({
        "request_id": "0f8fad5bd9cb469fa165703f6b3d3c1e", "agent": "support-bot", "tenant": "acme",
        "run_id": "run-42", "status": "completed", "received_at": "2026-11-22T08:00:00Z",
        "latency_ms": 412.5, "model_requested": "auto",
        "prompt": {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "bytes": 1834},
        "completion": {"sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752", "bytes": 212},
        "usage": {"prompt_tokens": 431, "completion_tokens": 57},
        "report": {
            "route": "escalated", "reasons": ["local_first", "low_mean_logprob"], "risk": {"score": 10, "reasons": []},
            "backend": "openai", "model": "gpt-4o-mini", "confidence": null, "malformed_tool_call": false,
            "attempts": [
                {"backend": "local", "model": "smollm2-135m-instruct", "outcome": "rejected", "usage": {"prompt_tokens": 431, "completion_tokens": 61, "cached_prompt_tokens": 0}, "confidence": {"mean_logprob": -1.31, "min_logprob": -7.2}, "latency_ms": 310.2, "cost_usd": "0.00000553"},
                {"backend": "openai", "model": "gpt-4o-mini", "outcome": "served", "usage": {"prompt_tokens": 431, "completion_tokens": 57, "cached_prompt_tokens": 0}, "latency_ms": 98.1, "cost_usd": "0.00009885"}
            ],
            "cost_usd": "0.00010438", "reference_cost_usd": "0.00009885", "routing_version": 1,
            "timings": {"queue_ms": 0.4, "prefill_ms": 120.3, "decode_ms": 189.9, "first_token_ms": 121.0, "total_ms": 412.5}
        }
    })
}

struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn appends(log: Arc<AuditLog>, appenders: usize) -> Figures {
    let started = Instant::now();
    let tasks = (0..appenders).map(|_| {
        let log = log.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let entry = Entry::new("request", &record()).unwrap();
                let sent = Instant::now();
                log.append(entry).await.unwrap();
                let since_start = started.elapsed();
                if since_start > WARM_UP + MEASURE {
                    return latencies;
                }
                if since_start > WARM_UP {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
        })
    });
    let mut latencies: Vec<f64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / MEASURE.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

fn open(dir: &std::path::Path, fsync: bool) -> Arc<AuditLog> {
    let config = AuditConfig {
        dir: dir.to_path_buf(),
        fsync,
        commit_delay: Duration::ZERO,
        max_batch: 1024,
        segment_bytes: 64 * 1024 * 1024,
        store_text: false,
    };
    Arc::new(AuditLog::open(&config, Metrics::new().unwrap().audit.clone()).unwrap())
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let durable = open(&scratch.path().join("durable"), true);
        let buffered = open(&scratch.path().join("buffered"), false);
        println!("audit append, 1.5 kB records (latencies in µs)");
        println!(
            "{:>9} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>8}",
            "appenders", "fsync rec/s", "p50", "p99", "no-sync rec/s", "p50", "p99", "ratio"
        );
        for appenders in [1, 8, 64] {
            let on = appends(durable.clone(), appenders).await;
            let off = appends(buffered.clone(), appenders).await;
            println!(
                "{appenders:>9} | {:>11.0} {:>9.0} {:>9.0} | {:>13.0} {:>9.0} {:>9.0} | {:>8.2}",
                on.per_second,
                on.p50_us,
                on.p99_us,
                off.per_second,
                off.p50_us,
                off.p99_us,
                on.per_second / off.per_second
            );
        }

        let backend: Arc<dyn Backend> = Arc::new(InstantBackend);
        let section = |name: &str, fsync: bool| {
            format!(
                "{{dir: \"{}\", fsync: {fsync}}}",
                scratch.path().join(name).display()
            )
        };
        let without = warden_url(backend.clone(), &section("requests-buffered", false)).await;
        let with = warden_url(backend, &section("requests-durable", true)).await;
        common::compare(
            "request through warden, instant backend: audit fsync off (\"direct\") vs on (\"warden\")",
            (&without, KEY),
            (&with, KEY),
            &common::Requests::fixed(&body()),
        )
        .await;
    });
}
