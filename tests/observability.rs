//! What an operator reads about one request: every line `warden serve` logs on a
//! request's behalf (a provider's retry, its failure, the answer's end) carries the
//! request's id, whether the answer is whole or streamed; and with
//! `telemetry.otlp_endpoint` set, its trace reaches an OTLP/HTTP receiver this test
//! runs, decoded from the protobuf warden sends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::Spawned;
use common::{user, TestServer, TestServerBuilder, KEY_A};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use warden::backend::provider::config::ProviderKind;
use warden::config::routing::RawProvider;
use warden::telemetry::TelemetryConfig;

/// Sends one request for `model`; returns its id (`x-request-id`).
async fn ask_model(server: &Spawned, model: &str, stream: bool) -> String {
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&json!({"model": model, "messages": user("Hi"), "stream": stream, "max_tokens": 4}))
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

/// Sends one request for the mock's model; returns its id.
async fn ask(server: &Spawned, stream: bool) -> String {
    ask_model(server, "mock-large", stream).await
}

/// The configuration of a gateway whose `mock-large` is served by `mock`, retrying once.
fn with_mock(mock: &MockUpstream) -> TestServerBuilder {
    TestServer::builder().provider(RawProvider {
        timeout_ms: 5000,
        retries: 1,
        backoff_base_ms: 1,
        backoff_max_ms: 1,
        ..common::provider("mock", ProviderKind::Openai, &mock.base, &["mock-large"])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_a_request_logs_carries_its_id_whole_and_streamed() {
    let mock = MockUpstream::start().await;
    let (_dir, path) = with_mock(&mock).write_file();
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

/// An OTLP/HTTP receiver on a loopback port: every span of every export it is sent.
struct Receiver {
    base: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        async fn traces(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> &'static str {
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            let mut kept = spans.lock().unwrap();
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref()?.value.clone());
                assert_eq!(service, Some(AnyValue::StringValue("warden-test".into())));
                kept.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
            }
            ""
        }
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, spans }
    }

    /// The spans of the trace whose root is request `id`'s span, by name, once every
    /// one of `wanted` has arrived (export runs in batches); fails naming the missing.
    async fn expect_trace(&self, id: &str, wanted: &[&str]) -> BTreeMap<String, Vec<Span>> {
        let complete = |found: &BTreeMap<String, Vec<Span>>| {
            wanted.iter().all(|name| found.contains_key(*name))
        };
        common::wait_until(|| complete(&self.collect(id)), Duration::from_secs(20)).await;
        let found = self.collect(id);
        let missing: Vec<&&str> = wanted
            .iter()
            .filter(|name| !found.contains_key(**name))
            .collect();
        assert!(
            missing.is_empty(),
            "no {missing:?} span: {:?}",
            found.keys()
        );
        found
    }

    fn collect(&self, id: &str) -> BTreeMap<String, Vec<Span>> {
        let spans = self.spans.lock().unwrap();
        let Some(root) = spans.iter().find(|span| {
            span.name == "request" && attribute(span, "request_id").as_deref() == Some(id)
        }) else {
            return BTreeMap::new();
        };
        let mut trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
        for span in spans.iter().filter(|span| span.trace_id == root.trace_id) {
            trace
                .entry(span.name.clone())
                .or_default()
                .push(span.clone());
        }
        trace
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(text) => Some(text.clone()),
        AnyValue::IntValue(number) => Some(number.to_string()),
        AnyValue::DoubleValue(number) => Some(number.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_trace_reaches_an_otlp_receiver_with_a_span_per_step() {
    let receiver = Receiver::start().await;
    let mock = MockUpstream::start().await;
    let (_dir, path) = with_mock(&mock)
        .configure(|config| {
            config.telemetry = TelemetryConfig {
                otlp_endpoint: Some(receiver.base.clone()),
                service_name: "warden-test".into(),
            };
        })
        .write_file();
    let server = Spawned::start(&path, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    assert!(server.wait_ready(Duration::from_secs(120)).await);

    // A provider that fails once, then answers.
    mock.script([Behaviour::fail(500), Behaviour::answer("Hello.")]);
    let external = ask(&server, false).await;
    let wanted = [
        "request",
        "queue_wait",
        "provider_attempt",
        "policy",
        "audit_commit",
    ];
    let trace = receiver.expect_trace(&external, &wanted).await;
    let root = &trace["request"][0];
    assert_eq!(attribute(root, "agent").as_deref(), Some("agent-a"));
    assert_eq!(attribute(root, "tenant").as_deref(), Some("acme"));
    assert_eq!(attribute(root, "route").as_deref(), Some("external"));
    assert_eq!(attribute(root, "backend").as_deref(), Some("mock"));
    assert_eq!(attribute(root, "status").as_deref(), Some("completed"));
    // Every other span hangs off the request's.
    for (name, spans) in &trace {
        for span in spans {
            if name != "request" {
                assert_eq!(span.parent_span_id, root.span_id, "`{name}`'s parent");
            }
        }
    }
    let attempt = &trace["provider_attempt"][0];
    assert_eq!(attribute(attempt, "provider").as_deref(), Some("mock"));
    assert_eq!(attribute(attempt, "model").as_deref(), Some("mock-large"));

    // The local model: its generation, split into prefill and decode.
    let local = ask_model(&server, "smollm2-135m-instruct", true).await;
    let wanted = [
        "request",
        "local_generation",
        "local_prefill",
        "local_decode",
        "policy",
        "audit_commit",
    ];
    let trace = receiver.expect_trace(&local, &wanted).await;
    let generation = &trace["local_generation"][0];
    assert_eq!(generation.parent_span_id, trace["request"][0].span_id);
    for phase in ["local_prefill", "local_decode"] {
        assert_eq!(
            trace[phase][0].parent_span_id, generation.span_id,
            "{phase}"
        );
    }
    assert!(
        trace["local_prefill"][0].end_time_unix_nano
            <= trace["local_decode"][0].start_time_unix_nano
    );
    assert!(
        attribute(generation, "decode_ms").is_some(),
        "{generation:?}"
    );
}
