//! The official OpenAI Python SDK, unchanged, against the real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{python_with_openai_sdk, repo_path, user, TestServer, KEY_A, KEY_B};
use serde_json::json;
use warden::config::raw::RawRunLimits;

#[tokio::test]
async fn the_openai_python_sdk_completes_plain_and_streamed_chats() {
    let python = tokio::task::spawn_blocking(python_with_openai_sdk)
        .await
        .unwrap();
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(python)
        .arg(repo_path("tests/sdk/openai_chat.py"))
        .arg(&server.base)
        .arg(KEY_A)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Refusals no retry can fix say so (`x-should-retry: false`, no `Retry-After`), and
/// the SDK, with its default two retries, asks once: a spent budget and a spent run.
#[tokio::test]
async fn the_python_sdk_does_not_retry_refusals_that_waiting_cannot_fix() {
    let python = tokio::task::spawn_blocking(python_with_openai_sdk)
        .await
        .unwrap();
    // Each request costs about 3e-7 USD at routing/prices.yaml's local price.
    let server = TestServer::builder()
        .agent("agent-b", |agent| {
            agent.daily_spend_usd = Some("0.0000001".parse().unwrap())
        })
        .agent("agent-a", |agent| {
            agent.runs = Some(RawRunLimits {
                max_steps: Some(1),
                ..RawRunLimits::default()
            })
        })
        .start()
        .await;
    let refusal = |key: &'static str, run: &'static str| {
        let python = python.clone();
        let base = server.base.clone();
        async move {
            let output = tokio::process::Command::new(python)
                .arg(repo_path("tests/sdk/openai_refusals.py"))
                .args([base.as_str(), key, run])
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            assert!(
                output.status.success(),
                "stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout.trim().to_string()
        }
    };
    for (key, run, code) in [
        (KEY_B, "spent-budget", "budget_exceeded"),
        (KEY_A, "spent-run", "run_budget_exceeded"),
    ] {
        let first =
            json!({"messages": user("Say hi."), "max_tokens": 2, "metadata": {"run_id": run}});
        let response = server
            .client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&first)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let response = server
            .client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&first)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert!(!response.headers().contains_key("retry-after"));
        assert_eq!(refusal(key, run).await, format!("429 {code} 1"));
    }
}
