//! Request extractors whose failures are answered in OpenAI's error shape: the body
//! (size, read time, encoding, JSON syntax and types, with the offending field named),
//! path and query parameters, and the caller behind the bearer key.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// The configured body limits (`server.max_body_bytes`, `server.body_read_timeout_ms`),
/// made visible to extractors: the limit layer itself only says "too large".
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// Reads a request's body whole, within the size limit and the read timeout.
pub async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let limits = request.extensions().get::<BodyLimits>().copied();
    let read = Bytes::from_request(request, &());
    let read = match limits {
        Some(limits) => tokio::time::timeout(limits.read_timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout {
                limit: limits.read_timeout,
            })?,
        None => read.await,
    };
    read.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: limits.map_or(usize::MAX, |limits| limits.max_bytes),
            }
        } else {
            ApiError::BodyUnreadable(rejection.body_text())
        }
    })
}

/// Parses a whole JSON body into `T`, naming the offending field when it does not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BodyNotUtf8);
    }
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    // Only a body that fails pays for tracking where: parsed again, path and all.
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let param = param_of(&error);
        ApiError::MalformedJson {
            message: error.into_inner().to_string(),
            param,
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::MalformedJson {
            message: error.to_string(),
            param: None,
        })?;
    Ok(value)
}

/// A JSON body parsed into `T`.
pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request).await?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// A body read whole but not yet parsed, or why it could not be read: for handlers that
/// account for every refusal themselves (the chat endpoint records it).
pub struct RawBody(pub Result<Bytes, ApiError>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RawBody(read_body(request).await))
    }
}

/// Path parameters parsed into `T`; failures answer in OpenAI's error shape.
pub struct OpenAiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for OpenAiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| OpenAiPath(path.0))
            .map_err(|rejection| ApiError::InvalidPath(rejection.body_text()))
    }
}

/// The field a deserialization error is about: its path, or the missing field's name.
fn param_of(error: &serde_path_to_error::Error<serde_json::Error>) -> Option<String> {
    let path = error.path().to_string();
    if path != "." {
        return Some(path);
    }
    let message = error.inner().to_string();
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string)
}

/// A query string parsed into `T`; failures answer in OpenAI's error shape.
pub struct OpenAiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for OpenAiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|query| OpenAiQuery(query.0))
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))
    }
}

/// The authenticated agent making the request.
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = state.keys.authenticate(bearer_key(parts))?;
        Ok(Caller(principal))
    }
}

pub fn bearer_key(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    bearer_token(value)
}

/// The key in an `Authorization: Bearer <key>` value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|key| !key.is_empty())
}
