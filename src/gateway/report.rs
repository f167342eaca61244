//! warden's account of how a request was served: the `warden` object of a response.

use serde::Serialize;

use super::RequestContext;
use crate::chat::{Confidence, GenerationSummary};

#[derive(Debug, Clone, Serialize)]
pub struct WardenReport {
    pub request_id: String,
    pub agent: String,
    pub tenant: String,
    pub route: &'static str,
    pub backend: String,
    pub model: String,
    pub confidence: Option<Confidence>,
    pub malformed_tool_call: bool,
    pub timings: ReportTimings,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportTimings {
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub first_token_ms: f64,
    pub total_ms: f64,
}

impl WardenReport {
    pub fn new(context: &RequestContext, summary: &GenerationSummary) -> Self {
        Self {
            request_id: context.request_id.clone(),
            agent: context.principal.agent_id.clone(),
            tenant: context.principal.tenant.clone(),
            route: "local",
            backend: summary.backend.clone(),
            model: summary.model.clone(),
            confidence: summary.confidence,
            malformed_tool_call: summary.malformed_tool_call,
            timings: ReportTimings {
                queue_ms: summary.timings.queue_ms,
                prefill_ms: summary.timings.prefill_ms,
                decode_ms: summary.timings.decode_ms,
                first_token_ms: summary.timings.first_token_ms,
                total_ms: context.received.elapsed().as_secs_f64() * 1000.0,
            },
        }
    }
}
