//! warden's account of how a request was served: the `warden` object of a response,
//! and what the audit log records.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use super::history::{Attempt, AttemptOutcome, RouteHistory};
use super::RequestContext;
use crate::chat::{Confidence, GenerationSummary};
use crate::cost::Metered;
use crate::governor::Priority;
use crate::policy::PolicyReport;
use crate::route::{Reason, Risk, Route};
use crate::runs::RunUsage;

#[derive(Debug, Clone, Serialize)]
pub struct WardenReport {
    pub request_id: String,
    pub agent: String,
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub route: Route,
    pub reasons: Vec<Reason>,
    pub risk: Risk,
    /// The class the governor ran the request in (after the agent's default and ceiling).
    pub priority: Priority,
    /// The backend and model whose answer this is.
    pub backend: String,
    pub model: String,
    pub confidence: Option<Confidence>,
    pub malformed_tool_call: bool,
    /// Every attempt, the served one last.
    pub attempts: Vec<Attempt>,
    /// US dollars over every attempt, as a decimal string; absent when nothing was priced.
    pub cost_usd: Option<Decimal>,
    /// What the escalation model (`escalation_model` in the prices, else the routing's
    /// first escalation model) would have charged for this answer's tokens: the saving of not sending it there is the difference.
    pub reference_cost_usd: Option<Decimal>,
    pub routing_version: u64,
    pub timings: ReportTimings,
    /// The run this request is a step of, after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunUsage>,
    /// Tool-call decisions, output findings and tickets under the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportTimings {
    /// Waiting to start: in the governor's queue, then for an engine slot.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub first_token_ms: f64,
    pub total_ms: f64,
}

impl WardenReport {
    pub fn new(
        context: &RequestContext,
        summary: &GenerationSummary,
        mut history: RouteHistory,
        priority: Priority,
        governor_wait: Duration,
    ) -> Self {
        history.answered(summary, AttemptOutcome::Served);
        Self {
            request_id: context.request_id.clone(),
            agent: context.principal.agent_id.clone(),
            tenant: context.principal.tenant.clone(),
            run_id: context.metadata.run_id.clone(),
            route: history.route,
            reasons: history.reasons.clone(),
            risk: history.risk.clone(),
            priority,
            backend: summary.backend.clone(),
            model: summary.model.clone(),
            confidence: summary.confidence,
            malformed_tool_call: !summary.malformed_tool_calls.is_empty(),
            cost_usd: history.cost(),
            reference_cost_usd: history.table.reference_cost(&Metered::from(summary)),
            routing_version: history.table.version,
            attempts: history.attempts,
            timings: ReportTimings {
                queue_ms: governor_wait.as_secs_f64() * 1000.0 + summary.timings.queue_ms,
                prefill_ms: summary.timings.prefill_ms,
                decode_ms: summary.timings.decode_ms,
                first_token_ms: summary.timings.first_token_ms,
                total_ms: context.received.elapsed().as_secs_f64() * 1000.0,
            },
            run: None,
            policy: None,
        }
    }
}
