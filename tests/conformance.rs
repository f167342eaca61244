//! One set of cases, run the same against each backend an agent can reach: the local
//! engine, an OpenAI-compatible provider and the Anthropic adapter (both played by the
//! mock upstream). Whichever answers, the agent sees the same OpenAI shapes: a whole
//! answer, a stream, a tool call (whole and streamed), an error, and a stream it
//! abandons, which is recorded as cancelled and gives its slot back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::{sse_data, streamed_content, user, weather_tool, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;
use warden::config::routing::RawProvider;

/// A backend, as the agent names it, and the backend that should answer.
struct Backend {
    model: &'static str,
    answers_as: &'static str,
}

const LOCAL: Backend = Backend {
    model: "smollm2-135m-instruct",
    answers_as: "local",
};
const OPENAI: Backend = Backend {
    model: "mock-large",
    answers_as: "mock",
};
const ANTHROPIC: Backend = Backend {
    model: "claude-mock",
    answers_as: "claude",
};

/// A gateway with the real local model and both provider kinds on `mock`.
async fn gateway(mock: &MockUpstream) -> TestServer {
    let on_mock = |name: &str, kind: ProviderKind, model: &str| RawProvider {
        timeout_ms: 5000,
        retries: 0,
        ..common::provider(name, kind, &mock.base, &[model])
    };
    TestServer::builder()
        .provider(on_mock("mock", ProviderKind::Openai, "mock-large"))
        .provider(RawProvider {
            api_key_env: Some("TEST_ANTHROPIC_KEY".into()),
            ..on_mock("claude", ProviderKind::Anthropic, "claude-mock")
        })
        .start()
        .await
}

/// Every case against every backend.
#[tokio::test]
async fn every_backend_answers_in_the_same_shapes() {
    let mock = MockUpstream::start().await;
    let server = gateway(&mock).await;
    for backend in [LOCAL, OPENAI, ANTHROPIC] {
        mock.always(Behaviour::answer(
            "The sky is blue because of Rayleigh scattering.",
        ));
        whole_answer(&server, &backend).await;
        streamed_answer(&server, &backend).await;
        mock.always(Behaviour::Answer {
            content: String::new(),
            tool_call: Some(("get_weather".into(), r#"{"city": "Paris"}"#.into())),
        });
        tool_call(&server, &backend).await;
        error(&server, &backend).await;
        mock.always(Behaviour::Delay(
            Duration::from_secs(2),
            Box::new(Behaviour::answer("Too late for anyone.")),
        ));
        abandoned_stream(&server, &backend).await;
    }
}

fn asking(backend: &Backend, prompt: &str) -> Value {
    json!({"model": backend.model, "messages": user(prompt), "max_tokens": 16, "temperature": 0})
}

async fn whole_answer(server: &TestServer, backend: &Backend) {
    let (status, body) = server.chat(asking(backend, "Why is the sky blue?")).await;
    let what = backend.model;
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(body["object"], "chat.completion", "{what}");
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{what}"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0, "{what}");
    assert_eq!(choice["message"]["role"], "assistant", "{what}");
    assert!(
        !choice["message"]["content"].as_str().unwrap().is_empty(),
        "{what}: {body}"
    );
    assert!(
        ["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()),
        "{what}: {body}"
    );
    let usage = &body["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0,
        "{what}: {usage}"
    );
    assert!(
        usage["completion_tokens"].as_u64().unwrap() > 0,
        "{what}: {usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        ),
        "{what}"
    );
    assert_eq!(body["warden"]["backend"], backend.answers_as, "{what}");
}

/// The JSON chunks of a stream, after checking it ends with `[DONE]`.
fn chunks(frames: &[String], what: &str) -> Vec<Value> {
    assert_eq!(
        frames.last().map(String::as_str),
        Some("[DONE]"),
        "{what}: {frames:?}"
    );
    frames[..frames.len() - 1]
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect()
}

async fn streamed_answer(server: &TestServer, backend: &Backend) {
    let mut request = asking(backend, "Why is the sky blue?");
    request["stream"] = json!(true);
    let frames = server.stream(request).await;
    let what = backend.model;
    let chunks = chunks(&frames, what);
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{what}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]),
        "{what}: {chunks:?}"
    );
    assert!(!streamed_content(&frames).is_empty(), "{what}: {frames:?}");
    let finished: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finished.len(), 1, "{what}: {chunks:?}");
    assert_eq!(
        chunks.last().unwrap()["warden"]["backend"],
        backend.answers_as,
        "{what}"
    );
}

async fn tool_call(server: &TestServer, backend: &Backend) {
    let what = backend.model;
    let mut request = asking(backend, "What is the weather in Paris?");
    request["tools"] = weather_tool();
    request["tool_choice"] = json!("required");
    request["max_tokens"] = json!(48);
    let (status, body) = server.chat(request.clone()).await;
    assert_eq!(status, 200, "{what}: {body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{what}: {body}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function", "{what}");
    assert!(
        call["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{what}"
    );
    assert_eq!(call["function"]["name"], "get_weather", "{what}: {body}");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{what}: {arguments}");
    let decisions = body["warden"]["policy"]["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{what}");
    assert_eq!(decisions[0]["outcome"], "delivered", "{what}");

    // Streamed: the call arrives in tool-call deltas, whole once joined.
    request["stream"] = json!(true);
    let frames = server.stream(request).await;
    let chunks = chunks(&frames, what);
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(!pieces.is_empty(), "{what}: {frames:?}");
    assert_eq!(pieces[0]["function"]["name"], "get_weather", "{what}");
    let joined: String = pieces
        .iter()
        .filter_map(|p| p["function"]["arguments"].as_str())
        .collect();
    let arguments: Value = serde_json::from_str(&joined).unwrap();
    assert!(arguments["city"].is_string(), "{what}: {joined}");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "tool_calls", "{what}");
}

async fn error(server: &TestServer, backend: &Backend) {
    let what = backend.model;
    let mut request = asking(backend, "Hi");
    request["temperature"] = json!(7);
    let (status, body) = server.chat(request).await;
    assert_eq!(status, 400, "{what}: {body}");
    let error = &body["error"];
    assert_eq!(error["type"], "invalid_request_error", "{what}: {body}");
    assert_eq!(error["param"], "temperature", "{what}: {body}");
    assert!(
        error["message"].as_str().unwrap().contains("temperature"),
        "{what}"
    );
    assert!(error.get("code").is_some(), "{what}: {body}");
}

/// The agent reads the start of a stream, or nothing, and goes away: the request is
/// recorded as cancelled and its slot is free again.
async fn abandoned_stream(server: &TestServer, backend: &Backend) {
    let what = backend.model;
    let cancelled_before = count_cancelled(server).await;
    let mut request = asking(backend, "Tell me a long story about the sea.");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(200);
    let sent = server.chat_request().json(&request).send();
    // The local model starts answering at once; the mock takes two seconds to.
    if let Ok(response) = tokio::time::timeout(Duration::from_millis(500), sent).await {
        let mut body = response.unwrap().bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(
            !sse_data(std::str::from_utf8(&first).unwrap()).is_empty(),
            "{what}"
        );
    }
    let recorded = common::wait_until_async(
        || async { count_cancelled(server).await > cancelled_before },
        Duration::from_secs(10),
    )
    .await;
    assert!(recorded, "{what}: no cancelled record");
    let freed = common::wait_until_async(
        || async {
            let metrics = server.metrics().await;
            common::metric(
                &metrics,
                &format!(
                    "warden_governor_in_flight{{backend=\"{}\"}}",
                    backend.answers_as
                ),
            )
            .unwrap_or(0.0)
                == 0.0
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(freed, "{what}: its slot was not given back");
}

async fn count_cancelled(server: &TestServer) -> usize {
    let (status, body) = server.admin_get("/admin/audit?kind=request").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["status"] == "cancelled")
        .count()
}
