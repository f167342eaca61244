//! `/v1/embeddings` over HTTP against the mock upstream: vectors come back from the
//! provider's embedding model as it wrote them, priced and on the audit record; a
//! provider that refuses is failed over; their cost counts against the agent's spend
//! cap; chat and embedding models are not confused; bad input is refused naming its
//! field, before any provider is called. And from the real local model when it is
//! configured to serve embeddings: unit vectors, the same for a text alone or in a
//! batch, as floats, base64 or from token ids, recorded like any local answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::{TestServer, KEY_A};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use warden::backend::local::Pooling;
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

    // So does one whose answer holds fewer vectors than inputs.
    mock.script([Behaviour::answer("vectors=1"), Behaviour::answer("")]);
    let (status, body) = embed(
        &server,
        json!({"model": "embed-small", "input": ["a cow", "a hen"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["warden"]["backend"], "second");
    let failed = &body["warden"]["attempts"][0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("1 vectors for 2 inputs"),
        "{failed}"
    );

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    assert_eq!(records.len(), 3, "each request once on the record");
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
        // The local model serves embeddings only when configured to.
        (
            json!({"model": "smollm2-135m-instruct", "input": "a"}),
            400,
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

/// The local model's name, as clients address it.
const LOCAL_MODEL: &str = "smollm2-135m-instruct";

fn vector(item: &Value) -> Vec<f32> {
    item["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(x, y)| x * y).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[tokio::test]
async fn the_local_model_embeds_when_configured() {
    // Six places: an embeddings request takes up to half, so the three texts are read
    // in one batch, beside a generation.
    let server = TestServer::builder()
        .slots(6)
        .configure(|raw| raw.local.embedding_pooling = Some(Pooling::Mean))
        .start()
        .await;
    let texts = [
        "The cat sat on the mat.",
        "A cat was sitting on the mat.",
        "The central bank raised interest rates by half a point.",
    ];
    let chat = server.chat(json!({"messages": common::user("Name a colour."),
        "max_tokens": 48}));
    let embedded = embed(&server, json!({"model": LOCAL_MODEL, "input": texts}));
    let ((chat_status, chat), (status, body)) = tokio::join!(chat, embedded);
    assert_eq!(chat_status, 200, "{chat}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], LOCAL_MODEL);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    let vectors: Vec<Vec<f32>> = data.iter().map(vector).collect();
    for (index, (item, vector)) in data.iter().zip(&vectors).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        assert_eq!(vector.len(), 576, "SmolLM2-135M's hidden size");
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    // Two sentences about a cat on a mat are nearer each other than either is to one
    // about interest rates: the vectors carry the text, not noise.
    let (same, other) = (
        cosine(&vectors[0], &vectors[1]),
        cosine(&vectors[0], &vectors[2]),
    );
    assert!(same > other, "cat/cat {same} should beat cat/rates {other}");

    // The tokens the model read, counted once each; route and record as local.
    let engine = common::engine();
    let tokens: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenize(t).unwrap()).collect();
    let counted: usize = tokens.iter().map(Vec::len).sum();
    assert_eq!(body["usage"]["prompt_tokens"], counted);
    assert_eq!(body["usage"]["total_tokens"], counted);
    assert_eq!(body["warden"]["route"], "local");
    assert_eq!(body["warden"]["backend"], "local");

    // A text alone gets the vector it got in the batch, as base64 of f32s too, and
    // from its token ids.
    let (status, alone) = embed(
        &server,
        json!({"model": LOCAL_MODEL, "input": texts[2], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{alone}");
    let encoded = alone["data"][0]["embedding"].as_str().unwrap();
    let bytes = base64_decode(encoded);
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(cosine(&decoded, &vectors[2]) > 0.9999);
    let (status, from_ids) =
        embed(&server, json!({"model": LOCAL_MODEL, "input": [tokens[0]]})).await;
    assert_eq!(status, 200, "{from_ids}");
    assert!(cosine(&vector(&from_ids["data"][0]), &vectors[0]) > 0.9999);

    // What this model cannot do is refused, naming the field.
    for (body, param) in [
        (
            json!({"model": LOCAL_MODEL, "input": "a", "dimensions": 8}),
            "dimensions",
        ),
        (
            json!({"model": LOCAL_MODEL, "input": [[1, 99_999_999]]}),
            "input[0]",
        ),
        (
            json!({"model": LOCAL_MODEL, "input": ["a", "cat ".repeat(9_000)]}),
            "input[1]",
        ),
    ] {
        let (status, error) = embed(&server, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    assert_eq!(records.len(), 7, "every request once on the record");
    let record = records
        .iter()
        .find(|record| record["model_requested"] == LOCAL_MODEL)
        .unwrap();
    assert_eq!(record["report"]["route"], "local");
    assert_eq!(record["usage"]["prompt_tokens"], counted);
    assert_eq!(record["status"], "completed");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
