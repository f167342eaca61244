//! `/v1/embeddings` over HTTP against the mock upstream: vectors come back from the
//! provider's embedding model as it wrote them, priced and on the audit record; a
//! provider that refuses is failed over; their cost counts against the agent's spend
//! cap; chat and embedding models are not confused; bad input is refused naming its
//! field, before any provider is called.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::{TestServer, KEY_A};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use warden::backend::provider::config::{ModelKind, ProviderKind};
use warden::config::routing::{RawProvider, RawProviderModel};

/// A provider named `name` at the mock, serving the chat model `mock-large` and the
/// embedding model `embed-small` at one dollar per million input tokens.
fn provider(name: &str, mock: &MockUpstream) -> RawProvider {
    let mut provider = common::provider(name, ProviderKind::Openai, &mock.base, &["mock-large"]);
    provider.retries = 0;
    provider.models.push(RawProviderModel {
        kind: ModelKind::Embedding,
        upstream: Some("text-embedding-small".into()),
        ..common::priced("embed-small", 1, 0)
    });
    provider
}

async fn embed(server: &TestServer, body: Value) -> (u16, Value) {
    server
        .send(reqwest::Method::POST, "/v1/embeddings", KEY_A, Some(body))
        .await
}

#[tokio::test]
async fn vectors_come_back_priced_recorded_and_failed_over() {
    let mock = MockUpstream::start().await;
    let server = TestServer::builder()
        .provider(provider("first", &mock))
        .provider(provider("second", &mock))
        .start()
        .await;

    let (status, body) = embed(
        &server,
        json!({"model": "embed-small", "input": ["a cat", "a dog"], "dimensions": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "embed-small");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["embedding"], json!([1.0, 0.5, -0.25]));
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 6, "total_tokens": 6})
    );
    let report = &body["warden"];
    assert_eq!(report["route"], "external");
    assert_eq!(report["backend"], "first");
    let cost: f64 = report["cost_usd"].as_str().unwrap().parse().unwrap();
    assert!((cost - 6e-6).abs() < 1e-12, "{report}");
    let sent = &mock.received()[0];
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.body["model"], "text-embedding-small");
    assert_eq!(sent.body["dimensions"], 3);

    // A provider that refuses the request hands it to the next that serves the model.
    mock.script([Behaviour::fail(400), Behaviour::answer("")]);
    let (status, body) = embed(&server, json!({"model": "embed-small", "input": "a cow"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["backend"], "second");
    assert!(body["warden"]["reasons"]
        .as_array()
        .unwrap()
        .contains(&json!("provider_failover")));

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    assert_eq!(records.len(), 2, "each request once on the record");
    assert_eq!(records[0]["usage"]["prompt_tokens"], 6);
    assert_eq!(records[0]["status"], "completed");
}

#[tokio::test]
async fn chat_and_embedding_models_are_not_confused_and_bad_input_is_named() {
    let mock = MockUpstream::start().await;
    let server = TestServer::builder()
        .provider(provider("mock", &mock))
        .start()
        .await;
    for (body, status, param) in [
        (json!({"model": "mock-large", "input": "a"}), 404, "model"),
        (
            json!({"model": "smollm2-135m-instruct", "input": "a"}),
            404,
            "model",
        ),
        (json!({"input": "a"}), 400, "model"),
        (json!({"model": "embed-small"}), 400, "input"),
        (
            json!({"model": "embed-small", "input": ["a", ""]}),
            400,
            "input[1]",
        ),
        (
            json!({"model": "embed-small", "input": "a", "encoding_format": "hex"}),
            400,
            "encoding_format",
        ),
    ] {
        let (got, error) = embed(&server, body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let (status, error) = server
        .chat(json!({"model": "embed-small", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(status, 404, "an embedding model answers no chat: {error}");
    assert!(mock.received().is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn embeddings_spend_counts_against_the_agents_cap() {
    let mock = MockUpstream::start().await;
    // One input costs 3 tokens at a dollar per million: the first request spends past
    // the cap, the next is refused before any provider is called.
    let cap: Decimal = "0.000001".parse().unwrap();
    let server = TestServer::builder()
        .provider(provider("mock", &mock))
        .agent("agent-a", |agent| agent.daily_spend_usd = Some(cap))
        .start()
        .await;
    let request = json!({"model": "embed-small", "input": "a cat"});
    assert_eq!(embed(&server, request.clone()).await.0, 200);
    let (status, error) = embed(&server, request).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["code"], "budget_exceeded");
    assert_eq!(mock.received().len(), 1);
    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    assert_eq!(records.len(), 2, "the refusal is on the record too");
}
