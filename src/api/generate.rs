//! What every endpoint that generates shares (`/v1/chat/completions`,
//! `/v1/responses`): the request's span, its body read and validated (a refusal still
//! recorded), warden's headers applied, and the gateway started. Each endpoint only
//! says how its body becomes a request and how the answer is written back.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures::{stream, Stream, StreamExt};
use tracing::{Instrument, Span};

use super::error::ApiError;
use super::openai::request::{self, Limits, ParsedRequest};
use super::AppState;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::{Recorded, RequestContext, RequestMetadata, Started};
use crate::governor::UnknownPriority;
use crate::metrics::PANIC_IN_HANDLER;

/// Bodies up to this size are parsed and validated where they arrive: that takes
/// microseconds, less than handing them to another thread. Larger ones go to the CPU
/// pool, so a 4 MB body never stalls the async workers.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Answers one request with `answer`, inside the request's span, with its id on the
/// response whatever the outcome.
pub async fn in_request<F, Fut>(
    state: AppState,
    principal: Arc<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
    answer: F,
) -> Response
where
    F: FnOnce(AppState, RequestContext, HeaderMap, Result<Bytes, ApiError>, Span) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
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

/// A body parsed by an endpoint: the request the gateway takes, and what the endpoint
/// keeps for writing its answer.
pub type Parser<E> =
    Box<dyn FnOnce(&[u8], &Limits, &str) -> Result<(ParsedRequest, E), ApiError> + Send>;

/// The body as the gateway takes it: parsed and validated by `parse` (off the async
/// workers when it is large), then warden's headers applied. A refusal is recorded
/// before it is returned: the request never reached the gateway, and is still on the
/// record.
pub async fn read_request<E: Send + 'static>(
    state: &AppState,
    context: &RequestContext,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
    parse: Parser<E>,
) -> Result<(ParsedRequest, E), ApiError> {
    let (body, parsed) = match body {
        Ok(bytes) => {
            let agent = context.principal.agent_id.clone();
            let parsed = parse_request(state, bytes.clone(), headers, agent, parse).await;
            (bytes, parsed)
        }
        Err(error) => (Bytes::new(), Err(error)),
    };
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(error) => Err(refused(state, context, &body, error).await),
    }
}

/// `error`, recorded as the refusal of a request the gateway never took.
pub async fn refused(
    state: &AppState,
    context: &RequestContext,
    body: &[u8],
    error: ApiError,
) -> ApiError {
    if matches!(error, ApiError::Panicked(_)) {
        state.metrics.requests.count_panic(PANIC_IN_HANDLER);
    }
    state
        .gateway
        .record_unread(context, body, error.code(), &error.to_string())
        .await;
    error
}

async fn parse_request<E: Send + 'static>(
    state: &AppState,
    body: Bytes,
    headers: &HeaderMap,
    agent: String,
    parse: Parser<E>,
) -> Result<(ParsedRequest, E), ApiError> {
    let server = &state.config.server;
    let limits = Limits {
        max_tools: server.max_tools,
        max_tool_schema_bytes: server.max_tool_schema_bytes,
    };
    let (mut parsed, kept) = if body.len() <= INLINE_PARSE_BYTES {
        parse(&body, &limits, &agent)?
    } else {
        state
            .cpu
            .run(move || parse(&body, &limits, &agent))
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
    Ok((parsed, kept))
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

/// Hands the request to the gateway, with its metadata and the way the client reads the
/// answer (streamed or whole). The gateway's refusals name the chat field; an endpoint
/// whose client wrote another puts them `in_clients_terms`.
pub async fn start(
    state: &AppState,
    mut context: RequestContext,
    parsed: ParsedRequest,
    in_clients_terms: impl FnOnce(GatewayError) -> GatewayError,
) -> Result<Started, ApiError> {
    context.metadata = parsed.metadata;
    state
        .gateway
        .start(context, parsed.chat, parsed.stream)
        .await
        .map_err(|error| in_clients_terms(error).into())
}

/// `response` with the route it took (`x-warden-route`), as far as known before the
/// first byte.
pub fn with_route(mut response: Response, route: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(route) {
        response.headers_mut().insert("x-warden-route", value);
    }
    response
}

/// `events`, polled inside `span`: the server polls a streamed answer after the handler
/// has returned, and what the answer logs must stay tied to its request.
pub fn in_span<S: Stream + Unpin>(span: Span, mut events: S) -> impl Stream<Item = S::Item> {
    stream::poll_fn(move |cx| {
        let _inside = span.enter();
        events.poll_next_unpin(cx)
    })
}

pub fn log_completed(completed: &Recorded) {
    let report = &completed.report;
    // Who and which request: the request's span says it.
    tracing::info!(
        completion_tokens = completed.usage.completion_tokens,
        total_ms = report.timings.total_ms,
        "completed"
    );
}

/// Once streaming has begun the status is sent; a failure can only be reported in-band.
/// Logged here, where the request's span still holds.
pub fn stream_failure(error: GatewayError) -> ApiError {
    let error = ApiError::from(error);
    tracing::error!(%error, "stream failed");
    error
}

/// One server-sent event whose data is `body` as JSON.
pub fn json_event(body: &impl serde::Serialize) -> Result<Event, Infallible> {
    let json = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    Ok(Event::default().data(json))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
