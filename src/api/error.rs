//! Every error warden answers with, mapped to a status and OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` in one place.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::error::{
    ErrorClass, GatewayError, AUTHENTICATION, INVALID_REQUEST, PERMISSION, SERVER_ERROR,
    SERVICE_UNAVAILABLE,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body is not valid UTF-8")]
    BodyNotUtf8,
    #[error("the request body is not valid JSON: {message}")]
    MalformedJson {
        message: String,
        param: Option<String>,
    },
    #[error("the request body was not received within {}s", limit.as_secs_f64())]
    BodyTimeout { limit: Duration },
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("this endpoint needs the admin key: `Authorization: Bearer <admin key>`")]
    AdminKeyRequired,
    #[error("this key belongs to an agent; this endpoint needs the admin key")]
    AgentKeyOnAdmin,
    #[error("the query string is invalid: {0}")]
    InvalidQuery(String),
    #[error("the path is invalid: {0}")]
    InvalidPath(String),
    #[error("warden is too busy to take this request's work now; retry shortly")]
    Busy,
    #[error("warden has no room for another connection (`server.max_connections`, none idle); retry shortly")]
    NoRoomForConnection,
    #[error("internal error while handling the request: {0}")]
    Panicked(String),
    #[error("no stored response `{0}`: it was not stored, has been deleted or evicted, or belongs to another agent")]
    ResponseNotFound(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::Gateway(error.into())
    }
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        ApiError::Gateway(error.into())
    }
}

/// When a client told warden is busy should try again.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Tells the OpenAI SDKs (which honour it before their own rules) not to retry.
const SHOULD_RETRY: &str = "x-should-retry";

/// What a response needs to know about an error.
struct Disposition {
    class: ErrorClass,
    param: Option<String>,
    retry_after: Option<Duration>,
    /// Asking again cannot succeed: SDKs would otherwise retry 409 and 429 twice.
    retry_cannot_help: bool,
}

impl ApiError {
    /// The HTTP layer's own rows of the error table; the gateway's come from
    /// [`GatewayError::class`].
    fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        use StatusCode as S;
        match self {
            ApiError::Gateway(error) => error.class(),
            ApiError::AdminKeyRequired => {
                C::new(S::UNAUTHORIZED, AUTHENTICATION, "invalid_admin_key")
            }
            // The key is known, so who is asking is not in doubt: what it may do is.
            ApiError::AgentKeyOnAdmin => C::new(S::FORBIDDEN, PERMISSION, "admin_key_required"),
            ApiError::InvalidQuery(_) => C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_query"),
            ApiError::InvalidPath(_) => C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_path"),
            ApiError::BodyTimeout { .. } => {
                C::new(S::REQUEST_TIMEOUT, INVALID_REQUEST, "request_timeout")
            }
            ApiError::BodyUnreadable(_) => C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_body"),
            ApiError::Busy => C::new(S::SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, "server_busy"),
            ApiError::NoRoomForConnection => C::new(
                S::SERVICE_UNAVAILABLE,
                SERVICE_UNAVAILABLE,
                "too_many_connections",
            ),
            ApiError::Panicked(_) => {
                C::new(S::INTERNAL_SERVER_ERROR, SERVER_ERROR, "internal_error")
            }
            ApiError::PayloadTooLarge { .. } => {
                C::new(S::PAYLOAD_TOO_LARGE, INVALID_REQUEST, "request_too_large")
            }
            ApiError::BodyNotUtf8 => C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_encoding"),
            ApiError::MalformedJson { .. } => {
                C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_json")
            }
            ApiError::NotFound { .. } => C::new(S::NOT_FOUND, INVALID_REQUEST, "not_found"),
            ApiError::ResponseNotFound(_) => {
                C::new(S::NOT_FOUND, INVALID_REQUEST, "response_not_found")
            }
            ApiError::MethodNotAllowed { .. } => {
                C::new(S::METHOD_NOT_ALLOWED, INVALID_REQUEST, "method_not_allowed")
            }
        }
    }

    fn disposition(&self) -> Disposition {
        let (param, retry_after) = match self {
            ApiError::Gateway(error) => (error.param(), error.retry_after()),
            ApiError::MalformedJson { param, .. } => (param.clone(), None),
            ApiError::Busy | ApiError::NoRoomForConnection => (None, Some(BUSY_RETRY_AFTER)),
            _ => (None, None),
        };
        let class = self.class();
        // A refusal of the client's request that names no time to wait for is one no
        // retry fixes: a spent budget, a kill switch, a run budget, a decided approval,
        // a request that is wrong. A body that came too slowly may come faster. Nor
        // does one every provider refused, though the status says the fault is theirs.
        let refused_by_every_provider = matches!(
            self,
            ApiError::Gateway(GatewayError::Upstream {
                retryable: false,
                ..
            })
        );
        let retry_cannot_help = (class.status.is_client_error()
            && class.status != StatusCode::REQUEST_TIMEOUT
            && retry_after.is_none())
            || refused_by_every_provider;
        Disposition {
            class,
            param,
            retry_after,
            retry_cannot_help,
        }
    }

    /// The reason the audit log records for a request refused with this error.
    pub fn code(&self) -> &'static str {
        self.class().code
    }

    /// The error as OpenAI's JSON body, for places (a stream) where no status can be set.
    pub fn body(&self) -> serde_json::Value {
        let disposition = self.disposition();
        serde_json::json!(ErrorBody::new(self, &disposition))
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    error_type: &'static str,
    param: Option<String>,
    code: &'static str,
}

impl ErrorBody {
    fn new(error: &ApiError, disposition: &Disposition) -> Self {
        Self {
            error: ErrorDetail {
                message: error.to_string(),
                error_type: disposition.class.error_type,
                param: disposition.param.clone(),
                code: disposition.class.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let disposition = self.disposition();
        // A 503 says warden is full or waiting for something, which its own metrics and
        // logs already tell; an error line per refusal would flood the log under load.
        let status = disposition.class.status;
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, status = %disposition.class.status, "request refused");
        }
        let mut response = (
            disposition.class.status,
            Json(ErrorBody::new(&self, &disposition)),
        )
            .into_response();
        if let Some(retry_after) = disposition.retry_after {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if disposition.retry_cannot_help {
            response
                .headers_mut()
                .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if disposition.class.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
