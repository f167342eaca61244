//! A mock OpenAI-compatible (and Anthropic Messages) upstream, in-process on an
//! ephemeral port: the only stand-in in the tests, for the external providers that
//! cannot be reached from here. Answers are scripted per test; every request it
//! receives is recorded for assertions.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answer with this text (and tool call, if any), streamed.
    Answer {
        content: String,
        tool_call: Option<(String, String)>,
    },
    /// Fail with this status (and `Retry-After`, if any).
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Answer 307, pointing elsewhere.
    Redirect(String),
    /// Wait this long before answering.
    Delay(Duration, Box<Behaviour>),
    /// Wait as long as the request's last message asks (`delay_us=N` in its text), so
    /// a load generator sets each request's latency and knows it exactly.
    DelayAsked(Box<Behaviour>),
}

impl Behaviour {
    pub fn answer(content: &str) -> Self {
        Behaviour::Answer {
            content: content.into(),
            tool_call: None,
        }
    }

    pub fn fail(status: u16) -> Self {
        Behaviour::Fail {
            status,
            retry_after: None,
        }
    }
}

/// A request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Behaviour>,
    fallback: Option<Behaviour>,
    received: Vec<Received>,
    /// Off under load (benches), where keeping every request would only cost memory.
    unrecorded: bool,
}

#[derive(Clone)]
pub struct MockUpstream {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl MockUpstream {
    /// Answers "Hello from upstream." until told otherwise.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            fallback: Some(Behaviour::answer("Hello from upstream.")),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/v1/embeddings", post(embeddings))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    /// The next requests get these behaviours, in order; then the fallback applies.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.inner.lock().unwrap().script.extend(behaviours);
    }

    /// What every unscripted request gets from now on.
    pub fn always(&self, behaviour: Behaviour) {
        self.inner.lock().unwrap().fallback = Some(behaviour);
    }

    pub fn stop_recording(&self) {
        self.inner.lock().unwrap().unrecorded = true;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }
}

type Shared = Arc<Mutex<Inner>>;

fn next(inner: &Shared, path: &str, headers: HeaderMap, body: Value) -> Behaviour {
    let mut inner = inner.lock().unwrap();
    if !inner.unrecorded {
        inner.received.push(Received {
            path: path.into(),
            headers,
            body,
            at: Instant::now(),
        });
    }
    inner
        .script
        .pop_front()
        .or_else(|| inner.fallback.clone())
        .unwrap_or_else(|| Behaviour::answer("Hello from upstream."))
}

async fn openai(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or("mock").to_string();
    let asked = asked_delay(&body);
    let behaviour = next(&inner, "/v1/chat/completions", headers, body);
    respond(behaviour, asked, |content, tool_call| {
        openai_stream(&model, content, tool_call)
    })
    .await
}

async fn anthropic(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let asked = asked_delay(&body);
    let behaviour = next(&inner, "/v1/messages", headers, body);
    respond(behaviour, asked, anthropic_stream).await
}

/// An `Answer` behaviour gives one short vector per input (the `i`th starting with
/// `i`), three tokens each; any other behaviour is played as for chat.
async fn embeddings(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let inputs = match &body["input"] {
        Value::Array(items) if !items.iter().all(Value::is_number) => items.len(),
        _ => 1,
    };
    let model = body["model"].clone();
    let behaviour = next(&inner, "/v1/embeddings", headers, body);
    // An answer's text `vectors=N` answers N vectors whatever the inputs: a provider
    // that miscounts.
    let vectors = match &behaviour {
        Behaviour::Answer { content, .. } => content
            .strip_prefix("vectors=")
            .map_or(inputs, |count| count.parse().unwrap()),
        other => return respond(other.clone(), None, |_, _| String::new()).await,
    };
    let data: Vec<Value> = (0..vectors)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": [index as f64, 0.5, -0.25]}))
        .collect();
    let tokens = 3 * inputs;
    Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// Sleeps `wait` to within the OS timer's slack. tokio's timer rounds deadlines up to
/// whole milliseconds, which would hide up to a millisecond of whatever a caller adds in
/// front of this upstream (the routing bench measures exactly that). The last stretch
/// runs on a blocking thread, kept short so that a runtime shutting down never waits
/// long for it.
async fn precise_sleep(wait: Duration) {
    const COARSE_MARGIN: Duration = Duration::from_millis(2);
    let deadline = Instant::now() + wait;
    if let Some(coarse) = wait.checked_sub(COARSE_MARGIN) {
        tokio::time::sleep(coarse).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    tokio::task::spawn_blocking(move || std::thread::sleep(rest))
        .await
        .unwrap();
}

/// The `delay_us=N` the last message's text asks for.
fn asked_delay(body: &Value) -> Option<Duration> {
    let text = body["messages"].as_array()?.last()?["content"].as_str()?;
    let (_, rest) = text.split_once("delay_us=")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some(Duration::from_micros(digits.parse().ok()?))
}

async fn respond(
    mut behaviour: Behaviour,
    asked: Option<Duration>,
    stream: impl Fn(&str, Option<&(String, String)>) -> String,
) -> Response {
    loop {
        match behaviour {
            Behaviour::Delay(wait, then) => {
                precise_sleep(wait).await;
                behaviour = *then;
            }
            Behaviour::DelayAsked(then) => {
                precise_sleep(asked.unwrap_or_default()).await;
                behaviour = *then;
            }
            Behaviour::Fail {
                status,
                retry_after,
            } => {
                let mut response = (
                    StatusCode::from_u16(status).unwrap(),
                    Json(json!({"error": {"message": format!("mock failure {status}"), "type": "server_error"}})),
                )
                    .into_response();
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", seconds.to_string().parse().unwrap());
                }
                return response;
            }
            Behaviour::Redirect(location) => {
                return (
                    StatusCode::TEMPORARY_REDIRECT,
                    [("location", location)],
                    "moved",
                )
                    .into_response();
            }
            Behaviour::Answer { content, tool_call } => {
                return (
                    [("content-type", "text/event-stream")],
                    stream(&content, tool_call.as_ref()),
                )
                    .into_response();
            }
        }
    }
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn openai_stream(model: &str, content: &str, tool_call: Option<&(String, String)>) -> String {
    let chunk = |delta: Value, finish: Value| {
        sse(
            &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for word in content.split_inclusive(' ') {
        out.push_str(&chunk(json!({"content": word}), Value::Null));
    }
    let finish = match tool_call {
        Some((name, arguments)) => {
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            out.push_str(&chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_mock", "type": "function", "function": {"name": name, "arguments": head}}]}),
                Value::Null,
            ));
            out.push_str(&chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}),
                Value::Null,
            ));
            "tool_calls"
        }
        None => "stop",
    };
    out.push_str(&chunk(json!({}), json!(finish)));
    out.push_str(&sse(&json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
                             "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}})));
    out.push_str("data: [DONE]\n\n");
    out
}

fn anthropic_stream(content: &str, tool_call: Option<&(String, String)>) -> String {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 13, "output_tokens": 1}}}),
    );
    out.push_str(&event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
    for word in content.split_inclusive(' ') {
        out.push_str(&event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
    }
    out.push_str(&event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let stop_reason = match tool_call {
        Some((name, arguments)) => {
            out.push_str(&event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}}),
            ));
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            for part in [head, tail] {
                out.push_str(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            out.push_str(&event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ));
            "tool_use"
        }
        None => "end_turn",
    };
    out.push_str(&event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 9}})));
    out.push_str(&event("message_stop", json!({"type": "message_stop"})));
    out
}
