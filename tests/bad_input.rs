//! Bad input: every case is a 4xx in OpenAI's error shape, never a 5xx or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{user, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};

/// Checks OpenAI's error shape and returns the error object.
async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.as_object().unwrap().contains_key("param"), "{body}");
    assert!(error.as_object().unwrap().contains_key("code"), "{body}");
    error
}

async fn send_raw(server: &TestServer, body: impl Into<reqwest::Body>) -> reqwest::Response {
    server
        .chat_request()
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json() {
    let server = TestServer::start().await;
    let error = expect_error(send_raw(&server, "{\"messages\": [").await, 400).await;
    assert_eq!(error["code"], "invalid_json");
    let error = expect_error(send_raw(&server, "{\"messages\": []} trailing").await, 400).await;
    assert_eq!(error["code"], "invalid_json");
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let server = TestServer::start().await;
    let cases = [
        (json!({"messages": "hello"}), "messages"),
        (
            json!({"messages": user("hi"), "temperature": "hot"}),
            "temperature",
        ),
        (json!({"messages": user("hi"), "stream": "yes"}), "stream"),
        (
            json!({"messages": [{"role": 7, "content": "x"}]}),
            "messages[0].role",
        ),
    ];
    for (body, param) in cases {
        let error =
            expect_error(server.chat_request().json(&body).send().await.unwrap(), 400).await;
        assert_eq!(error["param"], param, "{body}");
    }
}

#[tokio::test]
async fn missing_and_empty_messages() {
    let server = TestServer::start().await;
    let error = expect_error(
        server
            .chat_request()
            .json(&json!({"model": "auto"}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(error["param"], "messages");
    assert!(error["message"].as_str().unwrap().contains("messages"));
    let error = expect_error(
        server
            .chat_request()
            .json(&json!({"messages": []}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(error["param"], "messages");
}

#[tokio::test]
async fn invalid_values_are_refused_with_their_parameter() {
    let server = TestServer::start().await;
    let cases = [
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (json!({"messages": user("hi"), "n": 17}), "n"),
        (
            json!({"messages": user("hi"), "max_tokens": -5}),
            "max_tokens",
        ),
        (
            json!({"messages": user("hi"), "max_tokens": 9_000_000_000_000i64}),
            "max_tokens",
        ),
        // Within the wire limit but beyond the model's context.
        (
            json!({"messages": user("hi"), "max_tokens": 100_000}),
            "max_tokens",
        ),
        (
            json!({"messages": user("hi"), "temperature": 3.5}),
            "temperature",
        ),
        (
            json!({"messages": user("hi"), "temperature": -0.1}),
            "temperature",
        ),
        (
            json!({"messages": user("hi"), "tools": [{"type": "function", "function": {"description": "no name"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"messages": user("hi"), "tools": [{"type": "function", "function": {"name": "f", "parameters": ["not", "an", "object"]}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"messages": user("hi"), "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]}),
            "messages[1].tool_call_id",
        ),
    ];
    for (body, param) in cases {
        let error =
            expect_error(server.chat_request().json(&body).send().await.unwrap(), 400).await;
        assert_eq!(error["param"], param, "{body}");
        assert_eq!(error["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let server = TestServer::start().await;
    let response = server
        .chat_request()
        .json(&json!({"model": "gpt-17-ultra", "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("gpt-17-ultra"));
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = TestServer::builder()
        .configure(|config| config.server.max_body_bytes = 64 * 1024)
        .start()
        .await;
    let huge = "x".repeat(100 * 1024);
    let response = server
        .chat_request()
        .json(&json!({"messages": user(&huge)}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 413).await;
    assert_eq!(error["code"], "request_too_large");
}

#[tokio::test]
async fn prompt_longer_than_the_context_is_400_with_the_counts() {
    let server = TestServer::start().await;
    // The model's full context is 8,192 positions.
    let long = "word ".repeat(9000);
    let response = server
        .chat_request()
        .json(&json!({"messages": user(&long)}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400).await;
    assert_eq!(error["code"], "context_length_exceeded");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("8192"), "{message}");
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers.iter().any(|&n| n > 9000),
        "the prompt's token count is named: {message}"
    );
}

#[tokio::test]
async fn invalid_utf8_is_400() {
    let server = TestServer::start().await;
    let mut body = br#"{"messages": [{"role": "user", "content": "caf"#.to_vec();
    body.extend_from_slice(&[0xC3, 0x28]);
    body.extend_from_slice(br#""}]}"#);
    let error = expect_error(send_raw(&server, body).await, 400).await;
    assert_eq!(error["code"], "invalid_encoding");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_openai_shape() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    expect_error(response, 404).await;
    let response = server
        .client
        .get(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405).await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let server = TestServer::builder()
        .slots(1)
        // Far shorter than the abandoned 3,000-token answer would hold the slot.
        .queue_timeout_ms(60_000)
        .start()
        .await;
    // Long enough to hold the only slot for minutes if it were never released; greedy,
    // so that it cannot happen to end within the two chunks read.
    let response = server
        .chat_request()
        .json(&json!({"messages": user("Write a very long story about a dragon."), "max_tokens": 3000, "stream": true, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    body.next().await.unwrap().unwrap();
    assert_eq!(server.local.busy_slots(), 1);
    drop(body);

    assert!(
        common::wait_until(|| server.local.busy_slots() == 0, Duration::from_secs(60)).await,
        "the abandoned generation still holds its slot"
    );
    let (status, _) = server
        .chat(json!({"messages": user("Hi"), "max_tokens": 2}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn waiting_past_the_queue_timeout_is_503_with_retry_after() {
    let server = TestServer::builder()
        .slots(1)
        .queue_timeout_ms(200)
        .start()
        .await;
    let busy = server
        .chat_request()
        .json(&json!({"messages": user("Write a long story."), "max_tokens": 3000, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut busy_body = busy.bytes_stream();
    busy_body.next().await.unwrap().unwrap();
    let response = server
        .chat_request()
        .json(&json!({"messages": user("Hi")}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let error = expect_error(response, 503).await;
    assert_eq!(error["type"], "service_unavailable");
}
