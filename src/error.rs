//! The domain's errors: why a request was refused or failed, in terms an agent can act
//! on, and the one table ([`GatewayError::class`]) that says how each is told: the
//! status and OpenAI `type` the client gets, and the `code` that the client, the audit
//! record and the metrics all name it by. `api::error` adds the HTTP layer's own rows.

use std::time::Duration;

use http::StatusCode;

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::cost::outcome::InvalidOutcome;
use crate::governor::{GovernorError, UnknownScope};
use crate::policy::{ApprovalError, PolicyError};
use crate::route::plan::PlanError;
use crate::runs::RunBudgetExceeded;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Refused by the concurrency governor (queue, rate, spend, kill switch).
    #[error(transparent)]
    Governor(#[from] GovernorError),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    #[error("this model's maximum context length is {context_length} tokens, but the prompt is {prompt_tokens} tokens; shorten the {param}")]
    ContextLengthExceeded {
        prompt_tokens: usize,
        context_length: usize,
        /// The request field that holds the prompt, in the API the client called.
        param: &'static str,
    },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Every backend that could serve the request failed; `retry_after` when one of
    /// them said when to come back. Not `retryable` when they refused the request
    /// itself (a 400 from each): they would refuse it again.
    #[error("{message}")]
    Upstream {
        message: String,
        retry_after: Option<Duration>,
        retryable: bool,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// The local generation ran past `local.max_generation_ms` before producing an
    /// answer, and nothing else could take the request.
    #[error("the local generation ran past the server's deadline of {} ms before it produced an answer; shorten the prompt or ask for less", limit.as_millis())]
    GenerationDeadline { limit: Duration },
    /// A panic caught while handling the request (there should be none).
    #[error("internal error while handling the request: {0}")]
    Panicked(String),
    #[error(transparent)]
    RunBudgetExceeded(#[from] RunBudgetExceeded),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error("the policy was not reloaded: {0}")]
    PolicyInvalid(#[from] PolicyError),
    /// A kill switch addressed to an agent or tenant the configuration does not know.
    #[error(transparent)]
    UnknownKillScope(#[from] UnknownScope),
}

/// How one kind of failure is told, the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    pub status: StatusCode,
    /// OpenAI's error `type`, which clients branch on.
    pub error_type: &'static str,
    /// The stable reason: the error's `code` for the client, the audit record's
    /// `error.type`, and the `reason` label of metrics that count refusals.
    pub code: &'static str,
}

impl ErrorClass {
    pub const fn new(status: StatusCode, error_type: &'static str, code: &'static str) -> Self {
        Self {
            status,
            error_type,
            code,
        }
    }
}

/// OpenAI's error types.
pub const INVALID_REQUEST: &str = "invalid_request_error";
pub const AUTHENTICATION: &str = "authentication_error";
pub const PERMISSION: &str = "permission_error";
pub const RATE_LIMIT: &str = "rate_limit_error";
pub const INSUFFICIENT_QUOTA: &str = "insufficient_quota";
pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
pub const UPSTREAM: &str = "upstream_error";
pub const SERVER_ERROR: &str = "server_error";

impl GatewayError {
    /// The error table: how each failure is told.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        use StatusCode as S;
        match self {
            GatewayError::Auth(AuthError::MissingKey) => {
                C::new(S::UNAUTHORIZED, AUTHENTICATION, "missing_api_key")
            }
            GatewayError::Auth(AuthError::UnknownKey) => {
                C::new(S::UNAUTHORIZED, AUTHENTICATION, "invalid_api_key")
            }
            GatewayError::InvalidRequest { .. } => {
                C::new(S::BAD_REQUEST, INVALID_REQUEST, "invalid_value")
            }
            GatewayError::ModelNotFound(_) => {
                C::new(S::NOT_FOUND, INVALID_REQUEST, "model_not_found")
            }
            GatewayError::ContextLengthExceeded { .. } => {
                C::new(S::BAD_REQUEST, INVALID_REQUEST, "context_length_exceeded")
            }
            GatewayError::Unavailable { .. } => C::new(
                S::SERVICE_UNAVAILABLE,
                SERVICE_UNAVAILABLE,
                "service_unavailable",
            ),
            GatewayError::Upstream { .. } => C::new(S::BAD_GATEWAY, UPSTREAM, "upstream_error"),
            GatewayError::Internal(_)
            | GatewayError::Panicked(_)
            | GatewayError::Approval(ApprovalError::Storage { .. }) => {
                C::new(S::INTERNAL_SERVER_ERROR, SERVER_ERROR, "internal_error")
            }
            // Asking again runs into the same deadline: not a 5xx clients retry on.
            GatewayError::GenerationDeadline { .. } => C::new(
                S::UNPROCESSABLE_ENTITY,
                INVALID_REQUEST,
                "generation_deadline",
            ),
            GatewayError::RunBudgetExceeded(_) => C::new(
                S::TOO_MANY_REQUESTS,
                INSUFFICIENT_QUOTA,
                "run_budget_exceeded",
            ),
            // Nothing is acknowledged unrecorded: the request fails, and retrying helps
            // only once the log is writable again.
            GatewayError::Audit(AuditError::Broken(_) | AuditError::Closed) => C::new(
                S::SERVICE_UNAVAILABLE,
                SERVICE_UNAVAILABLE,
                "audit_unavailable",
            ),
            GatewayError::Audit(_) => C::new(S::INTERNAL_SERVER_ERROR, SERVER_ERROR, "audit_error"),
            GatewayError::Governor(refusal) => {
                let (status, error_type) = match refusal {
                    GovernorError::QueueFull { .. } | GovernorError::RateLimited { .. } => {
                        (S::TOO_MANY_REQUESTS, RATE_LIMIT)
                    }
                    GovernorError::BudgetExceeded { .. } => {
                        (S::TOO_MANY_REQUESTS, INSUFFICIENT_QUOTA)
                    }
                    GovernorError::QueueTimeout { .. } | GovernorError::BackendBusy { .. } => {
                        (S::SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE)
                    }
                    // 403, not 503: SDKs retry 5xx on their own, and a stopped agent
                    // must not keep knocking until an operator lets it back in.
                    GovernorError::KillSwitch { .. } => (S::FORBIDDEN, PERMISSION),
                };
                // The governor names its refusals itself: it counts them by that code.
                C::new(status, error_type, refusal.code())
            }
            GatewayError::Approval(ApprovalError::NotFound(_)) => {
                C::new(S::NOT_FOUND, INVALID_REQUEST, "approval_not_found")
            }
            GatewayError::Approval(ApprovalError::AlreadyDecided { .. }) => {
                C::new(S::CONFLICT, INVALID_REQUEST, "approval_already_decided")
            }
            GatewayError::Approval(ApprovalError::Expired(_)) => {
                C::new(S::CONFLICT, INVALID_REQUEST, "approval_expired")
            }
            GatewayError::PolicyInvalid(_) => {
                C::new(S::UNPROCESSABLE_ENTITY, INVALID_REQUEST, "policy_invalid")
            }
            GatewayError::UnknownKillScope(_) => C::new(S::NOT_FOUND, INVALID_REQUEST, "not_found"),
        }
    }

    /// The refusal of a prompt past the context, naming the field that holds the
    /// prompt in the API the client called; any other error as it is.
    pub fn with_prompt_named(self, param: &'static str) -> Self {
        match self {
            GatewayError::ContextLengthExceeded {
                prompt_tokens,
                context_length,
                ..
            } => GatewayError::ContextLengthExceeded {
                prompt_tokens,
                context_length,
                param,
            },
            other => other,
        }
    }

    /// The request parameter at fault, when one is.
    pub fn param(&self) -> Option<String> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.clone(),
            GatewayError::ModelNotFound(_) => Some("model".into()),
            GatewayError::ContextLengthExceeded { param, .. } => Some((*param).into()),
            GatewayError::RunBudgetExceeded(exceeded) => Some(exceeded.limit.name().into()),
            _ => None,
        }
    }

    /// When a retry may succeed; `None` when waiting will not help or nobody knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Unavailable { retry_after, .. }
            | GatewayError::Upstream { retry_after, .. } => *retry_after,
            GatewayError::Governor(refusal) => refusal.retry_after(),
            _ => None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }
}

impl From<PlanError> for GatewayError {
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::ModelNotFound(model) => GatewayError::ModelNotFound(model),
            PlanError::NoProvider => GatewayError::Unavailable {
                message: error.to_string(),
                retry_after: None,
            },
            PlanError::JsonNotPromised(message) => {
                GatewayError::invalid("response_format", message)
            }
            PlanError::LocalOnly(message) => GatewayError::invalid("model", message),
        }
    }
}

impl From<InvalidOutcome> for GatewayError {
    fn from(error: InvalidOutcome) -> Self {
        GatewayError::invalid(error.field, error.message)
    }
}

/// What a caught panic said, when it said it as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// How long a client should wait before retrying while the model loads.
const LOADING_RETRY_AFTER: Duration = Duration::from_secs(5);

impl From<BackendError> for GatewayError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::ContextLengthExceeded {
                prompt_tokens,
                context_length,
            } => GatewayError::ContextLengthExceeded {
                prompt_tokens,
                context_length,
                param: "messages",
            },
            BackendError::MaxTokensExceeded { field, .. } => {
                GatewayError::invalid(field.as_str(), error.to_string())
            }
            BackendError::DeadlineExceeded { limit } => GatewayError::GenerationDeadline { limit },
            BackendError::Saturated { waited, .. } => GatewayError::Unavailable {
                message: format!("{error}; retry later"),
                retry_after: Some(
                    waited
                        .min(Duration::from_secs(30))
                        .max(Duration::from_secs(1)),
                ),
            },
            BackendError::Loading => GatewayError::Unavailable {
                message: "the local model is still loading; retry shortly".into(),
                retry_after: Some(LOADING_RETRY_AFTER),
            },
            BackendError::Unavailable(_) => GatewayError::Unavailable {
                message: error.to_string(),
                retry_after: None,
            },
            BackendError::Upstream {
                retry_after,
                retryable,
                ..
            } => GatewayError::Upstream {
                message: error.to_string(),
                retry_after,
                retryable,
            },
            BackendError::ProviderSaturated { .. } => GatewayError::Unavailable {
                message: format!("{error}; retry later"),
                retry_after: Some(Duration::from_secs(1)),
            },
            BackendError::CircuitOpen { retry_in, .. } => GatewayError::Unavailable {
                message: error.to_string(),
                retry_after: Some(retry_in.max(Duration::from_secs(1))),
            },
            BackendError::Generation(message) => GatewayError::Internal(message),
            BackendError::InvalidInput { field, message } => GatewayError::invalid(field, message),
            BackendError::Grammar(error) => {
                let message = error.to_string();
                GatewayError::invalid(error.field, message)
            }
        }
    }
}
