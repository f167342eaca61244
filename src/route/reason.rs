//! The machine-readable vocabulary of routing: how a request was served and why.

use serde::{Deserialize, Serialize};

/// How a request was served in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The local model answered.
    Local,
    /// An external provider answered without the local model being tried.
    External,
    /// The local answer was not good enough; an external provider's replaced it.
    Escalated,
    /// An escalation was wanted but no provider could answer; the local answer stood.
    FallbackLocal,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Local,
        Route::External,
        Route::Escalated,
        Route::FallbackLocal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::External => "external",
            Route::Escalated => "escalated",
            Route::FallbackLocal => "fallback_local",
        }
    }
}

/// Why a routing step went the way it did. Stable codes: operators alert and tune on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `auto`: the local model goes first.
    LocalFirst,
    /// The client named a model; it goes where that model is served.
    NamedModel,
    /// The request's risk score is above the agent's local ceiling.
    RiskAboveCeiling,
    /// The prompt does not fit the local model's context.
    ContextOverflow,
    /// The local engine is loading or failed.
    LocalUnavailable,
    /// Every local slot stayed busy past the queue timeout.
    LocalSaturated,
    /// The local answer's mean token log-probability is below the threshold.
    LowMeanLogprob,
    /// One token of the local answer is below the per-token threshold.
    LowTokenLogprob,
    /// The local model wrote a tool call that could not be parsed.
    MalformedToolCall,
    /// The local model's tool call does not satisfy the tool's JSON schema.
    InvalidToolArguments,
    /// A provider failed and the next in the chain answered.
    ProviderFailover,
    /// A provider had every slot busy; the request moved on without waiting.
    ProviderSaturated,
    /// Escalation was wanted, every provider failed, the local answer was served.
    FallbackLocal,
    /// No escalation target is configured, so local answers are served unchecked.
    NoEscalationTarget,
    /// The local generation ran past `local.max_generation_ms` and was stopped.
    GenerationDeadline,
    /// The answer must follow a schema (a tool's, or `response_format`'s) that the
    /// local model's grammar engine cannot compile.
    StructuredOutput,
    /// A raw prompt (`/v1/completions`): only the local model continues one.
    RawPrompt,
}

impl Reason {
    /// The code as it appears in reports, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LocalFirst => "local_first",
            Reason::NamedModel => "named_model",
            Reason::RiskAboveCeiling => "risk_above_ceiling",
            Reason::ContextOverflow => "context_overflow",
            Reason::LocalUnavailable => "local_unavailable",
            Reason::LocalSaturated => "local_saturated",
            Reason::LowMeanLogprob => "low_mean_logprob",
            Reason::LowTokenLogprob => "low_token_logprob",
            Reason::MalformedToolCall => "malformed_tool_call",
            Reason::InvalidToolArguments => "invalid_tool_arguments",
            Reason::ProviderFailover => "provider_failover",
            Reason::ProviderSaturated => "provider_saturated",
            Reason::FallbackLocal => "fallback_local",
            Reason::NoEscalationTarget => "no_escalation_target",
            Reason::GenerationDeadline => "generation_deadline",
            Reason::StructuredOutput => "structured_output",
            Reason::RawPrompt => "raw_prompt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_serialized_form() {
        for reason in [
            Reason::LocalFirst,
            Reason::RiskAboveCeiling,
            Reason::LowMeanLogprob,
            Reason::NoEscalationTarget,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert_eq!(
            serde_json::to_value(Route::FallbackLocal).unwrap(),
            Route::FallbackLocal.as_str()
        );
    }
}
