//! The domain's errors: why a request was refused or failed, in terms an agent can act
//! on. `api::error` maps each to an HTTP status in one place.

use std::time::Duration;

use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::cost::outcome::InvalidOutcome;
use crate::governor::GovernorError;
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
    #[error("this model's maximum context length is {context_length} tokens, but the prompt is {prompt_tokens} tokens; shorten the messages")]
    ContextLengthExceeded {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Every backend that could serve the request failed; `retry_after` when one of
    /// them said when to come back.
    #[error("{message}")]
    Upstream {
        message: String,
        retry_after: Option<Duration>,
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
}

impl GatewayError {
    /// A stable name for the reason, as the audit log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Auth(_) => "authentication",
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::ContextLengthExceeded { .. } => "context_length_exceeded",
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::Upstream { .. } => "upstream_error",
            GatewayError::Internal(_) => "internal",
            GatewayError::Panicked(_) => "internal_error",
            GatewayError::GenerationDeadline { .. } => "generation_deadline",
            GatewayError::RunBudgetExceeded(_) => "run_budget_exceeded",
            GatewayError::Audit(_) => "audit_unavailable",
            GatewayError::Governor(refusal) => refusal.reason(),
            GatewayError::Approval(_) => "approval",
            GatewayError::PolicyInvalid(_) => "policy_invalid",
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
            BackendError::Upstream { retry_after, .. } => GatewayError::Upstream {
                message: error.to_string(),
                retry_after,
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
        }
    }
}
