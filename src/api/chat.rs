//! `POST /v1/chat/completions`: one JSON answer, or server-sent events ending in
//! `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderValue;
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
use crate::backend::{self, BackendError};
use crate::chat::GenerationEvent;
use crate::error::GatewayError;
use crate::gateway::{RequestContext, WardenReport};

pub async fn chat_completions(
    State(state): State<AppState>,
    Caller(principal): Caller,
    OpenAiJson(wire): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let context = RequestContext::new(principal);
    let ParsedRequest {
        chat,
        stream,
        include_usage,
    } = request::parse(wire)?;
    let logprobs = chat.logprobs.is_some();
    let started = state.gateway.start(chat).await?;
    let identity = CompletionIdentity {
        id: format!("chatcmpl-{}", context.request_id),
        created: unix_now(),
        model: started.model.clone(),
    };
    let request_id = context.request_id.clone();
    let mut response = if stream {
        let events = sse_events(started.events, identity, context, include_usage, logprobs);
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let generation = backend::collect(started.events)
            .await
            .map_err(GatewayError::from)?;
        let report = WardenReport::new(&context, &generation.summary);
        tracing::info!(
            request_id = %report.request_id,
            agent = %report.agent,
            backend = %report.backend,
            completion_tokens = generation.summary.usage.completion_tokens,
            total_ms = report.timings.total_ms,
            "completed"
        );
        Json(identity.completion(generation, logprobs, json(&report))).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

fn sse_events(
    events: backend::EventStream,
    identity: CompletionIdentity,
    context: RequestContext,
    include_usage: bool,
    logprobs: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let identity = Arc::new(identity);
    let head = stream::once(futures::future::ready(data(&identity.role_chunk())));
    let body_identity = identity.clone();
    let body = events.flat_map(move |event| {
        let frames = match event {
            Ok(GenerationEvent::Content {
                text,
                logprobs: token_logprobs,
            }) => {
                vec![data(
                    &body_identity.content_chunk(text, logprobs.then_some(token_logprobs)),
                )]
            }
            Ok(GenerationEvent::Finished(summary)) => {
                let report = WardenReport::new(&context, &summary);
                tracing::info!(
                    request_id = %report.request_id,
                    agent = %report.agent,
                    backend = %report.backend,
                    completion_tokens = summary.usage.completion_tokens,
                    total_ms = report.timings.total_ms,
                    "streamed"
                );
                body_identity
                    .final_chunks(&summary, include_usage, json(&report))
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
fn stream_error(error: BackendError) -> Result<Event, Infallible> {
    let error = ApiError::from(GatewayError::from(error));
    tracing::error!(%error, "stream failed");
    Ok(Event::default().data(error.body().to_string()))
}

fn data(chunk: &impl serde::Serialize) -> Result<Event, Infallible> {
    Ok(Event::default().data(json(chunk).to_string()))
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
