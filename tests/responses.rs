//! The Responses API over HTTP: a conversation continued through
//! `previous_response_id` reaches the provider whole, stored responses belong to the
//! agent that made them, a refused function call never reaches the output, every
//! response is on the audit record, and refusals name the Responses field at fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::{sse_data, TestServer, KEY_A, KEY_B};
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;

async fn with_mock(mock: &MockUpstream) -> TestServer {
    TestServer::builder()
        .provider(common::provider(
            "mock",
            ProviderKind::Openai,
            &mock.base,
            &["mock-large"],
        ))
        .start()
        .await
}

async fn create(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    server
        .send(reqwest::Method::POST, "/v1/responses", key, Some(body))
        .await
}

#[tokio::test]
async fn a_continued_conversation_reaches_the_provider_whole_and_stays_with_its_agent() {
    let mock = MockUpstream::start().await;
    mock.script([
        Behaviour::answer("Paris."),
        Behaviour::answer("About two million."),
    ]);
    let server = with_mock(&mock).await;
    let (status, first) = create(
        &server,
        KEY_A,
        json!({"model": "mock-large", "instructions": "Be brief.",
               "input": "What is the capital of France?"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["output"][0]["content"][0]["text"], "Paris.");
    let id = first["id"].as_str().unwrap();

    // Another agent cannot read it, continue it or delete it.
    let path = format!("/v1/responses/{id}");
    let (status, error) = server.send(reqwest::Method::GET, &path, KEY_B, None).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "response_not_found");
    let (status, error) = create(
        &server,
        KEY_B,
        json!({"model": "mock-large", "previous_response_id": id, "input": "And?"}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "previous_response_id");
    let (status, _) = server
        .send(reqwest::Method::DELETE, &path, KEY_B, None)
        .await;
    assert_eq!(status, 404);

    let (status, second) = create(
        &server,
        KEY_A,
        json!({"model": "mock-large", "previous_response_id": id,
               "instructions": "Answer in numbers.", "input": "How many people live there?",
               "store": false}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], id);
    let sent = &mock.received()[1].body["messages"];
    assert_eq!(
        sent,
        &json!([
            {"role": "system", "content": "Answer in numbers."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "How many people live there?"},
        ]),
        "the earlier instructions are not inherited; the earlier turns are"
    );

    let (status, stored) = server.send(reqwest::Method::GET, &path, KEY_A, None).await;
    assert_eq!(status, 200);
    assert_eq!(stored, first);
    let unstored = format!("/v1/responses/{}", second["id"].as_str().unwrap());
    let (status, _) = server
        .send(reqwest::Method::GET, &unstored, KEY_A, None)
        .await;
    assert_eq!(status, 404, "`store: false` keeps nothing");
    let (status, deleted) = server
        .send(reqwest::Method::DELETE, &path, KEY_A, None)
        .await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (status, _) = server.send(reqwest::Method::GET, &path, KEY_A, None).await;
    assert_eq!(status, 404);

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    assert_eq!(
        records.len(),
        3,
        "two answered, one refused before the gateway"
    );
}

#[tokio::test]
async fn a_refused_function_call_never_reaches_the_output_plain_or_streamed() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::Answer {
        content: String::new(),
        tool_call: Some(("get_weather".into(), r#"{"city": 7}"#.into())),
    });
    let server = with_mock(&mock).await;
    let request = json!({
        "model": "mock-large",
        "input": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "name": "get_weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"]}}],
    });
    let (status, body) = create(&server, KEY_A, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let output = body["output"].as_array().unwrap();
    assert!(
        output.iter().all(|item| item["type"] != "function_call"),
        "{body}"
    );
    let told = output[0]["content"][0]["text"].as_str().unwrap();
    assert!(told.contains("get_weather"), "{told}");
    let decisions = body["warden"]["policy"]["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{body}");
    // The provider was asked in its own (chat) form.
    let sent = &mock.received()[0].body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let (status, text) = server
        .send(
            reqwest::Method::POST,
            "/v1/responses",
            KEY_A,
            Some(streamed),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let text = text.as_str().unwrap();
    assert!(!text.contains("function_call"), "{text}");
    let events: Vec<Value> = sse_data(text)
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let sequence: Vec<u64> = events
        .iter()
        .map(|event| event["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
    assert_eq!(last["response"]["output"][0]["type"], "message");
}

#[tokio::test]
async fn refusals_name_the_responses_field_at_fault() {
    let server = TestServer::start().await;
    let function =
        |parameters: Value| json!([{"type": "function", "name": "f", "parameters": parameters}]);
    let cases = [
        (json!({"model": "auto"}), "input"),
        (json!({"input": []}), "input"),
        (
            json!({"input": "Hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"input": "Hi", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"input": "Hi", "tools": function(json!("no"))}),
            "tools[0].parameters",
        ),
        (
            json!({"input": "Hi", "tools": function(json!({"type": "object"})),
                   "tool_choice": {"type": "function", "name": "g"}}),
            "tool_choice.name",
        ),
        (
            json!({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x",
                   "schema": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}}}}),
            "text.format.schema",
        ),
        (
            json!({"input": [{"role": "user", "content": "Hi"}, {"type": "web_search_call"}]}),
            "input[1].type",
        ),
        (
            json!({"input": [{"role": "pirate", "content": "Hi"}]}),
            "input[0]",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
            "input[0].content",
        ),
        (
            json!({"input": [{"type": "function_call_output", "output": "x"}]}),
            "input[0].call_id",
        ),
        (json!({"input": "Hi", "background": true}), "background"),
        (
            json!({"input": "Hi", "include": ["file_search_call.results"]}),
            "include",
        ),
        // Past the model's 8,192 positions (context_length_exceeded).
        (json!({"input": "word ".repeat(9000)}), "input"),
    ];
    for (body, param) in cases {
        let (status, error) = create(&server, KEY_A, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn the_local_model_answers_with_log_probabilities_when_asked() {
    let server = TestServer::start().await;
    let (status, body) = create(
        &server,
        KEY_A,
        json!({"input": "Say hello.", "temperature": 0, "max_output_tokens": 8,
               "include": ["message.output_text.logprobs"], "top_logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "local");
    let text = &body["output"][0]["content"][0];
    let logprobs = text["logprobs"].as_array().unwrap();
    assert!(!logprobs.is_empty(), "{body}");
    assert_eq!(logprobs[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let tokens: String = logprobs
        .iter()
        .map(|token| token["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, text["text"].as_str().unwrap());
}
