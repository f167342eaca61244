//! Request extractors whose failures are answered in OpenAI's error shape: the JSON
//! body (size, encoding, syntax, types, with the offending field named) and the caller
//! behind the bearer key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// A JSON body parsed into `T`.
pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |limit| limit.0);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::MalformedJson {
                        message: rejection.body_text(),
                        param: None,
                    }
                }
            })?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(ApiError::BodyNotUtf8);
        }
        if let Ok(value) = serde_json::from_slice(&bytes) {
            return Ok(OpenAiJson(value));
        }
        // Only a body that fails pays for tracking where: parsed again, path and all.
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
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
        Ok(OpenAiJson(value))
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

/// The configured body limit, made visible to extractors (the limit layer itself only
/// says "too large").
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

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
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|key| !key.is_empty())
}
