//! Gateway overhead: the model replaced by a backend that answers instantly, called
//! once through warden and once through a bare HTTP endpoint that hands the same body
//! to the same backend. The difference is what warden adds (auth, validation, routing,
//! response building). `cargo bench --bench gateway`.
//!
//! Target (issue 2): added p99 latency under 1 ms at 1, 8 and 64 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

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
                    cached_prompt_tokens: 0,
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
    format!("{}/v1/chat/completions", common::serve(app).await)
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
        warden::server::build_state(&config, keys, backend, &|_| None).unwrap(),
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

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(InstantBackend);
        let audit_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let warden = warden_url(backend.clone(), audit_dir.path()).await;
        let direct = direct_url(backend).await;
        common::compare(
            "gateway overhead, instant backend",
            (&direct, KEY),
            (&warden, KEY),
            &body(),
        )
        .await;
    });
}
