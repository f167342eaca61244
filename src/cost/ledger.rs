//! What one request cost: every attempt at answering it (a local attempt before an
//! escalation, retries), each priced, their sum, and what the escalation model would
//! have charged for the answer, from which reports compute the saving.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use super::PriceTable;
use crate::chat::GenerationSummary;

/// What one attempt consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub model: String,
    pub prompt_tokens: u32,
    /// Prompt tokens the provider served from its cache (counted in `prompt_tokens`).
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The engine's time on it, for models priced per CPU-second.
    pub compute: Duration,
}

impl From<&GenerationSummary> for Metered {
    fn from(summary: &GenerationSummary) -> Self {
        let compute_ms = (summary.timings.prefill_ms + summary.timings.decode_ms).max(0.0);
        Self {
            model: summary.model.clone(),
            prompt_tokens: summary.usage.prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: summary.usage.completion_tokens,
            compute: Duration::from_secs_f64(compute_ms / 1000.0),
        }
    }
}

/// One attempt, priced; listed in `warden.attempts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptCost {
    pub backend: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `None` when the model has no price.
    pub cost_usd: Option<Decimal>,
}

/// A request's cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bill {
    pub attempts: Vec<AttemptCost>,
    /// The sum over the priced attempts; `None` when none was priced.
    pub cost_usd: Option<Decimal>,
    /// What the escalation model would have charged for the answer's tokens; `None`
    /// without an `escalation_model`.
    pub reference_cost_usd: Option<Decimal>,
}

impl PriceTable {
    /// Prices a request from its attempts, in order; the last one gave the answer.
    pub fn bill(&self, attempts: &[&GenerationSummary]) -> Bill {
        let attempts: Vec<AttemptCost> = attempts
            .iter()
            .map(|summary| AttemptCost {
                backend: summary.backend.clone(),
                model: summary.model.clone(),
                prompt_tokens: summary.usage.prompt_tokens,
                completion_tokens: summary.usage.completion_tokens,
                cost_usd: self.cost(&Metered::from(*summary)),
            })
            .collect();
        let cost_usd = attempts
            .iter()
            .filter_map(|attempt| attempt.cost_usd)
            .reduce(|sum, cost| sum + cost);
        let reference_cost_usd = attempts.last().and_then(|answer| {
            self.reference_cost(&Metered {
                model: answer.model.clone(),
                prompt_tokens: answer.prompt_tokens,
                cached_prompt_tokens: 0,
                completion_tokens: answer.completion_tokens,
                compute: Duration::ZERO,
            })
        });
        Bill {
            attempts,
            cost_usd,
            reference_cost_usd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FinishReason, Timings, Usage};
    use std::str::FromStr;

    fn summary(backend: &str, model: &str, prompt: u32, completion: u32) -> GenerationSummary {
        GenerationSummary {
            backend: backend.into(),
            model: model.into(),
            finish_reason: FinishReason::Stop,
            tool_calls: Vec::new(),
            malformed_tool_call: false,
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            },
            confidence: None,
            timings: Timings::default(),
        }
    }

    #[test]
    fn every_attempt_is_paid_for() {
        let prices = PriceTable::from_yaml(
            "escalation_model: big\nmodels:\n  small: {input_per_million: 1, output_per_million: 2}\n  big: {input_per_million: 10, output_per_million: 20}\n",
        )
        .unwrap();
        let local = summary("local", "small", 1_000, 100);
        let escalated = summary("openai", "big", 1_000, 50);
        let bill = prices.bill(&[&local, &escalated]);
        // small: 0.001 + 0.0002; big: 0.01 + 0.001
        assert_eq!(bill.attempts.len(), 2);
        assert_eq!(bill.cost_usd, Some(Decimal::from_str("0.0122").unwrap()));
        // The reference is the answer's tokens at the escalation model's prices.
        assert_eq!(
            bill.reference_cost_usd,
            Some(Decimal::from_str("0.011").unwrap())
        );
        let unpriced = prices.bill(&[&summary("local", "mystery", 10, 10)]);
        assert_eq!(unpriced.cost_usd, None);
        assert!(unpriced.reference_cost_usd.is_some());
    }
}
