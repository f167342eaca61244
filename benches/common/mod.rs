//! Shared by the load benches: serve an app on an ephemeral port, drive a URL with N
//! keep-alive connections for a fixed time, and print a side-by-side table.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod instant;

/// The allocator `warden serve` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use axum::Router;

const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

pub struct Figures {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
}

pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// POSTs `body` to `url` from `connections` concurrent clients for the measuring window
/// (after a warm-up), each waiting for the whole answer before sending again.
pub async fn load(url: &str, key: &str, body: &serde_json::Value, connections: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let payload = serde_json::to_vec(body).unwrap();
    let started = Instant::now();
    let tasks = (0..connections).map(|_| {
        let (client, url, key, payload) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            payload.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(payload.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
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
        p50_us: at(0.50),
        p99_us: at(0.99),
        rps: latencies.len() as f64 / MEASURE.as_secs_f64(),
    }
}

/// Measures `direct` and `through` side by side at each connection count and prints
/// what going through warden adds.
pub async fn compare(
    title: &str,
    direct: (&str, &str),
    through: (&str, &str),
    body: &serde_json::Value,
) {
    println!("{title} (latencies in µs)");
    println!(
        "{:>5} | {:>10} {:>9} {:>8} | {:>10} {:>9} {:>8} | {:>9} {:>9} {:>6}",
        "conns",
        "direct p50",
        "p99",
        "req/s",
        "warden p50",
        "p99",
        "req/s",
        "added p50",
        "p99",
        "ratio"
    );
    for connections in [1, 8, 64] {
        let base = load(direct.0, direct.1, body, connections).await;
        let warden = load(through.0, through.1, body, connections).await;
        println!(
            "{connections:>5} | {:>10.0} {:>9.0} {:>8.0} | {:>10.0} {:>9.0} {:>8.0} | {:>9.0} {:>9.0} {:>6.2}",
            base.p50_us,
            base.p99_us,
            base.rps,
            warden.p50_us,
            warden.p99_us,
            warden.rps,
            warden.p50_us - base.p50_us,
            warden.p99_us - base.p99_us,
            warden.rps / base.rps
        );
    }
}
