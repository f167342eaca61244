//! Why the governor refused a request, with what the caller needs to retry well.

use std::time::Duration;

use rust_decimal::Decimal;

use super::kill::KillScope;
use super::spend::Period;
use super::Priority;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernorError {
    #[error("the {class} queue is full ({capacity} requests waiting); retry in {}s", seconds(*retry_after))]
    QueueFull {
        class: Priority,
        capacity: usize,
        retry_after: Duration,
    },
    #[error("no capacity freed up for this {class} request within {}s in the queue; retry in {}s", seconds(*waited), seconds(*retry_after))]
    QueueTimeout {
        class: Priority,
        waited: Duration,
        retry_after: Duration,
    },
    #[error("agent `{agent}` is over its limit of {per_minute} {} per minute; retry in {}s", limit.unit(), seconds(*retry_after))]
    RateLimited {
        agent: String,
        limit: RateLimit,
        per_minute: u64,
        retry_after: Duration,
    },
    #[error("{scope} has spent ${spent} of its {} cap of ${cap}; it resets in {}s", period.as_str(), seconds(*resets_in))]
    BudgetExceeded {
        scope: BudgetScope,
        period: Period,
        cap: Decimal,
        spent: Decimal,
        /// Until the day or month ends: told in the message, not as a time to retry at.
        resets_in: Duration,
    },
    #[error("the {scope} kill switch is engaged ({reason}); an operator must clear it")]
    KillSwitch { scope: KillScope, reason: String },
    /// A running request could not move on to another backend: all of that backend's
    /// slots were taken.
    #[error("backend `{backend}` has all its {limit} slots taken; retry in {}s", seconds(*retry_after))]
    BackendBusy {
        backend: String,
        limit: usize,
        retry_after: Duration,
    },
}

/// Which per-minute limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Requests,
    Tokens,
}

impl RateLimit {
    pub fn unit(self) -> &'static str {
        match self {
            RateLimit::Requests => "requests",
            RateLimit::Tokens => "tokens",
        }
    }
}

/// Whose spend cap was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetScope {
    Agent(String),
    Tenant(String),
}

impl std::fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetScope::Agent(id) => write!(f, "agent `{id}`"),
            BudgetScope::Tenant(id) => write!(f, "tenant `{id}`"),
        }
    }
}

impl GovernorError {
    /// When a retry may succeed; `None` when waiting will not help. A spent cap is
    /// `None`: it resets hours away, and a client told to sleep that long (SDKs do
    /// sleep as told) is better told that retrying will not help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GovernorError::QueueFull { retry_after, .. }
            | GovernorError::QueueTimeout { retry_after, .. }
            | GovernorError::RateLimited { retry_after, .. }
            | GovernorError::BackendBusy { retry_after, .. } => Some(*retry_after),
            GovernorError::BudgetExceeded { .. } | GovernorError::KillSwitch { .. } => None,
        }
    }

    /// Every code `code` gives.
    pub const CODES: [&'static str; 6] = [
        "queue_full",
        "queue_timeout",
        "rate_limit_exceeded",
        "budget_exceeded",
        "kill_switch",
        "backend_busy",
    ];

    /// The refusal's code: the `reason` label of the rejections metric, and the `code`
    /// the client and the audit record name it by (`crate::error`'s table).
    pub fn code(&self) -> &'static str {
        match self {
            GovernorError::QueueFull { .. } => "queue_full",
            GovernorError::QueueTimeout { .. } => "queue_timeout",
            GovernorError::RateLimited { .. } => "rate_limit_exceeded",
            GovernorError::BudgetExceeded { .. } => "budget_exceeded",
            GovernorError::KillSwitch { .. } => "kill_switch",
            GovernorError::BackendBusy { .. } => "backend_busy",
        }
    }
}

/// Whole seconds, rounded up: what `Retry-After` will say.
fn seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A kill switch was addressed to an agent or tenant the configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {kind} `{name}` is configured")]
pub struct UnknownScope {
    pub kind: &'static str,
    pub name: String,
}
