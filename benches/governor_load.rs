//! The governor at three times capacity, through the real server: a backend with a
//! fixed service time (so the figures are about the governor, not the model) behind
//! 2 slots, open-loop arrivals in a mix of classes. Prints, per class, the p50 and p99
//! queue wait of served requests, the share served and the refusals, then the
//! governor's own cost per request measured in the same run.
//! `cargo bench --bench governor_load`.
//!
//! Targets (issue 4): P0 p99 wait at most 10% of P2 p99 wait, no request lost,
//! governor overhead under 5 µs per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/common/fixed_service.rs"]
mod fixed_service;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden::auth::{digest, KeyStore};
use warden::config::Config;
use warden::governor::{Admission, Governor, GovernorSettings, Priority};
use warden::metrics::Metrics;

const KEY: &str = "bench-key";
const SERVICE_TIME: Duration = Duration::from_millis(20);
const SLOTS: usize = 2;
/// Capacity is SLOTS / SERVICE_TIME = 100 requests a second; three times that arrive.
const ARRIVALS_PER_SECOND: u64 = 300;
const RUN: Duration = Duration::from_secs(10);
/// 2 in 10 are P0, 3 are P1, 5 are P2.
const MIX: [Priority; 10] = [
    Priority::P2,
    Priority::P1,
    Priority::P2,
    Priority::P0,
    Priority::P2,
    Priority::P1,
    Priority::P2,
    Priority::P0,
    Priority::P1,
    Priority::P2,
];
const OVERHEAD_SAMPLES: u32 = 200_000;

/// The shipped default (5 s) unless `AGING_MS` says otherwise; the other governor
/// settings are the defaults (64 per class, 30 s queue timeout).
fn aging_ms() -> u64 {
    std::env::var("AGING_MS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5_000)
}

fn config() -> Config {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n\
         local: {{slots: {SLOTS}}}\n\
         governor: {{aging_ms: {aging_ms}}}\n",
        digest(KEY),
        aging_ms = aging_ms()
    );
    Config::from_yaml(&yaml, Path::new("bench.yaml")).unwrap()
}

#[derive(Default)]
struct ClassFigures {
    sent: usize,
    waits_ms: Vec<f64>,
    refusals: BTreeMap<String, usize>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = config();
        let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
        let backend = Arc::new(fixed_service::FixedServiceBackend::new(SERVICE_TIME));
        let state = warden::server::build_state(&config, keys, backend, &|_| None).unwrap();
        let base = common::serve_warden(state).await;
        let url = format!("{base}/v1/chat/completions");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .unwrap();

        let total = (ARRIVALS_PER_SECOND * RUN.as_secs()) as usize;
        let interval = Duration::from_secs(1) / ARRIVALS_PER_SECOND as u32;
        let started = tokio::time::Instant::now();
        let requests: Vec<_> = (0..total)
            .map(|index| {
                let (client, url) = (client.clone(), url.clone());
                let class = MIX[index % MIX.len()];
                tokio::spawn(async move {
                    tokio::time::sleep_until(started + interval * index as u32).await;
                    let response = client
                        .post(url)
                        .bearer_auth(KEY)
                        .header("x-priority", class.as_str())
                        .json(&json!({"messages": [{"role": "user", "content": "Hi"}]}))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap();
                    (class, status, body)
                })
            })
            .collect();
        let mut classes: BTreeMap<&str, ClassFigures> = BTreeMap::new();
        let mut answered = 0;
        for request in requests {
            let (class, status, body) = request.await.unwrap();
            answered += 1;
            let figures = classes.entry(class.as_str()).or_default();
            figures.sent += 1;
            if status == 200 {
                figures
                    .waits_ms
                    .push(body["warden"]["timings"]["queue_ms"].as_f64().unwrap());
            } else {
                let code = body["error"]["code"].as_str().unwrap_or("?");
                *figures
                    .refusals
                    .entry(format!("{status} {code}"))
                    .or_default() += 1;
            }
        }

        println!(
            "governor at 3x overload: {total} requests over {RUN:?} ({ARRIVALS_PER_SECOND}/s), \
             {SLOTS} slots x {SERVICE_TIME:?} service = {} /s capacity, aging {} ms",
            SLOTS as u128 * 1000 / SERVICE_TIME.as_millis(),
            aging_ms()
        );
        println!(
            "{:>5} | {:>5} {:>6} {:>7} | {:>12} {:>12} | refusals",
            "class", "sent", "served", "share", "wait p50 ms", "wait p99 ms"
        );
        let mut p99 = BTreeMap::new();
        for (class, figures) in &mut classes {
            figures.waits_ms.sort_by(f64::total_cmp);
            let at = |q: f64| {
                let waits = &figures.waits_ms;
                if waits.is_empty() {
                    return f64::NAN;
                }
                waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)]
            };
            p99.insert(*class, at(0.99));
            println!(
                "{class:>5} | {:>5} {:>6} {:>6.1}% | {:>12.1} {:>12.1} | {:?}",
                figures.sent,
                figures.waits_ms.len(),
                100.0 * figures.waits_ms.len() as f64 / figures.sent as f64,
                at(0.50),
                at(0.99),
                figures.refusals
            );
        }
        println!(
            "answered {answered} of {total} (lost {}); P0 p99 / P2 p99 = {:.1}%",
            total - answered,
            100.0 * p99["P0"] / p99["P2"]
        );
    });
    let overhead = overhead_per_request();
    println!(
        "governor overhead per request (admit + release, uncontended, {OVERHEAD_SAMPLES} samples): {:.2} µs",
        overhead.as_secs_f64() * 1e6
    );
}

/// The governor's own cost per request: one admission and one release, on a fresh
/// governor with the same configuration, timed over many in a row.
fn overhead_per_request() -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let settings = GovernorSettings::from_config(&config()).backend("fixed", SLOTS);
    let governor = Governor::new(settings, Metrics::new().unwrap().governor);
    let ask = Admission {
        agent: "bench",
        tenant: "bench",
        priority: Some(Priority::P1),
        backend: "fixed",
    };
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..OVERHEAD_SAMPLES {
            drop(governor.admit(ask).await.unwrap());
        }
        started.elapsed() / OVERHEAD_SAMPLES
    })
}
