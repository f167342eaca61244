//! Cost of a governor permit: admit and release, uncontended and with 64 tasks
//! contending for 8 slots (every permit is held across a yield, so most admissions
//! queue and most releases hand the slot to a waiter). `cargo bench --bench governor`.
//!
//! Target (issue 4): governor overhead under 5 µs per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warden::auth::digest;
use warden::config::Config;
use warden::governor::{Admission, Governor, GovernorSettings, Priority};
use warden::metrics::Metrics;

const CONTENDERS: usize = 64;
const SLOTS: usize = 8;

fn governor() -> Governor {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\n",
        digest("bench-key")
    );
    let config = Config::from_yaml(&yaml, Path::new("bench.yaml")).unwrap();
    let settings = GovernorSettings::from_config(&config).backend("local", SLOTS);
    Governor::new(settings, Metrics::new().unwrap().governor)
}

fn ask(class: Priority) -> Admission<'static> {
    Admission {
        agent: "bench",
        tenant: "bench",
        priority: Some(class),
        backend: "local",
    }
}

fn permits(c: &mut Criterion) {
    let mut group = c.benchmark_group("governor");
    group.throughput(Throughput::Elements(1));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let uncontended = governor();
    group.bench_function("acquire_release_uncontended", |b| {
        b.to_async(&runtime).iter(|| async {
            let permit = uncontended.admit(ask(Priority::P1)).await.unwrap();
            drop(permit);
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let contended = governor();
    group.bench_function("acquire_release_64_contending", |b| {
        b.iter_custom(|iters| runtime.block_on(contend(&contended, iters)))
    });
    group.finish();
}

/// `iters` admissions and releases spread over 64 tasks; the time they all took.
async fn contend(governor: &Governor, iters: u64) -> Duration {
    let per_task = iters.div_ceil(CONTENDERS as u64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|task| {
            let governor = governor.clone();
            let class = Priority::ALL[task % Priority::ALL.len()];
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let permit = governor.admit(ask(class)).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(permit);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Time per admission, scaled back to the `iters` criterion asked for.
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * CONTENDERS as u64) as f64)
}

criterion_group!(benches, permits);
criterion_main!(benches);
