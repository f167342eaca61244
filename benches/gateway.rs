//! Gateway overhead: the model replaced by a backend that answers instantly, called
//! once through warden and once through a bare HTTP endpoint that hands the same body
//! to the same backend. The difference is what warden adds (auth, validation, routing,
//! response building). `cargo bench --bench gateway`.
//!
//! Target (issue 2): added p99 latency under 1 ms at 1, 8 and 64 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use futures::stream;
use serde_json::json;
use warden::auth::{digest, KeyStore};
use warden::backend::{collect, Backend, BackendError, BackendStatus, EventStream};
use warden::chat::{
    ChatRequest, Confidence, FinishReason, GenerationEvent, GenerationSummary, Message, Role,
    Sampling, Timings, ToolChoice, Usage,
};
use warden::config::Config;

const KEY: &str = "bench-key";
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

/// Answers every request at once with the same short completion.
struct InstantBackend;

#[async_trait::async_trait]
impl Backend for InstantBackend {
    fn name(&self) -> &str {
        "instant"
    }

    fn models(&self) -> Vec<String> {
        vec!["instant".into()]
    }

    fn status(&self) -> BackendStatus {
        BackendStatus::Ready
    }

    async fn generate(&self, _request: ChatRequest) -> Result<EventStream, BackendError> {
        let events = vec![
            Ok(GenerationEvent::Content {
                text: "The capital of France is Paris.".into(),
                logprobs: Vec::new(),
            }),
            Ok(GenerationEvent::Finished(Box::new(GenerationSummary {
                backend: "instant".into(),
                model: "instant".into(),
                finish_reason: FinishReason::Stop,
                tool_calls: Vec::new(),
                malformed_tool_call: false,
                usage: Usage {
                    prompt_tokens: 27,
                    completion_tokens: 7,
                },
                confidence: Some(Confidence {
                    mean_logprob: -0.26,
                    min_logprob: -1.4,
                }),
                timings: Timings::default(),
            }))),
        ];
        Ok(Box::pin(stream::iter(events)))
    }
}

fn body() -> serde_json::Value {
    json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "temperature": 0
    })
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/v1/chat/completions")
}

/// `audit_dir`: where the durable audit log goes (every request is recorded and fsynced
/// before it is answered, so this measures that too).
async fn warden_url(backend: Arc<dyn Backend>, audit_dir: &std::path::Path) -> String {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\naudit: {{dir: \"{}\"}}\n",
        digest(KEY),
        audit_dir.display()
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
    serve(warden::build_app(
        warden::server::build_state(&config, keys, backend).unwrap(),
        config.server.max_body_bytes,
    ))
    .await
}

/// The same backend behind nothing but HTTP and a fixed JSON answer of similar size.
async fn direct_url(backend: Arc<dyn Backend>) -> String {
    let handler = move |_body: Bytes| {
        let backend = backend.clone();
        async move {
            let request = ChatRequest {
                model: "instant".into(),
                messages: vec![Message::text(Role::User, "What is the capital of France?")],
                tools: Vec::new(),
                tool_choice: ToolChoice::Auto,
                sampling: Sampling::default(),
                logprobs: None,
            };
            let generation = collect(backend.generate(request).await.unwrap())
                .await
                .unwrap();
            axum::Json(json!({
                "id": "chatcmpl-direct", "object": "chat.completion", "created": 0, "model": "instant",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 27, "completion_tokens": 7, "total_tokens": 34}
            }))
        }
    };
    serve(Router::new().route("/v1/chat/completions", post(handler))).await
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

async fn load(url: &str, connections: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let payload = serde_json::to_vec(&body()).unwrap();
    let started = Instant::now();
    let tasks = (0..connections).map(|_| {
        let (client, url, payload) = (client.clone(), url.to_string(), payload.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(KEY)
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

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(InstantBackend);
        let audit_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let warden = warden_url(backend.clone(), audit_dir.path()).await;
        let direct = direct_url(backend).await;
        println!("gateway overhead, instant backend (latencies in µs)");
        println!("{:>5} | {:>9} {:>9} {:>8} | {:>9} {:>9} {:>8} | {:>9} {:>9} {:>6}", "conns", "direct p50", "p99", "req/s", "warden p50", "p99", "req/s", "added p50", "p99", "ratio");
        for connections in [1, 8, 64] {
            let base = load(&direct, connections).await;
            let through = load(&warden, connections).await;
            println!(
                "{connections:>5} | {:>10.0} {:>9.0} {:>8.0} | {:>10.0} {:>9.0} {:>8.0} | {:>9.0} {:>9.0} {:>6.2}",
                base.p50_us,
                base.p99_us,
                base.rps,
                through.p50_us,
                through.p99_us,
                through.rps,
                through.p50_us - base.p50_us,
                through.p99_us - base.p99_us,
                through.rps / base.rps
            );
        }
    });
}
