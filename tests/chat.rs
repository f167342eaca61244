//! Chat completions through the real gateway and the real local model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{streamed_content, user, weather_tool, TestServer, KEY_B};
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;

#[tokio::test]
async fn capital_of_france_is_paris() {
    let server = TestServer::start().await;
    let (status, body) = server
        .chat(json!({"model": "auto", "messages": user("What is the capital of France?"), "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], "smollm2-135m-instruct");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let warden = &body["warden"];
    assert_eq!(warden["backend"], "local");
    assert_eq!(warden["route"], "local");
    assert_eq!(warden["agent"], "agent-a");
    assert!(warden["confidence"]["mean_logprob"].as_f64().unwrap() <= 0.0);
    assert!(warden["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    // routing/prices.yaml: 0.01 per 1M prompt tokens, 0.02 per 1M completion tokens.
    let expected = rust_decimal::Decimal::from(usage["prompt_tokens"].as_u64().unwrap())
        * rust_decimal::Decimal::new(1, 8)
        + rust_decimal::Decimal::from(usage["completion_tokens"].as_u64().unwrap())
            * rust_decimal::Decimal::new(2, 8);
    assert_eq!(
        warden["cost_usd"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        expected
    );
}

#[tokio::test]
async fn streaming_and_plain_give_the_same_text_for_the_same_seed() {
    let server = TestServer::start().await;
    for temperature in [0.0, 0.9] {
        let request = json!({
            "messages": user("Name three colours."),
            "temperature": temperature,
            "seed": 42,
            "max_tokens": 40
        });
        let (status, plain) = server.chat(request.clone()).await;
        assert_eq!(status, 200);
        let plain_text = plain["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();

        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let frames = server.stream(streaming).await;
        assert_eq!(frames.last().unwrap(), "[DONE]");
        assert_eq!(
            streamed_content(&frames),
            plain_text,
            "temperature {temperature}"
        );

        let chunks: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"], plain["usage"]);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(
            finish["choices"][0]["finish_reason"],
            plain["choices"][0]["finish_reason"]
        );
        assert_eq!(finish["warden"]["backend"], "local");
    }
}

#[tokio::test]
async fn logprobs_cover_every_completion_token() {
    let server = TestServer::start().await;
    let (status, body) = server
        .chat(json!({
            "messages": user("What is the capital of France?"),
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 3
        }))
        .await;
    assert_eq!(status, 200);
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len() as u64,
        body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let text: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        text,
        body["choices"][0]["message"]["content"].as_str().unwrap()
    );
    for token in content {
        let logprob = token["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0, "{token}");
        let top = token["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - logprob).abs() < 1e-6,
            "{token}"
        );
        assert!(top.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    }
    let min = content
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .fold(0.0, f64::min);
    let reported_min = body["warden"]["confidence"]["min_logprob"]
        .as_f64()
        .unwrap();
    assert!((min - reported_min).abs() < 1e-5);

    let (_, without) = server
        .chat(json!({"messages": user("Hi"), "max_tokens": 3}))
        .await;
    assert!(without["choices"][0]["logprobs"].is_null());
}

#[tokio::test]
async fn streamed_logprobs_match_the_usage() {
    let server = TestServer::start().await;
    let frames = server
        .stream(json!({
            "messages": user("Say hello."),
            "temperature": 0,
            "logprobs": true,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 20
        }))
        .await;
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let streamed = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum::<usize>();
    let usage = chunks.last().unwrap()["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(streamed as u64, usage);
}

#[tokio::test]
async fn eight_concurrent_requests_on_two_slots_stay_independent() {
    let server = TestServer::builder().slots(2).start().await;
    let questions = [
        "What is the capital of France?",
        "What is the capital of Italy?",
        "What is the capital of Germany?",
        "What is the capital of Spain?",
        "What is the capital of Japan?",
        "Name a primary colour.",
        "What is the largest ocean?",
        "What do bees make?",
    ];
    let ask =
        |question: &str| json!({"messages": user(question), "temperature": 0, "max_tokens": 30});
    // Alone, one after another: the reference answers.
    let mut alone = Vec::new();
    for question in questions {
        let (status, body) = server.chat(ask(question)).await;
        assert_eq!(status, 200);
        alone.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // All at once: each must get exactly its own answer.
    let together = futures::future::join_all(questions.iter().map(|q| server.chat(ask(q)))).await;
    for ((question, expected), (status, body)) in questions.iter().zip(&alone).zip(&together) {
        assert_eq!(*status, 200, "{question}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["content"].as_str().unwrap(),
            expected,
            "{question}"
        );
    }
    assert!(alone[0].contains("Paris"), "{}", alone[0]);
    // Not "Rome": SmolLM2-135M's answer to Italy's capital turns on rounding noise
    // (the f32 reference and warden say "Il capo di Italy, ... Roma"; candle's 8-bit
    // activations happened to land on "Rome").
    assert!(alone[2].contains("Berlin"), "{}", alone[2]);
    assert!(
        common::wait_until(
            || server.local.busy_slots() == 0,
            std::time::Duration::from_secs(60)
        )
        .await
    );
}

#[tokio::test]
async fn a_required_tool_yields_a_well_formed_call() {
    let server = TestServer::start().await;
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let (status, body) = server
            .chat(json!({
                "messages": user("What is the weather in Paris?"),
                "tools": weather_tool(),
                "tool_choice": choice,
                "temperature": 0
            }))
            .await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["city"], "Paris", "{arguments}");
        assert!(choice["message"]["content"].is_null());
        assert_eq!(body["warden"]["malformed_tool_call"], false);
    }
}

#[tokio::test]
async fn streamed_tool_calls_arrive_whole_and_never_as_text() {
    let server = TestServer::start().await;
    let frames = server
        .stream(json!({
            "messages": user("What is the weather in Tokyo?"),
            "tools": weather_tool(),
            "tool_choice": "required",
            "temperature": 0,
            "stream": true
        }))
        .await;
    assert!(!streamed_content(&frames).contains("tool_call"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{frames:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["city"], "Tokyo");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn stop_sequences_and_max_tokens_end_the_answer() {
    let server = TestServer::start().await;
    let (_, body) = server
        .chat(json!({"messages": user("What is the capital of France?"), "temperature": 0, "stop": [" Paris"]}))
        .await;
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "The capital of France is");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let (_, body) = server
        .chat(json!({"messages": user("Tell me a long story."), "max_tokens": 3}))
        .await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn tool_results_continue_the_conversation() {
    let server = TestServer::start().await;
    let (status, body) = server
        .chat(json!({
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature_c\": 18, \"sky\": \"sunny\"}"}
            ],
            "tools": weather_tool(),
            "tool_choice": "none",
            "temperature": 0,
            "max_tokens": 40
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["choices"][0]["finish_reason"], "tool_calls", "{body}");
    assert!(body["choices"][0]["message"]["tool_calls"].is_null());
    // The answer is read from the tool's result, not made up.
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("18") || content.contains("sunny"),
        "{body}"
    );
}

#[tokio::test]
async fn keys_identify_agents_and_unknown_keys_are_refused() {
    let server = TestServer::start().await;
    let request = json!({"messages": user("Hi"), "max_tokens": 2});
    let as_b = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY_B)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(as_b.status(), 200);
    assert!(as_b.headers().contains_key("x-request-id"));
    let body: Value = as_b.json().await.unwrap();
    assert_eq!(body["warden"]["agent"], "agent-b");
    assert_eq!(body["warden"]["tenant"], "globex");

    for key in [None, Some("not-a-key")] {
        let mut builder = server
            .client
            .post(server.url("/v1/chat/completions"))
            .json(&request);
        if let Some(key) = key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"));
    }
}

#[tokio::test]
async fn models_and_probes() {
    let server = TestServer::start().await;
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
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["auto", "smollm2-135m-instruct"]);
    let unauthenticated = server
        .client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn readiness_waits_for_the_model() {
    let config = TestServer::builder().config();
    let local = std::sync::Arc::new(warden::backend::local::LocalBackend::loading(
        "smollm2-135m-instruct",
        1,
        config.local.queue_timeout,
    ));
    let base = common::serve(&config, local.clone()).await;
    let client = reqwest::Client::new();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["local"]["status"], "loading");

    let chat = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(common::KEY_A)
        .json(&json!({"messages": user("Hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 503);
    assert!(chat.headers().contains_key("retry-after"));

    local.set_ready(common::engine());
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_and_admin_status_needs_the_admin_key() {
    let server = TestServer::start().await;
    server
        .chat(json!({"messages": user("Hi"), "max_tokens": 2}))
        .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "warden_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"
        ),
        "{metrics}"
    );

    // No key or an unknown one: who is asking is unknown (401). An agent's key: known,
    // but not allowed here (403).
    for (key, status, code) in [
        (None, 401, "invalid_admin_key"),
        (Some("not-a-key"), 401, "invalid_admin_key"),
        (Some(common::KEY_A), 403, "admin_key_required"),
    ] {
        let mut request = server.client.get(server.url("/admin/status"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }
    let status: Value = server
        .client
        .get(server.url("/admin/status"))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["local"]["status"], "ready");
    assert_eq!(status["agents"][0]["id"], "agent-a");
}

#[tokio::test]
async fn run_id_from_header_or_metadata_is_echoed() {
    let server = TestServer::start().await;
    let (_, body) = server
        .chat(json!({"messages": user("Hi"), "max_tokens": 2, "metadata": {"run_id": "run-body"}}))
        .await;
    assert_eq!(body["warden"]["run_id"], "run-body");
    let body: Value = server
        .chat_request()
        .header("x-run-id", "run-header")
        .json(&json!({"messages": user("Hi"), "max_tokens": 2, "metadata": {"run_id": "run-body"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["warden"]["run_id"], "run-header");
}

/// What a dashboard alerts on exists at zero before the first event, and the local
/// engine reports its load and the tokens it read.
#[tokio::test]
async fn dashboard_series_exist_from_the_start_and_the_engine_reports_its_load() {
    let server = TestServer::builder()
        .agent("agent-a", |agent| agent.requests_per_minute = Some(1000))
        // Never contacted: only its series are looked at.
        .provider(common::provider(
            "spare",
            ProviderKind::Openai,
            "http://127.0.0.1:9/v1",
            &["spare-large"],
        ))
        .start()
        .await;
    let metrics = server.metrics().await;
    let value = |series: &str| {
        common::metric(&metrics, series).unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    for reason in warden::governor::GovernorError::CODES {
        assert_eq!(
            value(&format!(
                "warden_governor_rejections_total{{reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    for series in [
        "warden_governor_rate_limited_total{agent=\"agent-a\",limit=\"requests\"}",
        "warden_routes_total{route=\"escalated\"}",
        "warden_requests_total{route=\"local\",status=\"failed\"}",
        "warden_requests_total{route=\"none\",status=\"refused\"}",
        "warden_escalations_total{reason=\"low_mean_logprob\"}",
        "warden_provider_saturated_total{provider=\"spare\"}",
        "warden_local_sequences{state=\"running\"}",
        "warden_local_kv_cache_tokens{state=\"used\"}",
        "warden_local_tokens_total{phase=\"decode\"}",
    ] {
        assert_eq!(value(series), 0.0, "{series}");
    }
    assert_eq!(value("warden_local_slots"), 2.0);
    let free = value("warden_local_kv_cache_tokens{state=\"free\"}");
    assert!(free > 0.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(metrics.contains("process_cpu_seconds_total"), "{metrics}");

    let (status, body) = server
        .chat(json!({"messages": user("Count to ten."), "max_tokens": 4, "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    let metrics = server.metrics().await;
    let value = |series: &str| common::metric(&metrics, series).unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let read = value("warden_local_tokens_total{phase=\"prefill\"}")
        + value("warden_local_tokens_total{phase=\"decode\"}");
    // Every prompt token, and every answer token but the last (sampled, never read).
    let completion = body["usage"]["completion_tokens"].as_f64().unwrap();
    assert_eq!(read, prompt + completion - 1.0, "{metrics}");
    assert!(value("warden_local_tokens_total{phase=\"decode\"}") >= completion - 1.0);
    // The answer ended: its cache room is free again.
    assert_eq!(value("warden_local_kv_cache_tokens{state=\"free\"}"), free);
}

/// Each choice's content from a chat stream, by index, and how many finish reasons each
/// index received.
fn streamed_choices(frames: &[String]) -> (Vec<String>, Vec<usize>) {
    let (mut texts, mut finishes) = (Vec::new(), Vec::new());
    for frame in frames.iter().filter(|frame| *frame != "[DONE]") {
        let chunk: Value = serde_json::from_str(frame).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= index {
                texts.resize(index + 1, String::new());
                finishes.resize(index + 1, 0);
            }
            texts[index].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            finishes[index] += usize::from(choice["finish_reason"].is_string());
        }
    }
    (texts, finishes)
}

#[tokio::test]
async fn n_choices_are_drawn_together_each_with_its_own_seed_gate_and_record() {
    let server = TestServer::start().await;
    let ask = |seed: u64, n: u32| {
        json!({"messages": user("Name a colour and say why you like it."), "temperature": 0.9,
               "seed": seed, "max_tokens": 12, "n": n})
    };
    let (status, whole) = server.chat(ask(7, 3)).await;
    assert_eq!(status, 200, "{whole}");
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{whole}");
    let texts: Vec<&str> = choices
        .iter()
        .map(|choice| choice["message"]["content"].as_str().unwrap())
        .collect();

    // Choice i is drawn with the seed moved by i: the answer one choice gets with that
    // seed. Usage counts every choice, each with its prompt.
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        let (status, single) = server.chat(ask(7 + index as u64, 1)).await;
        assert_eq!(status, 200, "{single}");
        assert_eq!(single["choices"][0]["message"]["content"], texts[index]);
        assert_eq!(
            choice["finish_reason"],
            single["choices"][0]["finish_reason"]
        );
        prompt_tokens += single["usage"]["prompt_tokens"].as_u64().unwrap();
        completion_tokens += single["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeds drew one answer: {texts:?}"
    );
    assert_eq!(whole["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(whole["usage"]["completion_tokens"], completion_tokens);
    // The prompt is read once: the other choices copy all of it but the last token,
    // whose pass draws their first token.
    assert_eq!(
        whole["usage"]["prompt_tokens_details"]["cached_tokens"],
        2 * (prompt_tokens / 3 - 1),
        "{whole}"
    );

    // Streamed, the same choices arrive by index, each ending once, then the usage.
    let mut streamed = ask(7, 3);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let frames = server.stream(streamed).await;
    let (streamed_texts, finishes) = streamed_choices(&frames);
    assert_eq!(streamed_texts, texts, "{frames:?}");
    assert_eq!(finishes, [1, 1, 1], "{frames:?}");
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(usage["usage"], whole["usage"]);

    // Forced calls: every choice is one, each passes the tool-call gate on its own and
    // is recorded with its choice.
    let (status, called) = server
        .chat(json!({"messages": user("What is the weather in Paris?"),
                     "tools": weather_tool(), "tool_choice": "required", "n": 2}))
        .await;
    assert_eq!(status, 200, "{called}");
    for choice in called["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "tool_calls", "{called}");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
    }
    let decisions = called["warden"]["policy"]["decisions"].as_array().unwrap();
    let decided: Vec<u64> = decisions
        .iter()
        .map(|decision| decision["choice"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(decided, [0, 1], "{decisions:?}");
    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    let record = records
        .iter()
        .find(|record| record["request_id"] == called["warden"]["request_id"])
        .expect("the answer is on the audit record");
    let recorded: Vec<u64> = record["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["choice"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(recorded, [0, 1], "{record}");
    assert_eq!(record["later_choices"].as_array().unwrap().len(), 1);
}
