//! Routing and escalation through the real gateway and the real local model, with a
//! mock upstream standing in for external providers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::Spawned;
use common::{user, weather_tool, TestServer, TestServerBuilder, ADMIN_KEY};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;
use warden::config::routing::{RawBreaker, RawProvider};
use warden::route::config::RawRouting;

/// A provider `name` at `base` serving `model` at $1 in and $2 out per million tokens,
/// failing fast; a test changes the fields it is about.
fn provider(name: &str, kind: ProviderKind, base: &str, model: &str) -> RawProvider {
    RawProvider {
        timeout_ms: 2000,
        retries: 0,
        backoff_base_ms: 10,
        models: vec![common::priced(model, 1, 2)],
        ..common::provider(name, kind, base, &[model])
    }
}

/// The mock as most tests have it: an OpenAI-compatible provider `mock` of `mock-large`.
fn mock_large(mock: &MockUpstream) -> RawProvider {
    provider("mock", ProviderKind::Openai, &mock.base, "mock-large")
}

/// The mock as an Anthropic provider serving `claude-mock`.
fn claude(mock: &MockUpstream) -> RawProvider {
    RawProvider {
        api_key_env: Some("TEST_ANTHROPIC_KEY".into()),
        ..provider("claude", ProviderKind::Anthropic, &mock.base, "claude-mock")
    }
}

/// A test server with `providers` and the `routing` section.
fn routed(providers: Vec<RawProvider>, routing: RawRouting) -> TestServerBuilder {
    let builder = TestServer::builder().configure(|config| config.routing = routing);
    providers
        .into_iter()
        .fold(builder, TestServerBuilder::provider)
}

fn attempts(body: &Value) -> Vec<(String, String)> {
    body["warden"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["backend"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn reasons(body: &Value) -> Vec<String> {
    body["warden"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

/// Escalation to `model`, with the default thresholds.
fn escalating_to(model: &str) -> RawRouting {
    RawRouting {
        escalation_models: vec![model.into()],
        ..RawRouting::default()
    }
}

/// No local answer is confident enough: each is escalated to `mock-large`.
fn force_escalation() -> RawRouting {
    RawRouting {
        min_mean_logprob: Some(-0.0001),
        ..escalating_to("mock-large")
    }
}

/// Every local answer is confident enough.
fn never_escalate() -> RawRouting {
    RawRouting {
        min_mean_logprob: Some(-100.0),
        min_token_logprob: Some(-100.0),
        ..escalating_to("mock-large")
    }
}

/// `routing`, with requests labelled `sensitivity=high` scored 90 (above the ceiling).
fn high_risk_labelled(mut routing: RawRouting) -> RawRouting {
    routing.label_risk.insert("sensitivity=high".into(), 90);
    routing
}

#[tokio::test]
async fn a_confident_local_answer_stays_local() {
    let mock = MockUpstream::start().await;
    let server = routed(vec![mock_large(&mock)], never_escalate())
        .start()
        .await;
    let response = server
        .chat_request()
        .json(&json!({"messages": user("What is the capital of France?"), "temperature": 0}))
        .send()
        .await
        .unwrap();
    let header = response.headers()["x-warden-route"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert!(content(&body).contains("Paris"));
    assert_eq!(body["warden"]["route"], "local");
    assert_eq!(reasons(&body), vec!["local_first"]);
    assert!(
        header.starts_with(
            "route=local; backend=local; model=smollm2-135m-instruct; reasons=local_first"
        ),
        "{header}"
    );
    assert!(header.contains("mean_logprob="), "{header}");
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn low_confidence_escalates_and_the_local_attempt_still_counts() {
    let mock = MockUpstream::start().await;
    let keyed = RawProvider {
        api_key_env: Some("TEST_OPENAI_KEY".into()),
        ..mock_large(&mock)
    };
    let server = routed(vec![keyed], force_escalation()).start().await;
    let response = server
        .chat_request()
        .json(&json!({"messages": user("What is the capital of France?"), "temperature": 0}))
        .send()
        .await
        .unwrap();
    let header = response.headers()["x-warden-route"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "Hello from upstream.");
    assert_eq!(body["model"], "mock-large");
    assert_eq!(body["warden"]["route"], "escalated");
    assert!(reasons(&body).contains(&"low_mean_logprob".to_string()));
    assert_eq!(
        attempts(&body),
        vec![
            ("local".into(), "rejected".into()),
            ("mock".into(), "served".into())
        ]
    );
    assert!(
        header.contains("route=escalated; backend=mock; model=mock-large"),
        "{header}"
    );

    // Cost covers both attempts: the local tokens were spent too.
    let local = &body["warden"]["attempts"][0];
    let local_cost: rust_decimal::Decimal = local["cost_usd"].as_str().unwrap().parse().unwrap();
    let upstream_cost: rust_decimal::Decimal = body["warden"]["attempts"][1]["cost_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let total: rust_decimal::Decimal = body["warden"]["cost_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, local_cost + upstream_cost);
    // 11 prompt tokens at $1/M and 5 completion tokens at $2/M, from the mock.
    assert_eq!(upstream_cost, "0.000021".parse().unwrap());
    assert!(local["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(local["confidence"]["mean_logprob"].as_f64().unwrap() < 0.0);

    let sent = mock.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-test-openai");
    assert_eq!(sent[0].body["model"], "mock-large");
    assert_eq!(
        sent[0].body["messages"][0]["content"],
        "What is the capital of France?"
    );

    // Two choices escalate together: both local ones are one rejected attempt, and
    // each answer the client gets is the provider's.
    let (status, both) = server
        .chat(json!({"messages": user("What is the capital of France?"), "temperature": 0, "n": 2}))
        .await;
    assert_eq!(status, 200, "{both}");
    assert_eq!(both["warden"]["route"], "escalated");
    assert_eq!(
        attempts(&both),
        vec![
            ("local".into(), "rejected".into()),
            ("mock".into(), "served".into())
        ]
    );
    let local_tokens = both["warden"]["attempts"][0]["usage"]["prompt_tokens"].as_u64();
    assert_eq!(
        local_tokens,
        local["usage"]["prompt_tokens"].as_u64().map(|one| 2 * one)
    );
    for choice in both["choices"].as_array().unwrap() {
        assert_eq!(choice["message"]["content"], "Hello from upstream.");
    }
    assert_eq!(both["choices"].as_array().unwrap().len(), 2);
    assert_eq!(mock.received().len(), 3);
}

#[tokio::test]
async fn a_stream_never_shows_a_local_answer_that_was_escalated() {
    let mock = MockUpstream::start().await;
    let server = routed(vec![mock_large(&mock)], force_escalation())
        .start()
        .await;
    let frames = server
        .stream(json!({"messages": user("What is the capital of France?"), "temperature": 0, "stream": true}))
        .await;
    assert_eq!(common::streamed_content(&frames), "Hello from upstream.");
    let finish: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(finish["warden"]["route"], "escalated");
}

#[tokio::test]
async fn high_risk_requests_skip_the_local_model() {
    let mock = MockUpstream::start().await;
    let routing = high_risk_labelled(escalating_to("mock-large"));
    let server = routed(vec![mock_large(&mock)], routing).start().await;
    let (status, body) = server
        .chat(json!({"messages": user("Summarise the contract."), "metadata": {"sensitivity": "high"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "external");
    assert_eq!(reasons(&body), vec!["risk_above_ceiling"]);
    assert_eq!(body["warden"]["risk"]["score"], 90);
    assert_eq!(attempts(&body), vec![("mock".into(), "served".into())]);
}

#[tokio::test]
async fn a_prompt_too_long_for_the_local_context_goes_out() {
    let mock = MockUpstream::start().await;
    let server = routed(vec![mock_large(&mock)], never_escalate())
        .start()
        .await;
    let (status, body) = server
        .chat(json!({"messages": user(&"word ".repeat(9000))}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "external");
    assert!(reasons(&body).contains(&"context_overflow".to_string()));
    assert_eq!(
        attempts(&body),
        vec![
            ("local".into(), "failed".into()),
            ("mock".into(), "served".into())
        ]
    );
}

#[tokio::test]
async fn a_malformed_local_call_or_one_the_grammar_cannot_hold_is_escalated() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::Answer {
        content: String::new(),
        tool_call: Some(("get_weather".into(), r#"{"city": "Paris"}"#.into())),
    });
    let server = routed(vec![mock_large(&mock)], never_escalate())
        .start()
        .await;

    // Three tokens cannot close the call warden begins for the model: malformed.
    let (_, body) = server
        .chat(json!({
            "messages": user("What is the weather in Paris?"),
            "tools": weather_tool(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 3
        }))
        .await;
    assert_eq!(body["warden"]["route"], "escalated", "{body}");
    assert!(
        reasons(&body).contains(&"malformed_tool_call".to_string()),
        "{body}"
    );
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);

    // The grammar holds the call to the declared schema, even against the question.
    let mut strict = weather_tool();
    strict[0]["function"]["parameters"]["properties"]["city"] =
        json!({"type": "string", "enum": ["Lyon"]});
    let (_, body) = server
        .chat(json!({
            "messages": user("What is the weather in Paris?"),
            "tools": strict,
            "tool_choice": "required",
            "temperature": 0
        }))
        .await;
    assert_eq!(body["warden"]["route"], "local", "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], r#"{"city":"Lyon"}"#);

    // A tool schema the grammar engine cannot compile: the chain takes the request.
    let mut unique = weather_tool();
    unique[0]["function"]["parameters"]["properties"]["city"] =
        json!({"type": "array", "uniqueItems": true});
    let (_, body) = server
        .chat(json!({
            "messages": user("What is the weather in Paris?"),
            "tools": unique,
            "tool_choice": "required"
        }))
        .await;
    assert_eq!(body["warden"]["route"], "external", "{body}");
    assert!(
        reasons(&body).contains(&"structured_output".to_string()),
        "{body}"
    );
}

#[tokio::test]
async fn a_provider_error_then_success_is_retried() {
    let mock = MockUpstream::start().await;
    mock.script([Behaviour::fail(500)]);
    let retrying = RawProvider {
        retries: 2,
        backoff_base_ms: 200,
        ..mock_large(&mock)
    };
    let server = routed(vec![retrying], escalating_to("mock-large"))
        .start()
        .await;
    let (status, body) = server
        .chat(json!({"model": "mock-large", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "Hello from upstream.");
    assert_eq!(body["warden"]["route"], "external");
    assert_eq!(reasons(&body), vec!["named_model"]);
    let sent = mock.received();
    assert_eq!(sent.len(), 2);
    // The retry waited its backoff: at least half of `backoff_base_ms`.
    let waited = sent[1].at - sent[0].at;
    assert!(
        waited >= Duration::from_millis(100),
        "retried after {waited:?}"
    );

    // A client error is not retried, and the client is told not to retry either: the
    // request would fail the same way again.
    let ask = || async {
        server
            .chat_request()
            .json(&json!({"model": "mock-large", "messages": user("Hi")}))
            .send()
            .await
            .unwrap()
    };
    mock.script([Behaviour::fail(400)]);
    let response = ask().await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(mock.received().len(), 3);

    // A provider that is down may be up again: no such word then.
    mock.script([
        Behaviour::fail(503),
        Behaviour::fail(503),
        Behaviour::fail(503),
    ]);
    let response = ask().await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("x-should-retry").is_none());
}

#[tokio::test]
async fn a_redirect_is_reported_and_the_key_never_follows_it() {
    let (mock, elsewhere) = (MockUpstream::start().await, MockUpstream::start().await);
    mock.script([Behaviour::Redirect(format!(
        "{}/chat/completions",
        elsewhere.base
    ))]);
    let server = routed(vec![mock_large(&mock)], escalating_to("mock-large"))
        .start()
        .await;
    let (status, body) = server
        .chat(json!({"model": "mock-large", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 307"),
        "{body}"
    );
    assert!(elsewhere.received().is_empty());
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mock = MockUpstream::start().await;
    mock.script([Behaviour::Fail {
        status: 429,
        retry_after: Some(1),
    }]);
    let retrying = RawProvider {
        retries: 1,
        ..mock_large(&mock)
    };
    let server = routed(vec![retrying], RawRouting::default()).start().await;
    let (status, _) = server
        .chat(json!({"model": "mock-large", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 200);
    let sent = mock.received();
    assert_eq!(sent.len(), 2);
    let waited = sent[1].at - sent[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
}

#[tokio::test]
async fn a_down_provider_trips_its_breaker_and_the_chain_fails_over_until_it_recovers() {
    let primary = MockUpstream::start().await;
    let secondary = MockUpstream::start().await;
    primary.always(Behaviour::fail(503));
    secondary.always(Behaviour::answer("From the secondary."));
    let tripping = RawProvider {
        circuit_breaker: RawBreaker {
            consecutive_failures: 2,
            open_ms: 500,
            ..RawBreaker::default()
        },
        ..provider("primary", ProviderKind::Openai, &primary.base, "large")
    };
    let server = routed(
        vec![
            tripping,
            provider("secondary", ProviderKind::Openai, &secondary.base, "large"),
        ],
        RawRouting::default(),
    )
    .start()
    .await;
    let ask = || server.chat(json!({"model": "large", "messages": user("Hi")}));

    for _ in 0..2 {
        let (status, body) = ask().await;
        assert_eq!(status, 200);
        assert_eq!(content(&body), "From the secondary.");
        assert_eq!(
            attempts(&body),
            vec![
                ("primary".into(), "failed".into()),
                ("secondary".into(), "served".into())
            ]
        );
        assert!(reasons(&body).contains(&"provider_failover".to_string()));
    }
    // Open: the primary is not even called.
    let (_, body) = ask().await;
    assert_eq!(
        attempts(&body),
        vec![
            ("primary".into(), "skipped".into()),
            ("secondary".into(), "served".into())
        ]
    );
    assert_eq!(primary.received().len(), 2);
    let table: Value = server
        .client
        .get(server.url("/admin/routing"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["providers"][0]["circuit"], "open");

    // Recovered: after the open period one probe goes through, succeeds, closes it.
    primary.always(Behaviour::answer("From the primary."));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, body) = ask().await;
    assert_eq!(content(&body), "From the primary.");
    assert_eq!(attempts(&body), vec![("primary".into(), "served".into())]);
    let table: Value = server
        .client
        .get(server.url("/admin/routing"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["providers"][0]["circuit"], "closed");
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_failed_over() {
    let slow = MockUpstream::start().await;
    let fast = MockUpstream::start().await;
    slow.always(Behaviour::Delay(
        Duration::from_secs(5),
        Box::new(Behaviour::answer("Too late.")),
    ));
    let impatient = RawProvider {
        timeout_ms: 300,
        ..provider("slow", ProviderKind::Openai, &slow.base, "large")
    };
    let server = routed(
        vec![
            impatient,
            provider("fast", ProviderKind::Openai, &fast.base, "large"),
        ],
        RawRouting::default(),
    )
    .start()
    .await;
    let (status, body) = server
        .chat(json!({"model": "large", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(content(&body), "Hello from upstream.");
    let error = body["warden"]["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("no response within"), "{error}");
}

#[tokio::test]
async fn a_provider_with_every_slot_busy_is_failed_over_at_once() {
    let busy = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    busy.always(Behaviour::Delay(
        Duration::from_secs(2),
        Box::new(Behaviour::answer("Slow but sure.")),
    ));
    let one_slot = RawProvider {
        max_concurrency: 1,
        timeout_ms: 5000,
        ..provider("busy", ProviderKind::Openai, &busy.base, "large")
    };
    let server = routed(
        vec![
            one_slot,
            provider("spare", ProviderKind::Openai, &spare.base, "large"),
        ],
        RawRouting::default(),
    )
    .start()
    .await;
    let request = json!({"model": "large", "messages": user("Hi")});
    let first_answered = std::sync::atomic::AtomicBool::new(false);
    // The first request takes `busy`'s only slot for two seconds.
    let first = async {
        let answered = server.chat(request.clone()).await;
        first_answered.store(true, std::sync::atomic::Ordering::SeqCst);
        answered
    };
    let second = async {
        // Let the first one reach the provider.
        while busy.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answered = server.chat(request.clone()).await;
        (
            answered,
            first_answered.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let ((status, body), ((second_status, second_body), after_the_first)) =
        tokio::join!(first, second);
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "Slow but sure.");
    // The second did not wait for the slot: it went on to `spare` and was answered
    // while the first still held `busy`.
    assert_eq!(second_status, 200, "{second_body}");
    assert_eq!(content(&second_body), "Hello from upstream.");
    assert!(!after_the_first, "the second request waited for the first");
    assert_eq!(
        attempts(&second_body),
        [
            ("busy".to_string(), "skipped".to_string()),
            ("spare".to_string(), "served".to_string())
        ]
    );
    assert!(reasons(&second_body).contains(&"provider_saturated".to_string()));
    assert_eq!(busy.received().len(), 1);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("warden_provider_saturated_total{provider=\"busy\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_external_stream_is_passed_through() {
    let mock = MockUpstream::start().await;
    // Longer than the window of text the output screen holds back (64 bytes), so
    // some of it must go out before the upstream has finished.
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
    mock.always(Behaviour::answer(text));
    let server = routed(vec![mock_large(&mock)], RawRouting::default())
        .start()
        .await;
    let frames = server
        .stream(json!({
            "model": "mock-large",
            "messages": user("Count."),
            "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .await;
    let pieces: Vec<String> = frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .filter_map(|f| {
            serde_json::from_str::<Value>(f).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|piece| !piece.is_empty())
        .collect();
    assert_eq!(pieces.concat(), text);
    assert!(pieces.len() > 2, "{pieces:?}");
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert!(mock.received()[0].body["stream"].as_bool().unwrap());

    // Two choices are two calls, each with its own seed, and both are paid for.
    let (status, body) = server
        .chat(json!({"model": "mock-large", "messages": user("Count."), "n": 2, "seed": 5}))
        .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{body}");
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["message"]["content"], text);
    }
    assert_eq!(body["usage"]["completion_tokens"], 10);
    let mut seeds: Vec<u64> = mock.received()[1..]
        .iter()
        .map(|received| {
            assert!(received.body.get("n").is_none(), "{}", received.body);
            received.body["seed"].as_u64().unwrap()
        })
        .collect();
    seeds.sort_unstable();
    assert_eq!(seeds, [5, 6]);
}

#[tokio::test]
async fn the_anthropic_adapter_round_trips_tools() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::Answer {
        content: "Checking the weather.".into(),
        tool_call: Some(("get_weather".into(), r#"{"city": "Paris"}"#.into())),
    });
    let server = TestServer::builder().provider(claude(&mock)).start().await;
    let (status, body) = server
        .chat(json!({
            "model": "claude-mock",
            "messages": [
                {"role": "system", "content": "You check the weather."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_0", "content": "{\"temp\": 21}"},
                {"role": "user", "content": "And Paris?"}
            ],
            "tools": weather_tool(),
            "tool_choice": "auto",
            "max_tokens": 200
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "Checking the weather.");
    assert_eq!(message["tool_calls"][0]["id"], "toolu_mock");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["usage"]["prompt_tokens"], 13);
    assert_eq!(body["usage"]["completion_tokens"], 9);

    let sent = &mock.received()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.headers["x-api-key"], "sk-test-anthropic");
    let request = &sent.body;
    assert_eq!(request["system"], "You check the weather.");
    assert_eq!(request["max_tokens"], 200);
    assert_eq!(request["tools"][0]["input_schema"]["required"][0], "city");
    assert_eq!(request["tool_choice"]["type"], "auto");
    let turns = request["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert_eq!(turns[1]["content"][0]["input"]["city"], "Lyon");
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][0]["tool_use_id"], "toolu_0");
    assert_eq!(turns[2]["content"][1]["text"], "And Paris?");
}

/// A client of the API before tools (`functions`, `function_call`, `role: function`) is
/// served as a tools client and answered in its own words, plain and streamed.
#[tokio::test]
async fn legacy_functions_are_served_as_tools_and_answered_as_a_function_call() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::Answer {
        content: String::new(),
        tool_call: Some(("get_weather".into(), r#"{"city": "Paris"}"#.into())),
    });
    let server = routed(vec![mock_large(&mock)], RawRouting::default())
        .start()
        .await;
    let body = json!({
        "model": "mock-large",
        "messages": [
            {"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "content": null, "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}},
            {"role": "function", "name": "get_weather", "content": "{\"temp\": 21}"},
            {"role": "user", "content": "And Paris?"}
        ],
        "functions": [weather_tool()[0]["function"]],
        "function_call": {"name": "get_weather"},
    });
    let (status, answer) = server.chat(body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["function_call"]["name"], "get_weather", "{answer}");
    assert_eq!(message["function_call"]["arguments"], r#"{"city":"Paris"}"#);
    assert!(message.get("tool_calls").is_none(), "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "function_call");

    // The provider was asked in the tools' form, the result tied to its call.
    let sent = &mock.received()[0].body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"]["function"]["name"], "get_weather");
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(turns[2]["role"], "tool");
    assert_eq!(turns[1]["tool_calls"][0]["id"], turns[2]["tool_call_id"]);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let chunks: Vec<Value> = server
        .stream(streamed)
        .await
        .iter()
        .filter(|frame| *frame != "[DONE]")
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    let deltas = || chunks.iter().map(|chunk| &chunk["choices"][0]["delta"]);
    let call = deltas()
        .find_map(|delta| delta.get("function_call"))
        .unwrap();
    assert_eq!(call["name"], "get_weather");
    assert!(deltas().all(|delta| delta.get("tool_calls").is_none()));
    let finish = chunks
        .iter()
        .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("function_call"));

    // One form or the other, not both.
    let (status, error) = server
        .chat(json!({
            "model": "mock-large",
            "messages": user("Hi"),
            "tools": weather_tool(),
            "functions": [weather_tool()[0]["function"]],
        }))
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "functions");
}

#[tokio::test]
async fn when_every_provider_is_down_local_serves_what_it_may_and_the_rest_is_503() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::fail(502));
    let routing = high_risk_labelled(force_escalation());
    let server = routed(vec![mock_large(&mock)], routing).start().await;

    let (status, body) = server
        .chat(json!({"messages": user("What is the capital of France?"), "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).contains("Paris"));
    assert_eq!(body["warden"]["route"], "fallback_local");
    assert!(reasons(&body).contains(&"fallback_local".to_string()));
    assert_eq!(
        attempts(&body),
        vec![
            ("mock".into(), "failed".into()),
            ("local".into(), "served".into())
        ]
    );

    let response = server
        .chat_request()
        .json(&json!({"messages": user("Summarise the contract."), "metadata": {"sensitivity": "high"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("every provider"),
        "{body}"
    );
}

#[tokio::test]
async fn thresholds_changed_through_the_admin_api_apply_to_the_next_request() {
    let mock = MockUpstream::start().await;
    let server = routed(vec![mock_large(&mock)], never_escalate())
        .start()
        .await;
    let ask = || {
        server.chat(json!({"messages": user("What is the capital of France?"), "temperature": 0}))
    };
    let (_, body) = ask().await;
    assert_eq!(body["warden"]["route"], "local");
    assert_eq!(body["warden"]["routing_version"], 1);

    let put = |routing: Value| {
        server
            .client
            .put(server.url("/admin/routing"))
            .bearer_auth(ADMIN_KEY)
            .json(&routing)
            .send()
    };
    let response = put(json!({"escalation_models": ["mock-large"], "min_mean_logprob": -0.0001}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let table: Value = response.json().await.unwrap();
    assert_eq!(table["version"], 2);

    let (_, body) = ask().await;
    assert_eq!(body["warden"]["route"], "escalated");
    assert_eq!(body["warden"]["routing_version"], 2);

    // Invalid changes are refused with the key named, and change nothing.
    let response = put(json!({"escalation_models": ["nowhere"]}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "escalation_models[0]");
    let response = put(json!({"min_mean_logprob": 0.5})).await.unwrap();
    assert_eq!(response.status(), 400);
    let response = put(json!({"bogus": 1})).await.unwrap();
    assert_eq!(response.status(), 400);
    let response = server
        .client
        .put(server.url("/admin/routing"))
        .bearer_auth(common::KEY_A)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (_, body) = ask().await;
    assert_eq!(body["warden"]["routing_version"], 2);
}

#[tokio::test]
async fn external_models_are_listed_and_unknown_ones_are_404() {
    let mock = MockUpstream::start().await;
    let server = routed(vec![mock_large(&mock)], RawRouting::default())
        .start()
        .await;
    let models: Value = server
        .client
        .get(server.url("/v1/models"))
        .bearer_auth(common::KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["auto", "smollm2-135m-instruct", "mock-large"]);
    assert_eq!(models["data"][2]["owned_by"], "mock");
    let (status, _) = server
        .chat(json!({"model": "mock-huge", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 404);

    // One model by its id, as `client.models.retrieve` asks; an unknown one is 404.
    let one = |id: &str| {
        server
            .client
            .get(server.url(&format!("/v1/models/{id}")))
            .bearer_auth(common::KEY_A)
            .send()
    };
    let card: Value = one("mock-large").await.unwrap().json().await.unwrap();
    assert_eq!(card, models["data"][2]);
    for unknown in ["mock-huge", "vendor/mock-large"] {
        let response = one(unknown).await.unwrap();
        assert_eq!(response.status(), 404, "{unknown}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert_eq!(body["error"]["param"], "model", "{body}");
    }
}

#[tokio::test]
async fn a_request_in_flight_keeps_the_routing_it_started_with() {
    let mock = MockUpstream::start().await;
    mock.script([Behaviour::Delay(
        Duration::from_millis(1500),
        Box::new(Behaviour::answer("Slow but sure.")),
    )]);
    let server = routed(vec![mock_large(&mock)], never_escalate())
        .start()
        .await;
    let in_flight = {
        let request = server
            .chat_request()
            .json(&json!({"model": "mock-large", "messages": user("Hi")}));
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    assert!(common::wait_until(|| !mock.received().is_empty(), Duration::from_secs(10)).await);
    let response = server
        .client
        .put(server.url("/admin/routing"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"escalation_models": ["mock-large"], "min_mean_logprob": -0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let body = in_flight.await.unwrap();
    assert_eq!(content(&body), "Slow but sure.");
    assert_eq!(body["warden"]["routing_version"], 1);
    let (_, body) = server
        .chat(json!({"model": "mock-large", "messages": user("Hi")}))
        .await;
    assert_eq!(body["warden"]["routing_version"], 2);
}

#[tokio::test]
async fn sighup_reloads_routing_from_the_file_and_a_bad_file_changes_nothing() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = common::scratch_dir();
    let path = dir.path().join("warden.yaml");
    let write = |routing: RawRouting| {
        let builder = routed(vec![mock_large(&mock)], routing).audit_dir(audit.path());
        std::fs::write(&path, builder.yaml()).unwrap();
    };
    write(never_escalate());
    let mut server = Spawned::start(&path, &[("WARDEN_ADMIN_KEY", ADMIN_KEY)]);
    let client = reqwest::Client::new();
    let routing_url = server.url("/admin/routing");
    let table = || async {
        client
            .get(&routing_url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = table().await;
    assert_eq!(before["version"], 1);
    assert_eq!(before["routing"]["thresholds"]["min_mean_logprob"], -100.0);

    write(RawRouting {
        min_mean_logprob: Some(-0.5),
        ..escalating_to("mock-large")
    });
    server.signal("HUP");
    assert!(server
        .wait_for_log("configuration reloaded", Duration::from_secs(20))
        .is_some());
    let after = table().await;
    assert_eq!(after["version"], 2);
    assert_eq!(after["routing"]["thresholds"]["min_mean_logprob"], -0.5);

    write(escalating_to("nowhere"));
    server.signal("HUP");
    let refusal = server
        .wait_for_log("the previous routing stays", Duration::from_secs(20))
        .unwrap();
    assert!(refusal.contains("escalation_models[0]"), "{refusal}");
    assert_eq!(table().await["version"], 2);

    // Both reloads are on the audit chain, by the signal, naming the file. The log line
    // comes before the record is durable, so the chain is polled rather than read once.
    let routing_records = || {
        warden::audit::query::read_all(audit.path())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["action"] == "routing_changed" || r["target"] == "routing")
            .collect::<Vec<Value>>()
    };
    common::wait_until(|| routing_records().len() >= 2, Duration::from_secs(20)).await;
    drop(server);
    let routing = routing_records();
    assert_eq!(routing.len(), 2, "{routing:?}");
    assert_eq!(routing[0]["action"], "routing_changed");
    assert_eq!(routing[0]["version"], 2);
    assert_eq!(
        routing[0]["routing"]["thresholds"]["min_mean_logprob"],
        -0.5
    );
    assert_eq!(routing[1]["action"], "change_refused");
    assert_eq!(routing[1]["target"], "routing");
    for record in routing {
        assert_eq!(record["by"], "signal:SIGHUP");
        assert_eq!(record["file"], path.display().to_string());
    }
}

#[tokio::test]
async fn tune_replays_the_decisions_the_gateway_reported() {
    let mock = MockUpstream::start().await;
    let builder = routed(
        vec![mock_large(&mock)],
        high_risk_labelled(never_escalate()),
    );
    let server = builder.clone().start().await;
    let mut reports = Vec::new();
    for prompt in [
        "What is the capital of France?",
        "Name a colour.",
        "Say hello.",
    ] {
        let (status, body) = server
            .chat(json!({"messages": user(prompt), "temperature": 0, "max_tokens": 16}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warden"]["route"], "local");
        reports.push(body["warden"].clone());
    }
    let (_, body) = server
        .chat(json!({"messages": user("Summarise the contract."), "metadata": {"sensitivity": "high"}}))
        .await;
    assert_eq!(body["warden"]["route"], "external");
    reports.push(body["warden"].clone());

    // Serving everything locally costs what the local answers cost; escalating them all
    // adds the mock model's prices ($1 in, $2 out per million tokens) for the local
    // answers' tokens. The external request costs what it cost either way.
    let dollars = |value: &Value| value.as_str().unwrap().parse::<Decimal>().unwrap();
    let per_million = |usage: &Value| {
        Decimal::from(
            usage["prompt_tokens"].as_u64().unwrap()
                + 2 * usage["completion_tokens"].as_u64().unwrap(),
        ) / Decimal::from(1_000_000)
    };
    let local: Decimal = reports[..3].iter().map(|r| dollars(&r["cost_usd"])).sum();
    let estimated: Decimal = reports[..3]
        .iter()
        .map(|report| per_million(&report["attempts"][0]["usage"]))
        .sum();
    let external = dollars(&reports[3]["cost_usd"]);
    assert_eq!(external, per_million(&reports[3]["attempts"][0]["usage"]));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let lines: String = reports.iter().map(|report| format!("{report}\n")).collect();
    std::fs::write(&log, lines).unwrap();
    // The server's own configuration file.
    let (_config_dir, config) = builder.write_file();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("tune")
        .arg(&log)
        .arg("--config")
        .arg(&config)
        .arg("--thresholds=-100,-0.0001")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.starts_with("4 requests replayed, 3 of them answered locally"),
        "{table}"
    );
    let row = |threshold: &str| -> Vec<String> {
        table
            .lines()
            .find(|line| line.split_whitespace().any(|cell| cell == threshold))
            .unwrap_or_else(|| panic!("no row for {threshold}:\n{table}"))
            .split_whitespace()
            .filter(|cell| *cell != "*")
            .map(str::to_string)
            .collect()
    };
    let lenient = row("-100.00");
    assert_eq!(lenient[1..3], ["75.0%", "0.0%"], "{table}");
    assert_eq!(
        lenient[3],
        (local + external).round_dp(6).to_string(),
        "{table}"
    );
    let strict = row("-0.00");
    assert_eq!(strict[1..3], ["0.0%", "100.0%"], "{table}");
    assert_eq!(
        strict[3],
        (local + estimated + external).round_dp(6).to_string(),
        "{table}"
    );
    assert_eq!(strict[5], "3", "{table}");
}

/// A server with one local slot and `mock` (the mock's provider) as escalation target,
/// and a request holding that slot while it counts for hundreds of tokens.
async fn one_local_slot_held(mock: RawProvider) -> (TestServer, tokio::task::JoinHandle<Value>) {
    let routing = RawRouting {
        local_queue_fallback_ms: Some(300),
        ..never_escalate()
    };
    let server = routed(vec![mock], routing).slots(1).start().await;
    let holder = server.chat_request().json(&json!({
        "messages": user("Count from 1 to 1000, separated by commas."),
        "temperature": 0,
        "max_tokens": 400,
    }));
    let holder = tokio::spawn(async move {
        let response = holder.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    });
    let running = common::wait_until_async(
        || async {
            let (_, body) = server.admin_get("/admin/governor").await;
            let snapshot: Value = serde_json::from_str(&body).unwrap();
            snapshot["backends"]["local"]["in_flight"] == 1
        },
        Duration::from_secs(60),
    )
    .await;
    assert!(running, "the long request never started");
    (server, holder)
}

#[tokio::test]
async fn a_request_the_local_queue_holds_too_long_goes_to_the_provider() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::answer("Paris, from upstream."));
    let (server, holder) = one_local_slot_held(mock_large(&mock)).await;
    let (status, body) = server
        .chat(json!({"messages": user("What is the capital of France?")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "Paris, from upstream.");
    assert_eq!(body["warden"]["route"], "external");
    assert_eq!(reasons(&body), vec!["local_first", "local_saturated"]);
    assert_eq!(attempts(&body), vec![("mock".into(), "served".into())]);
    // It left the local queue when the fallback was due, not before.
    let queued_ms = body["warden"]["timings"]["queue_ms"].as_f64().unwrap();
    assert!(queued_ms >= 300.0, "{queued_ms}");
    assert_eq!(mock.received().len(), 1);
    let held = holder.await.unwrap();
    assert_eq!(held["warden"]["route"], "local");
}

#[tokio::test]
async fn with_the_providers_circuit_open_a_request_waits_for_the_local_slot() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::fail(500));
    let tripping = RawProvider {
        circuit_breaker: RawBreaker {
            consecutive_failures: 1,
            open_ms: 600_000,
            ..RawBreaker::default()
        },
        ..mock_large(&mock)
    };
    let (server, holder) = one_local_slot_held(tripping).await;
    // One failure opens the circuit.
    let (status, _) = server
        .chat(json!({"model": "mock-large", "messages": user("Hi")}))
        .await;
    assert_eq!(status, 503);
    let (status, body) = server
        .chat(json!({"messages": user("What is the capital of France?"), "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "local");
    assert_eq!(reasons(&body), vec!["local_first"]);
    assert!(content(&body).contains("Paris"), "{body}");
    assert_eq!(
        mock.received().len(),
        1,
        "only the request that opened the circuit"
    );
    assert_eq!(holder.await.unwrap()["warden"]["route"], "local");
}

/// A JSON answer is held to its schema by the local model's grammar. A schema the
/// grammar engine cannot compile goes to the escalation chain, to a provider that can
/// promise JSON (Anthropic's through a forced tool); where nothing can, the request is
/// refused naming the schema.
#[tokio::test]
async fn a_json_answer_is_held_to_its_schema_locally_or_asked_of_a_provider_that_can_promise_it() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::answer(r#"{"city": "Paris"}"#));
    let server = routed(
        vec![claude(&mock), mock_large(&mock)],
        RawRouting {
            escalation_models: vec!["claude-mock".into(), "mock-large".into()],
            ..never_escalate()
        },
    )
    .start()
    .await;
    let format = |city: Value| {
        json!({
            "type": "json_schema",
            "json_schema": {
                "name": "place",
                "strict": true,
                "schema": {"type": "object", "properties": {"city": city}, "required": ["city"], "additionalProperties": false}
            }
        })
    };
    let (status, body) = server
        .chat(json!({"messages": user("Where is the Eiffel Tower?"), "response_format": format(json!({"type": "string", "maxLength": 30}))}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "local", "{body}");
    let answer: Value = serde_json::from_str(content(&body)).unwrap();
    assert!(answer["city"].is_string(), "{answer}");
    assert!(mock.received().is_empty());

    let unique = format(json!({"type": "array", "uniqueItems": true}));
    let (status, body) = server
        .chat(json!({"messages": user("Where?"), "response_format": unique}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), r#"{"city": "Paris"}"#);
    assert_eq!(body["warden"]["route"], "external", "{body}");
    assert!(
        reasons(&body).contains(&"structured_output".to_string()),
        "{body}"
    );
    let received = mock.received();
    assert_eq!(received[0].path, "/v1/messages");
    assert_eq!(received[0].body["tool_choice"]["name"], "json_answer");
    assert_eq!(
        received[0].body["tools"][0]["input_schema"],
        unique["json_schema"]["schema"]
    );

    let alone = TestServer::start().await;
    let (status, body) = alone
        .chat(json!({"messages": user("Where?"), "response_format": unique}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"], "response_format.json_schema.schema",
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uniqueItems"),
        "{body}"
    );
}
