//! `POST /v1/completions`: a raw prompt continued by the local model, as one JSON
//! answer or server-sent events ending in `data: [DONE]`.

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
use super::openai::completions::{self, CompletionParts, TextCompletionWriter};
use super::AppState;
use crate::gateway::{self, RequestContext, ResponseEvent, ResponseStream};

pub async fn create(
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
    let parse = Box::new(completions::parse_body);
    let (parsed, CompletionParts { echo, logprobs }) =
        generate::read_request(&state, &context, &headers, body, parse).await?;
    let request_id = context.request_id.clone();
    let (stream, include_usage) = (parsed.stream, parsed.include_usage);
    let choices = parsed.chat.choices;
    let started =
        generate::start(&state, context, parsed, completions::in_completion_terms).await?;
    let mut writer = TextCompletionWriter::new(
        format!("cmpl-{request_id}"),
        generate::unix_now(),
        started.model.clone(),
        logprobs,
        choices,
    );
    let response = if stream {
        let events = sse_events(started.events, writer, echo, choices, include_usage);
        let events = generate::in_span(span, Box::pin(events));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let answer = gateway::collect(started.events).await?;
        generate::log_completed(&answer.finished);
        Json(writer.completion(echo.as_deref(), answer)).into_response()
    };
    Ok(generate::with_route(response, &started.route))
}

fn sse_events(
    events: ResponseStream,
    mut writer: TextCompletionWriter,
    echo: Option<String>,
    choices: u32,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The echoed prompt leads each choice as its own piece, before anything is
    // generated.
    let head: Vec<_> = echo
        .map(|prompt| {
            (0..choices)
                .map(|choice| json_event(&writer.text_chunk(choice, prompt.clone(), &[])))
                .collect()
        })
        .unwrap_or_default();
    let body = events.flat_map(move |event| {
        let frames = match event {
            Ok(ResponseEvent::Content {
                choice,
                text,
                logprobs,
            }) => {
                vec![json_event(&writer.text_chunk(choice, text, &logprobs))]
            }
            Ok(ResponseEvent::Finished(completed)) => {
                generate::log_completed(&completed);
                writer
                    .final_chunks(&completed, include_usage)
                    .iter()
                    .map(json_event)
                    .chain(std::iter::once(Ok(Event::default().data("[DONE]"))))
                    .collect()
            }
            Err(error) => vec![json_event(&generate::stream_failure(error).body())],
        };
        stream::iter(frames)
    });
    stream::iter(head).chain(body)
}
