//! `POST /v1/chat/completions`: one JSON answer, or server-sent events ending in
//! `data: [DONE]`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};
use tracing::Span;

use super::error::ApiError;
use super::extract::{Caller, RawBody};
use super::generate::{self, json_event};
use super::openai::request;
use super::openai::response::CompletionIdentity;
use super::AppState;
use crate::gateway::{self, RequestContext, ResponseEvent, ResponseStream};

pub async fn chat_completions(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    generate::in_request(state, principal, headers, body, answer).await
}

async fn answer(
    state: AppState,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
    span: Span,
) -> Result<Response, ApiError> {
    let parse = Box::new(|body: &[u8], limits: &_, agent: &str| {
        request::parse_body(body, limits, agent).map(|parsed| (parsed, ()))
    });
    let (parsed, ()) = generate::read_request(&state, &context, &headers, body, parse).await?;
    let request_id = context.request_id.clone();
    let logprobs = parsed.chat.logprobs.is_some();
    let (stream, include_usage) = (parsed.stream, parsed.include_usage);
    let legacy_functions = parsed.legacy_functions;
    let choices = parsed.chat.choices;
    let started = generate::start(&state, context, parsed, std::convert::identity).await?;
    let identity = CompletionIdentity {
        id: format!("chatcmpl-{request_id}"),
        created: generate::unix_now(),
        model: started.model.clone(),
        legacy_functions,
    };
    let response = if stream {
        let events = sse_events(started.events, identity, choices, include_usage, logprobs);
        let events = generate::in_span(span, Box::pin(events));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let response = gateway::collect(started.events).await?;
        generate::log_completed(&response.finished);
        Json(identity.completion(response, logprobs)).into_response()
    };
    Ok(generate::with_route(response, &started.route))
}

fn sse_events(
    events: ResponseStream,
    identity: CompletionIdentity,
    choices: u32,
    include_usage: bool,
    logprobs: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let head: Vec<_> = identity
        .role_chunks(choices)
        .iter()
        .map(json_event)
        .collect();
    let body = events.flat_map(move |event| {
        let frames = match event {
            Ok(ResponseEvent::Content {
                choice,
                text,
                logprobs: token_logprobs,
            }) => vec![json_event(&identity.content_chunk(
                choice,
                text,
                logprobs.then_some(token_logprobs),
            ))],
            Ok(ResponseEvent::Finished(completed)) => {
                generate::log_completed(&completed);
                identity
                    .final_chunks(&completed, include_usage)
                    .iter()
                    .map(json_event)
                    .chain(std::iter::once(Ok(Event::default().data("[DONE]"))))
                    .collect()
            }
            // The error as OpenAI's SDKs expect it in a chat stream: its usual body.
            Err(error) => vec![json_event(&generate::stream_failure(error).body())],
        };
        stream::iter(frames)
    });
    stream::iter(head).chain(body)
}
