//! Shared by the load benches: serve an app on an ephemeral port, drive a URL with N
//! keep-alive connections for a fixed time, and print a side-by-side table.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod instant;

/// The allocator `warden serve` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use rand::SeedableRng;

const WARM_UP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(2);
/// A window lasts until it holds this many answers too: at one connection to a 30 ms
/// upstream, 2 s would give a p99 from a handful of samples.
const MIN_ANSWERS_PER_WINDOW: usize = 400;
/// Windows per side, alternating direct and through: drift in the machine's load (it is
/// shared) then falls on both sides alike instead of on whichever ran second.
const ROUNDS: usize = 5;

/// One measuring window: what each answer took (µs) beyond the upstream time its
/// request asked for, and how long the window lasted.
pub struct Window {
    latencies_us: Vec<f64>,
    measured: Duration,
}

impl Window {
    fn percentile(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q)
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    sorted[((sorted.len() as f64 * q) as usize).min(last)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Answers per second over all of `windows`.
fn per_second(windows: &[Window]) -> f64 {
    let answers: usize = windows.iter().map(|w| w.latencies_us.len()).sum();
    let seconds: f64 = windows.iter().map(|w| w.measured.as_secs_f64()).sum();
    answers as f64 / seconds
}

/// The requests a load sends.
#[derive(Clone)]
pub enum Requests {
    /// The same body every time, serialised once.
    Fixed(Vec<u8>),
    /// `body` with ` delay_us=N` added to its last message, N drawn uniformly from
    /// `range_us` per request: the mock upstream waits exactly that long
    /// (`Behaviour::DelayAsked`), so what an answer took beyond N is what the path to the
    /// upstream and back added, whatever the upstream's own latency. A spread of
    /// latencies also keeps the connections from falling into step with one another,
    /// as they do behind a constant one.
    AskedLatency {
        body: serde_json::Value,
        range_us: std::ops::Range<u64>,
    },
}

impl Requests {
    pub fn fixed(body: &serde_json::Value) -> Self {
        Requests::Fixed(serde_json::to_vec(body).unwrap())
    }

    /// The next request's body, and the upstream time it asks for (µs).
    fn next(&self, rng: &mut impl rand::Rng) -> (Vec<u8>, f64) {
        match self {
            Requests::Fixed(payload) => (payload.clone(), 0.0),
            Requests::AskedLatency { body, range_us } => {
                let asked = rng.random_range(range_us.clone());
                let mut body = body.clone();
                let messages = body["messages"].as_array_mut().unwrap();
                let last = messages.last_mut().unwrap();
                let text = format!("{} delay_us={asked}", last["content"].as_str().unwrap());
                last["content"] = text.into();
                (serde_json::to_vec(&body).unwrap(), asked as f64)
            }
        }
    }
}

/// Runs `start` on `runtime`, on a thread of its own that keeps it running for the rest
/// of the bench, and returns what it made: a server started there lives on threads of
/// its own, as a separate process would, instead of sharing the load generator's.
pub fn apart<T: Send + 'static>(
    runtime: tokio::runtime::Runtime,
    start: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (started, made) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            started.send(start.await).unwrap();
            std::future::pending::<()>().await
        })
    });
    made.recv().unwrap()
}

/// A runtime like an ordinary server's (a worker per core), for the mock upstream.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// warden itself, as `warden serve` serves it: its own listener with the configured
/// connection limits and timeouts.
pub async fn serve_warden(state: warden::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        warden::api::serve_app(listener, state, std::future::pending())
            .await
            .unwrap()
    });
    format!("http://{address}")
}

/// Sends `requests` to `url` from `connections` concurrent clients for one measuring
/// window (after a warm-up), each waiting for the whole answer before sending again.
pub async fn load(url: &str, key: &str, requests: &Requests, connections: usize) -> Window {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks = (0..connections).map(|_| {
        let (client, url, key, requests, answered) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            requests.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut latencies = Vec::new();
            loop {
                let (payload, asked_us) = requests.next(&mut rng);
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(payload)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                let latency_us = sent.elapsed().as_secs_f64() * 1e6 - asked_us;
                let since_start = started.elapsed();
                if since_start <= WARM_UP {
                    continue;
                }
                let enough = answered.load(Ordering::Relaxed) >= MIN_ANSWERS_PER_WINDOW;
                if since_start > WARM_UP + WINDOW && enough {
                    return (latencies, since_start - WARM_UP);
                }
                answered.fetch_add(1, Ordering::Relaxed);
                latencies.push(latency_us);
            }
        })
    });
    let mut window = Window {
        latencies_us: Vec::new(),
        measured: WINDOW,
    };
    for finished in futures::future::join_all(tasks).await {
        let (latencies, measured) = finished.unwrap();
        window.latencies_us.extend(latencies);
        window.measured = window.measured.max(measured);
    }
    window
}

/// Measures `direct` and `through` side by side at each connection count and prints
/// what going through warden adds. Windows alternate, direct then through, `ROUNDS`
/// times. A side's p50 and p99 are the medians of its windows' own; "added" is the
/// median over rounds of each through window's figure minus the direct window's just
/// before it, so a stall of the shared machine during one window does not decide the
/// result. "pooled" is the p99 of all through answers minus that of all direct ones.
pub async fn compare(
    title: &str,
    direct: (&str, &str),
    through: (&str, &str),
    requests: &Requests,
) {
    println!("{title} (latencies in µs)");
    println!(
        "{:>5} | {:>10} {:>9} {:>8} | {:>10} {:>9} {:>8} | {:>9} {:>9} {:>6} | {:>6}",
        "conns",
        "direct p50",
        "p99",
        "req/s",
        "warden p50",
        "p99",
        "req/s",
        "added p50",
        "p99",
        "pooled",
        "ratio"
    );
    for connections in [1, 8, 64] {
        let (mut base, mut warden) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            base.push(load(direct.0, direct.1, requests, connections).await);
            warden.push(load(through.0, through.1, requests, connections).await);
        }
        let typical =
            |windows: &[Window], q: f64| median(windows.iter().map(|w| w.percentile(q)).collect());
        let added = |q: f64| {
            median(
                base.iter()
                    .zip(&warden)
                    .map(|(b, w)| w.percentile(q) - b.percentile(q))
                    .collect(),
            )
        };
        let pooled = |windows: &[Window]| {
            let all: Vec<f64> = windows
                .iter()
                .flat_map(|w| w.latencies_us.clone())
                .collect();
            percentile(&all, 0.99)
        };
        println!(
            "{connections:>5} | {:>10.0} {:>9.0} {:>8.0} | {:>10.0} {:>9.0} {:>8.0} | {:>9.0} {:>9.0} {:>6.0} | {:>6.2}",
            typical(&base, 0.50),
            typical(&base, 0.99),
            per_second(&base),
            typical(&warden, 0.50),
            typical(&warden, 0.99),
            per_second(&warden),
            added(0.50),
            added(0.99),
            pooled(&warden) - pooled(&base),
            per_second(&warden) / per_second(&base)
        );
    }
}
