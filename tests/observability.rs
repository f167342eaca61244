//! What an operator reads about one request: every line `warden serve` logs on a
//! request's behalf (a provider's retry, its failure, the answer's end) carries the
//! request's id, whether the answer is whole or streamed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::Spawned;
use common::{user, ServerOptions, KEY_A};
use serde_json::json;

/// Sends one request for the mock's model; returns its id (`x-request-id`).
async fn ask(server: &Spawned, stream: bool) -> String {
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&json!({"model": "mock-large", "messages": user("Hi"), "stream": stream}))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // Read to the end: a streamed answer logs as it finishes.
    response.text().await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_a_request_logs_carries_its_id_whole_and_streamed() {
    let mock = MockUpstream::start().await;
    let options = ServerOptions {
        extra_config: format!(
            "providers:\n\
             \x20 - {{name: mock, kind: openai, base_url: \"{}\", timeout_ms: 5000, retries: 1, backoff_base_ms: 1, backoff_max_ms: 1, models: [{{name: mock-large}}]}}\n",
            mock.base
        ),
        ..ServerOptions::default()
    };
    let (_dir, path) = common::config_file(&options);
    let mut server = Spawned::start(&path, &[]);
    assert!(server.wait_ready(Duration::from_secs(120)).await);
    // Whatever start-up logged is behind us: from here on, only the requests log.
    server.wait_for_log("model loaded", Duration::from_millis(200));
    let before = server.lines_read().len();

    let mut ids = Vec::new();
    for stream in [false, true] {
        // A retry, then an answer.
        mock.script([Behaviour::fail(500), Behaviour::answer("Hello.")]);
        ids.push(ask(&server, stream).await);
        server
            .wait_for_log("completed", Duration::from_secs(10))
            .expect("the answer's end was not logged");
        // A retry, then the provider fails for good.
        mock.script([Behaviour::fail(500), Behaviour::fail(500)]);
        ids.push(ask(&server, stream).await);
        server
            .wait_for_log("provider failed", Duration::from_secs(10))
            .expect("the provider's failure was not logged");
    }

    let lines = &server.lines_read()[before..];
    for (index, id) in ids.iter().enumerate() {
        let own: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(&format!("request_id={id}")))
            .collect();
        let said = |words: &str| own.iter().any(|line| line.contains(words));
        assert!(said("retrying"), "request {index} ({id}): {own:#?}");
        let end = if index % 2 == 0 {
            "completed"
        } else {
            "provider failed"
        };
        assert!(
            said(end),
            "request {index} ({id}) never logged `{end}`: {own:#?}"
        );
    }
    let strays: Vec<&String> = lines
        .iter()
        .filter(|line| {
            !ids.iter()
                .any(|id| line.contains(&format!("request_id={id}")))
        })
        .collect();
    assert!(
        strays.is_empty(),
        "lines logged without their request's id: {strays:#?}"
    );
}
