//! Every error warden answers with, mapped to a status and OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` in one place.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::error::GatewayError;
use crate::governor::{GovernorError, UnknownScope};
use crate::policy::ApprovalError;

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
    #[error("internal error while handling the request: {0}")]
    Panicked(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(transparent)]
    UnknownKillScope(#[from] UnknownScope),
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

/// What a response needs to know about an error.
struct Disposition {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    retry_after: Option<Duration>,
}

impl Disposition {
    fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            retry_after: None,
        }
    }
}

impl ApiError {
    fn disposition(&self) -> Disposition {
        use Disposition as D;
        const INVALID: &str = "invalid_request_error";
        match self {
            ApiError::Gateway(error) => match error {
                GatewayError::Auth(AuthError::MissingKey) => D::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    Some("missing_api_key"),
                ),
                GatewayError::Auth(AuthError::UnknownKey) => D::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    Some("invalid_api_key"),
                ),
                GatewayError::InvalidRequest { param, .. } => D {
                    param: param.clone(),
                    ..D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_value"))
                },
                GatewayError::ModelNotFound(_) => D {
                    param: Some("model".into()),
                    ..D::new(StatusCode::NOT_FOUND, INVALID, Some("model_not_found"))
                },
                GatewayError::ContextLengthExceeded { .. } => D {
                    param: Some("messages".into()),
                    ..D::new(
                        StatusCode::BAD_REQUEST,
                        INVALID,
                        Some("context_length_exceeded"),
                    )
                },
                GatewayError::Unavailable { retry_after, .. } => D {
                    retry_after: *retry_after,
                    ..D::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        Some("service_unavailable"),
                    )
                },
                GatewayError::Upstream { retry_after, .. } => D {
                    retry_after: *retry_after,
                    ..D::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        Some("upstream_error"),
                    )
                },
                GatewayError::Internal(_) => {
                    D::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
                }
                // Asking again runs into the same deadline: not a 5xx clients retry on.
                GatewayError::GenerationDeadline { .. } => D::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    INVALID,
                    Some("generation_deadline"),
                ),
                GatewayError::Panicked(_) => D::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    Some("internal_error"),
                ),
                GatewayError::RunBudgetExceeded(exceeded) => D {
                    param: Some(exceeded.limit.name().into()),
                    ..D::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "insufficient_quota",
                        Some("run_budget_exceeded"),
                    )
                },
                GatewayError::Audit(error) => match error {
                    // Nothing is acknowledged unrecorded: the request fails, and
                    // retrying helps only once the log is writable again.
                    AuditError::Broken(_) | AuditError::Closed => D::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        Some("audit_unavailable"),
                    ),
                    AuditError::Io { .. }
                    | AuditError::Damaged { .. }
                    | AuditError::Truncated { .. }
                    | AuditError::Malformed { .. }
                    | AuditError::InvalidEntry(_) => D::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        Some("audit_error"),
                    ),
                },
                GatewayError::Governor(refusal) => {
                    let disposition = match refusal {
                        GovernorError::QueueFull { .. } => D::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            Some("queue_full"),
                        ),
                        GovernorError::QueueTimeout { .. } => D::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "service_unavailable",
                            Some("queue_timeout"),
                        ),
                        GovernorError::RateLimited { .. } => D::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            Some("rate_limit_exceeded"),
                        ),
                        GovernorError::BudgetExceeded { .. } => D::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "insufficient_quota",
                            Some("budget_exceeded"),
                        ),
                        // 403, not 503: SDKs retry 5xx on their own, and a stopped agent
                        // must not keep knocking until an operator lets it back in.
                        GovernorError::KillSwitch { .. } => D::new(
                            StatusCode::FORBIDDEN,
                            "permission_error",
                            Some("kill_switch"),
                        ),
                        GovernorError::BackendBusy { .. } => D::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "service_unavailable",
                            Some("backend_busy"),
                        ),
                    };
                    D {
                        retry_after: refusal.retry_after(),
                        ..disposition
                    }
                }
                GatewayError::Approval(ApprovalError::NotFound(_)) => {
                    D::new(StatusCode::NOT_FOUND, INVALID, Some("approval_not_found"))
                }
                GatewayError::Approval(ApprovalError::AlreadyDecided { .. }) => D::new(
                    StatusCode::CONFLICT,
                    INVALID,
                    Some("approval_already_decided"),
                ),
                GatewayError::Approval(ApprovalError::Expired(_)) => {
                    D::new(StatusCode::CONFLICT, INVALID, Some("approval_expired"))
                }
                GatewayError::Approval(ApprovalError::Storage { .. }) => {
                    D::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
                }
                GatewayError::PolicyInvalid(_) => D::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    INVALID,
                    Some("policy_invalid"),
                ),
            },
            ApiError::AdminKeyRequired => D::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_admin_key"),
            ),
            // The key is known, so who is asking is not in doubt: what it may do is.
            ApiError::AgentKeyOnAdmin => D::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("admin_key_required"),
            ),
            ApiError::InvalidQuery(_) => {
                D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_query"))
            }
            ApiError::InvalidPath(_) => {
                D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_path"))
            }
            ApiError::BodyTimeout { .. } => D::new(
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                Some("request_timeout"),
            ),
            ApiError::BodyUnreadable(_) => {
                D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_body"))
            }
            ApiError::Busy => D {
                retry_after: Some(BUSY_RETRY_AFTER),
                ..D::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    Some("server_busy"),
                )
            },
            ApiError::Panicked(_) => D::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("internal_error"),
            ),
            ApiError::PayloadTooLarge { .. } => D::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("request_too_large"),
            ),
            ApiError::BodyNotUtf8 => {
                D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_encoding"))
            }
            ApiError::MalformedJson { param, .. } => D {
                param: param.clone(),
                ..D::new(StatusCode::BAD_REQUEST, INVALID, Some("invalid_json"))
            },
            ApiError::NotFound { .. } => D::new(StatusCode::NOT_FOUND, INVALID, Some("not_found")),
            ApiError::MethodNotAllowed { .. } => D::new(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                Some("method_not_allowed"),
            ),
            ApiError::UnknownKillScope(_) => {
                D::new(StatusCode::NOT_FOUND, INVALID, Some("not_found"))
            }
        }
    }

    /// The stable reason the audit log records for a request refused with this error:
    /// the gateway's own for its errors, as its records name them, else the code.
    pub fn audit_kind(&self) -> &'static str {
        match self {
            ApiError::Gateway(error) => error.kind(),
            other => {
                let disposition = other.disposition();
                disposition.code.unwrap_or(disposition.kind)
            }
        }
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
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ErrorBody {
    fn new(error: &ApiError, disposition: &Disposition) -> Self {
        Self {
            error: ErrorDetail {
                message: error.to_string(),
                kind: disposition.kind,
                param: disposition.param.clone(),
                code: disposition.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let disposition = self.disposition();
        if disposition.status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, status = %disposition.status, "request refused");
        }
        let mut response = (
            disposition.status,
            Json(ErrorBody::new(&self, &disposition)),
        )
            .into_response();
        if let Some(retry_after) = disposition.retry_after {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if disposition.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
