//! The official OpenAI Python SDK, unchanged, against the real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{python_with_openai_sdk, repo_path, TestServer, KEY_A};

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
