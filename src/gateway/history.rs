//! The record of how one request was routed as it happens: the route, the reasons, the
//! risk, and every attempt on the way, so the final report (and the audit log) can say
//! exactly where the time and the money went.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::chat::{Confidence, GenerationSummary, Usage};
use crate::cost::Metered;
use crate::route::{Reason, Risk, Route, RoutingTable};

/// One try at answering.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub backend: String,
    pub model: String,
    pub outcome: AttemptOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Confidence>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Its answer is the response.
    Served,
    /// It answered, but the answer was not good enough and was replaced.
    Rejected,
    /// It failed (an error, a timeout, a broken stream).
    Failed,
    /// It was not tried: its circuit was open.
    Skipped,
}

pub struct RouteHistory {
    pub table: Arc<RoutingTable>,
    pub route: Route,
    pub reasons: Vec<Reason>,
    pub risk: Risk,
    pub attempts: Vec<Attempt>,
}

impl RouteHistory {
    pub fn new(table: Arc<RoutingTable>, route: Route) -> Self {
        Self {
            table,
            route,
            reasons: Vec::new(),
            risk: Risk::default(),
            attempts: Vec::new(),
        }
    }

    pub fn reason(&mut self, reason: Reason) {
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }

    /// A generation that finished, served or not.
    pub fn answered(&mut self, summary: &GenerationSummary, outcome: AttemptOutcome) {
        let timings = summary.timings;
        self.attempts.push(Attempt {
            backend: summary.backend.clone(),
            model: summary.model.clone(),
            outcome,
            error: None,
            usage: summary.usage,
            confidence: summary.confidence,
            latency_ms: timings.queue_ms + timings.prefill_ms + timings.decode_ms,
            cost_usd: self.table.prices.cost(&Metered::from(summary)),
        });
    }

    /// A backend that could not answer.
    pub fn failed(&mut self, backend: &str, model: &str, error: &BackendError, latency_ms: f64) {
        let outcome = match error {
            BackendError::CircuitOpen { .. } | BackendError::ProviderSaturated { .. } => {
                AttemptOutcome::Skipped
            }
            _ => AttemptOutcome::Failed,
        };
        self.attempts.push(Attempt {
            backend: backend.to_string(),
            model: model.to_string(),
            outcome,
            error: Some(error.to_string()),
            usage: Usage::default(),
            confidence: None,
            latency_ms,
            cost_usd: None,
        });
    }

    /// Everything spent, on every attempt; `None` when nothing spent had a price.
    pub fn cost(&self) -> Option<Decimal> {
        self.attempts
            .iter()
            .filter_map(|attempt| attempt.cost_usd)
            .reduce(|total, cost| total + cost)
    }

    /// The `x-warden-route` header: what is known when the response starts.
    pub fn header(&self, backend: &str, model: &str, confidence: Option<Confidence>) -> String {
        let reasons: Vec<&str> = self.reasons.iter().map(|reason| reason.as_str()).collect();
        let mut header = format!(
            "route={}; backend={backend}; model={model}; reasons={}; attempts={}",
            self.route.as_str(),
            reasons.join(","),
            self.attempts.len() + 1
        );
        if let Some(confidence) = confidence {
            header.push_str(&format!(
                "; mean_logprob={:.3}; min_logprob={:.3}",
                confidence.mean_logprob, confidence.min_logprob
            ));
        }
        header
    }
}
