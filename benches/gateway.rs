//! Gateway overhead: the model replaced by a backend that answers instantly, called
//! once through warden and once through a bare HTTP endpoint that hands the same body
//! to the same backend. The difference is what warden adds (auth, validation, routing,
//! response building). `cargo bench --bench gateway`.
//!
//! Target (issue 2): added p99 latency under 1 ms at 1, 8 and 64 connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use common::instant::{body, serve, warden_url, InstantBackend, KEY};
use serde_json::json;
use warden::backend::{collect, Backend};
use warden::chat::{ChatRequest, Message, Role, Sampling, ToolChoice};

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
                response_format: Default::default(),
                raw_prompt: false,
                choices: 1,
                parallel_tool_calls: None,
            };
            let generation = collect(backend.generate(request, Instant::now()).await.unwrap())
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
        let audit = format!("{{dir: \"{}\"}}", audit_dir.path().display());
        let warden = warden_url(backend.clone(), &audit).await;
        let direct = direct_url(backend).await;
        common::compare(
            "gateway overhead, instant backend",
            (&direct, KEY),
            (&warden, KEY),
            &common::Requests::fixed(&body()),
        )
        .await;
    });
}
