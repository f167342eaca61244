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
const WINDOW: Duration = Duration::from_secs(2);
/// Windows per side, alternating direct and through: drift in the machine's load (it is
/// shared) then falls on both sides alike instead of on whichever ran second.
const ROUNDS: usize = 3;

/// Latencies (µs) of every answer received in the measuring windows so far.
#[derive(Default)]
pub struct Samples {
    latencies_us: Vec<f64>,
    measured: Duration,
}

impl Samples {
    fn percentile(&mut self, q: f64) -> f64 {
        self.latencies_us.sort_by(f64::total_cmp);
        let last = self.latencies_us.len() - 1;
        self.latencies_us[((self.latencies_us.len() as f64 * q) as usize).min(last)]
    }

    fn per_second(&self) -> f64 {
        self.latencies_us.len() as f64 / self.measured.as_secs_f64()
    }
}

pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// POSTs `body` to `url` from `connections` concurrent clients for one measuring window
/// (after a warm-up), each waiting for the whole answer before sending again, and adds
/// what it saw to `samples`.
pub async fn load(
    url: &str,
    key: &str,
    body: &serde_json::Value,
    connections: usize,
    samples: &mut Samples,
) {
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
                if since_start > WARM_UP + WINDOW {
                    return latencies;
                }
                if since_start > WARM_UP {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
        })
    });
    for latencies in futures::future::join_all(tasks).await {
        samples.latencies_us.extend(latencies.unwrap());
    }
    samples.measured += WINDOW;
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
        let (mut base, mut warden) = (Samples::default(), Samples::default());
        for _ in 0..ROUNDS {
            load(direct.0, direct.1, body, connections, &mut base).await;
            load(through.0, through.1, body, connections, &mut warden).await;
        }
        let (base_p50, base_p99) = (base.percentile(0.50), base.percentile(0.99));
        let (warden_p50, warden_p99) = (warden.percentile(0.50), warden.percentile(0.99));
        println!(
            "{connections:>5} | {base_p50:>10.0} {base_p99:>9.0} {:>8.0} | {warden_p50:>10.0} {warden_p99:>9.0} {:>8.0} | {:>9.0} {:>9.0} {:>6.2}",
            base.per_second(),
            warden.per_second(),
            warden_p50 - base_p50,
            warden_p99 - base_p99,
            warden.per_second() / base.per_second()
        );
    }
}
