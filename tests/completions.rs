//! `/v1/completions` over HTTP with the real local model: a raw prompt is continued as
//! written (no chat template around it), whole and streamed, with this API's
//! log-probabilities and `echo`; it is recorded like any request; and what only a
//! provider could serve, or this API cannot express, is refused naming its field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mock_upstream::MockUpstream;
use common::{TestServer, KEY_A};
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;

const COUNTING: &str = "1, 2, 3, 4, 5,";

async fn complete(server: &TestServer, body: Value) -> (u16, Value) {
    server
        .send(reqwest::Method::POST, "/v1/completions", KEY_A, Some(body))
        .await
}

#[tokio::test]
async fn a_raw_prompt_is_continued_as_written_with_its_logprobs_and_recorded() {
    let server = TestServer::start().await;
    let (status, body) = complete(
        &server,
        json!({"model": "auto", "prompt": COUNTING, "max_tokens": 6, "temperature": 0,
               "logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"), "{body}");
    let choice = &body["choices"][0];
    let text = choice["text"].as_str().unwrap();
    // A model shown the bare numbers counts on; inside a chat turn it would answer.
    assert!(text.trim_start().starts_with('6'), "{text:?}");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["warden"]["route"], "local");
    assert_eq!(body["warden"]["reasons"], json!(["raw_prompt"]));

    // Parallel lists, one entry per generated token, offsets running through the text.
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 6);
    let offsets: Vec<u64> = logprobs["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|offset| offset.as_u64().unwrap())
        .collect();
    let mut expected = 0;
    for (token, offset) in tokens.iter().zip(&offsets) {
        assert_eq!(*offset, expected, "{logprobs}");
        expected += token.chars().count() as u64;
    }
    for top in logprobs["top_logprobs"].as_array().unwrap() {
        assert!((1..=2).contains(&top.as_object().unwrap().len()), "{top}");
    }

    // The prompt's tokens are the text's own: the chat template adds a system prompt and
    // turn markers around the same words.
    let (status, chat) = server
        .chat(json!({"messages": [{"role": "user", "content": COUNTING}], "max_tokens": 1}))
        .await;
    assert_eq!(status, 200, "{chat}");
    let raw_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let chat_tokens = chat["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        raw_tokens + 10 < chat_tokens,
        "{raw_tokens} vs {chat_tokens}"
    );

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    let record = records
        .iter()
        .find(|record| record["request_id"] == body["warden"]["request_id"])
        .expect("the completion is on the audit record");
    assert_eq!(record["usage"]["prompt_tokens"], raw_tokens);
}

#[tokio::test]
async fn a_streamed_completion_leads_with_the_echoed_prompt_and_ends_with_usage() {
    let server = TestServer::start().await;
    let frames = server
        .stream_at(
            "/v1/completions",
            json!({"prompt": COUNTING, "max_tokens": 5, "temperature": 0, "echo": true,
               "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert!(
        text.starts_with(COUNTING) && text.len() > COUNTING.len(),
        "{text:?}"
    );
    let finished = &chunks[chunks.len() - 2];
    assert_eq!(finished["choices"][0]["finish_reason"], "length");
    assert_eq!(finished["warden"]["route"], "local");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    // The same request whole: the same text.
    let (status, body) = complete(
        &server,
        json!({"prompt": COUNTING, "max_tokens": 5, "temperature": 0, "echo": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], text);

    // Two choices: each led by the prompt, streamed by index as they are whole.
    let two = json!({"prompt": COUNTING, "max_tokens": 5, "temperature": 0.9, "seed": 3,
                     "echo": true, "n": 2});
    let (status, whole) = complete(&server, two.clone()).await;
    assert_eq!(status, 200, "{whole}");
    let mut streamed = two;
    streamed["stream"] = json!(true);
    let frames = server.stream_at("/v1/completions", streamed).await;
    let mut texts = vec![String::new(); 2];
    for frame in &frames[..frames.len() - 1] {
        let chunk: Value = serde_json::from_str(frame).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            texts[index].push_str(choice["text"].as_str().unwrap());
        }
    }
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{whole}");
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        let text = choice["text"].as_str().unwrap();
        assert!(
            text.starts_with(COUNTING) && text.len() > COUNTING.len(),
            "{whole}"
        );
        assert_eq!(texts[index], text, "{frames:?}");
    }
}

#[tokio::test]
async fn what_the_local_model_cannot_serve_is_refused_naming_the_field() {
    let mock = MockUpstream::start().await;
    let server = TestServer::builder()
        .provider(common::provider(
            "mock",
            ProviderKind::Openai,
            &mock.base,
            &["mock-large"],
        ))
        .start()
        .await;
    for (body, status, param) in [
        // A provider's chat model would read the prompt as a question.
        (json!({"model": "mock-large", "prompt": "a"}), 400, "model"),
        (json!({"model": "no-such", "prompt": "a"}), 404, "model"),
        (json!({"prompt": ["a", "b"]}), 400, "prompt"),
        (json!({"prompt": [1, 2, 3]}), 400, "prompt"),
        (json!({"prompt": "a", "suffix": "z"}), 400, "suffix"),
        (json!({"prompt": "a", "logprobs": 9}), 400, "logprobs"),
        (
            json!({"prompt": "a", "echo": true, "logprobs": 1}),
            400,
            "echo",
        ),
        (json!({"prompt": "a", "best_of": 2}), 400, "best_of"),
        (json!({"prompt": "a", "max_tokens": -1}), 400, "max_tokens"),
        // Past the model's 8,192 positions (context_length_exceeded).
        (json!({"prompt": "word ".repeat(9000)}), 400, "prompt"),
    ] {
        let (got, error) = complete(&server, body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    assert!(mock.received().is_empty(), "nothing reached the provider");
}
