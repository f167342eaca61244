//! A backend that answers at once, and warden served around it: for benches that
//! measure what warden itself adds.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use futures::stream;
use serde_json::json;
use warden::auth::{digest, KeyStore};
use warden::backend::{Backend, BackendError, BackendStatus, EventStream};
use warden::chat::{
    ChatRequest, Confidence, FinishReason, GenerationEvent, GenerationSummary, Timings, Usage,
};
use warden::config::Config;

pub const KEY: &str = "bench-key";

/// Answers every request at once with the same short completion.
pub struct InstantBackend;

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

    async fn generate(
        &self,
        _request: ChatRequest,
        _ranks_at: Instant,
    ) -> Result<EventStream, BackendError> {
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
                malformed_tool_calls: Vec::new(),
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

pub fn body() -> serde_json::Value {
    json!({
        "model": "auto",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "temperature": 0
    })
}

pub async fn serve(app: Router) -> String {
    format!("{}/v1/chat/completions", super::serve(app).await)
}

/// warden around `backend`; `audit` is the `audit:` section (every request is recorded
/// before it is answered, so the figures include that).
pub async fn warden_url(backend: Arc<dyn Backend>, audit: &str) -> String {
    let yaml = format!(
        "agents:\n  - {{id: bench, tenant: bench, key_sha256: \"{}\"}}\naudit: {audit}\n",
        digest(KEY),
    );
    let config = Config::from_yaml(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let keys = KeyStore::from_config(&config, |_| None).unwrap().store;
    let state = warden::server::build_state(&config, keys, backend, &|_| None).unwrap();
    format!("{}/v1/chat/completions", super::serve_warden(state).await)
}
