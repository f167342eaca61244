//! `POST /v1/chat/completions`: one JSON answer, or server-sent events ending in
//! `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};

use super::error::ApiError;
use super::extract::{Caller, OpenAiJson};
use super::openai::request::{self, ParsedRequest};
use super::openai::response::CompletionIdentity;
use super::openai::types::ChatCompletionRequest;
use super::AppState;
use crate::chat::StreamEvent;
use crate::error::GatewayError;
use crate::gateway::{self, Recorded, RequestContext, ResponseStream};
use crate::governor::UnknownPriority;

pub async fn chat_completions(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    OpenAiJson(wire): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let ParsedRequest {
        chat,
        stream,
        include_usage,
        mut metadata,
    } = request::parse(wire)?;
    // Headers win over the body: a proxy or SDK wrapper can set them for the agent.
    if let Some(priority) = header_text(&headers, "x-priority")? {
        let priority = priority.parse().map_err(|error: UnknownPriority| {
            GatewayError::invalid("x-priority", format!("header `x-priority`: {error}"))
        })?;
        metadata.priority = Some(priority);
    }
    if let Some(run_id) = header_text(&headers, "x-run-id")? {
        metadata.run_id = Some(run_id);
    }
    let context = RequestContext::new(principal, metadata);
    let request_id = context.request_id.clone();
    let logprobs = chat.logprobs.is_some();
    let started = state.gateway.start(context, chat, stream).await?;
    let route = started.route.clone();
    let identity = CompletionIdentity {
        id: format!("chatcmpl-{request_id}"),
        created: unix_now(),
        model: started.model.clone(),
    };
    let mut response = if stream {
        let events = sse_events(started.events, identity, include_usage, logprobs);
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let response = gateway::collect(started.events).await?;
        log_completed(&response.finished);
        Json(identity.completion(response, logprobs)).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&route) {
        response.headers_mut().insert("x-warden-route", value);
    }
    Ok(response)
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

fn log_completed(completed: &Recorded) {
    let report = &completed.report;
    tracing::info!(
        request_id = %report.request_id,
        agent = %report.agent,
        backend = %report.backend,
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
