//! `POST /v1/chat/completions`: one JSON answer, or server-sent events ending in
//! `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};
use tracing::{Instrument, Span};

use super::error::ApiError;
use super::extract::{Caller, RawBody};
use super::openai::request::{self, Limits, ParsedRequest};
use super::openai::response::CompletionIdentity;
use super::AppState;
use crate::chat::StreamEvent;
use crate::error::GatewayError;
use crate::gateway::{self, Recorded, RequestContext, RequestMetadata, ResponseStream};
use crate::governor::UnknownPriority;
use crate::metrics::PANIC_IN_HANDLER;

/// Bodies up to this size are parsed and validated where they arrive: that takes
/// microseconds, less than handing them to another thread. Larger ones go to the CPU
/// pool, so a 4 MB body never stalls the async workers.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

pub async fn chat_completions(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let context = RequestContext::new(principal, RequestMetadata::default());
    // Every line logged on the request's behalf carries its id and who sent it; the
    // gateway fills in the rest as it learns it. At error level, so that no log level
    // an operator picks can drop it from the lines it does keep.
    let span = tracing::error_span!(
        "request",
        request_id = %context.request_id,
        agent = %context.principal.agent_id,
        tenant = %context.principal.tenant,
        priority = tracing::field::Empty,
        route = tracing::field::Empty,
        backend = tracing::field::Empty,
        attempts = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let request_id = HeaderValue::from_str(&context.request_id).ok();
    let inner = span.clone();
    // The error becomes a response inside the span too: a failure is logged there.
    let answered = async move {
        answer(state, context, headers, body, inner)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    };
    let mut response = answered.instrument(span).await;
    // On refusals and failures too: the id is what an operator looks the request up by.
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

async fn answer(
    state: AppState,
    mut context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
    span: Span,
) -> Result<Response, ApiError> {
    let (body, parsed) = match body {
        Ok(bytes) => {
            let agent = context.principal.agent_id.clone();
            let parsed = parse_request(&state, bytes.clone(), &headers, agent).await;
            (bytes, parsed)
        }
        Err(error) => (Bytes::new(), Err(error)),
    };
    let ParsedRequest {
        chat,
        stream,
        include_usage,
        metadata,
        legacy_functions,
    } = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            if matches!(error, ApiError::Panicked(_)) {
                state.metrics.requests.count_panic(PANIC_IN_HANDLER);
            }
            // Refused before the gateway saw it, and still on the record.
            state
                .gateway
                .record_unread(&context, &body, error.code(), &error.to_string())
                .await;
            return Err(error);
        }
    };
    // Only a refusal needed the body as sent; the request now holds what it says.
    drop(body);
    context.metadata = metadata;
    let request_id = context.request_id.clone();
    let logprobs = chat.logprobs.is_some();
    let started = state.gateway.start(context, chat, stream).await?;
    let route = started.route.clone();
    let identity = CompletionIdentity {
        id: format!("chatcmpl-{request_id}"),
        created: unix_now(),
        model: started.model.clone(),
        legacy_functions,
    };
    let mut response = if stream {
        let events = sse_events(started.events, identity, include_usage, logprobs);
        let events = in_span(span, Box::pin(events));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let response = gateway::collect(started.events).await?;
        log_completed(&response.finished);
        Json(identity.completion(response, logprobs)).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&route) {
        response.headers_mut().insert("x-warden-route", value);
    }
    Ok(response)
}

/// The request as the gateway takes it: the body parsed and validated (off the async
/// workers when it is large), then warden's headers applied.
async fn parse_request(
    state: &AppState,
    body: Bytes,
    headers: &HeaderMap,
    agent: String,
) -> Result<ParsedRequest, ApiError> {
    let server = &state.config.server;
    let limits = Limits {
        max_tools: server.max_tools,
        max_tool_schema_bytes: server.max_tool_schema_bytes,
    };
    let mut parsed = if body.len() <= INLINE_PARSE_BYTES {
        request::parse_body(&body, &limits, &agent)?
    } else {
        state
            .cpu
            .run(move || request::parse_body(&body, &limits, &agent))
            .await??
    };
    // Headers win over the body: a proxy or SDK wrapper can set them for the agent.
    if let Some(priority) = header_text(headers, "x-priority")? {
        let priority = priority.parse().map_err(|error: UnknownPriority| {
            GatewayError::invalid("x-priority", format!("header `x-priority`: {error}"))
        })?;
        parsed.metadata.priority = Some(priority);
    }
    if let Some(run_id) = header_text(headers, "x-run-id")? {
        parsed.metadata.run_id = Some(request::run_id("x-run-id", &run_id)?);
    }
    Ok(parsed)
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|text| Some(text.trim().to_string()))
            .map_err(|_| {
                ApiError::from(GatewayError::invalid(
                    name,
                    format!("header `{name}` must be visible ASCII"),
                ))
            }),
    }
}

/// `events`, polled inside `span`: the server polls a streamed answer after the handler
/// has returned, and what the answer logs must stay tied to its request.
fn in_span<S: Stream + Unpin>(span: Span, mut events: S) -> impl Stream<Item = S::Item> {
    stream::poll_fn(move |cx| {
        let _inside = span.enter();
        events.poll_next_unpin(cx)
    })
}

fn log_completed(completed: &Recorded) {
    let report = &completed.report;
    // Who and which request: the request's span says it.
    tracing::info!(
        completion_tokens = completed.summary.usage.completion_tokens,
        total_ms = report.timings.total_ms,
        "completed"
    );
}

fn sse_events(
    events: ResponseStream,
    identity: CompletionIdentity,
    include_usage: bool,
    logprobs: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let identity = Arc::new(identity);
    let head = stream::once(futures::future::ready(data(&identity.role_chunk())));
    let body_identity = identity.clone();
    let body = events.flat_map(move |event| {
        let frames = match event {
            Ok(StreamEvent::Content {
                text,
                logprobs: token_logprobs,
            }) => vec![data(
                &body_identity.content_chunk(text, logprobs.then_some(token_logprobs)),
            )],
            Ok(StreamEvent::Finished(completed)) => {
                log_completed(&completed);
                body_identity
                    .final_chunks(&completed, include_usage)
                    .iter()
                    .map(data)
                    .chain(std::iter::once(Ok(Event::default().data("[DONE]"))))
                    .collect()
            }
            Err(error) => vec![stream_error(error)],
        };
        stream::iter(frames)
    });
    head.chain(body)
}

/// Once streaming has begun the status is sent; a failure can only be reported in-band,
/// the way OpenAI's SDKs expect it.
fn stream_error(error: GatewayError) -> Result<Event, Infallible> {
    let error = ApiError::from(error);
    tracing::error!(%error, "stream failed");
    Ok(Event::default().data(error.body().to_string()))
}

fn data(chunk: &impl serde::Serialize) -> Result<Event, Infallible> {
    let json = serde_json::to_string(chunk).unwrap_or_else(|_| "{}".into());
    Ok(Event::default().data(json))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
