//! `POST /v1/embeddings`: vectors from a provider's embedding model or the local
//! model, governed, priced and recorded like a chat.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::Span;

use super::error::ApiError;
use super::extract::{Caller, RawBody};
use super::generate;
use super::openai::embeddings::{self, EmbeddingList, EmbeddingParts};
use super::openai::types::UsageBody;
use super::AppState;
use crate::gateway::{self, RequestContext};

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
    mut context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
    _span: Span,
) -> Result<Response, ApiError> {
    let parse = Box::new(embeddings::parse_body);
    let (
        parsed,
        EmbeddingParts {
            inputs,
            options,
            base64,
        },
    ) = generate::read_request(&state, &context, &headers, body, parse).await?;
    context.metadata = parsed.metadata;
    let (started, vectors) = state
        .gateway
        .embed(context, parsed.chat, inputs, options)
        .await?;
    let answer = gateway::collect(started.events).await?;
    generate::log_completed(&answer.finished);
    let list = EmbeddingList {
        object: "list",
        data: embeddings::data(vectors, base64),
        model: started.model,
        usage: UsageBody::from(answer.finished.usage).into(),
        warden: answer.finished.report_json,
    };
    Ok(generate::with_route(
        Json(list).into_response(),
        &started.route,
    ))
}
