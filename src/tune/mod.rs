//! `warden tune`: replays recorded routing decisions against candidate confidence
//! thresholds and prints what each would have done — share served locally, escalation
//! rate, cost, and how the runs of local answers turned out — so an operator picks a
//! threshold from the traffic they actually have rather than by guess.

mod records;
mod replay;

use std::fmt::Write;

use rust_decimal::Decimal;

use crate::config::Config;
use crate::cost::Metered;

pub use records::{Decision, LocalAnswer, Log};
pub use replay::{default_candidates, replay, Candidate, EscalationPricing, Replayed};

/// Decimal places shown for dollar amounts: a request's cost is often a fraction of a
/// cent.
const COST_DECIMALS: u32 = 6;

#[derive(Debug, Default)]
pub struct TuneOptions {
    /// Mean-logprob thresholds to try; by default they span the recorded confidence.
    pub candidates: Option<Vec<f32>>,
    /// Holds the per-token threshold here instead of where the configuration puts it.
    pub min_token_logprob: Option<f32>,
    /// Replays only this agent's requests (and starts from its thresholds).
    pub agent: Option<String>,
}

/// Estimates unrecorded escalations at the first escalation model's price, on the first
/// provider that serves it, for as many tokens as the local answer used.
pub struct ConfiguredPricing<'a> {
    config: &'a Config,
    target: Option<(String, String)>,
}

impl<'a> ConfiguredPricing<'a> {
    pub fn new(config: &'a Config) -> Self {
        let target = config.routing.escalation_models.iter().find_map(|model| {
            config
                .providers
                .iter()
                .find(|provider| provider.serves(model))
                .map(|provider| (provider.name.clone(), model.clone()))
        });
        Self { config, target }
    }

    fn describe(&self) -> String {
        match &self.target {
            Some((provider, model)) => format!(
                "escalations not on record are priced as {provider}/{model} for the local answer's tokens"
            ),
            None => "no escalation model is configured: escalations not on record are unpriced".into(),
        }
    }
}

impl EscalationPricing for ConfiguredPricing<'_> {
    fn estimate(&self, decision: &Decision) -> Option<Decimal> {
        let (provider, model) = self.target.as_ref()?;
        let usage = decision.local?.usage;
        self.config
            .prices
            .cost(&Metered::tokens(provider, model, usage))
    }
}

/// The table `warden tune` prints.
pub fn tune(config: &Config, mut log: Log, options: &TuneOptions) -> String {
    if let Some(agent) = &options.agent {
        log.decisions.retain(|decision| &decision.agent == agent);
    }
    let current = match &options.agent {
        Some(agent) => config.routing.thresholds_for(agent),
        None => config.routing.thresholds,
    };
    let min_token_logprob = |agent: &str| {
        options
            .min_token_logprob
            .unwrap_or_else(|| config.routing.thresholds_for(agent).min_token_logprob)
    };
    let candidates = options
        .candidates
        .clone()
        .unwrap_or_else(|| default_candidates(&log, current.min_mean_logprob));
    let pricing = ConfiguredPricing::new(config);
    let rows: Vec<Replayed> = candidates
        .iter()
        .map(|&threshold| {
            let candidate = Candidate {
                min_mean_logprob: threshold,
                min_token_logprob: &min_token_logprob,
            };
            replay(&log, &candidate, &pricing)
        })
        .collect();
    let judged = rows.first().map_or(0, |row| row.judged);
    let mut out = format!(
        "{} requests replayed, {judged} of them answered locally and judged again; outcomes known for {} runs\n{}\n\n",
        log.decisions.len(),
        log.outcomes.len(),
        pricing.describe()
    );
    out.push_str(&render(&rows, current.min_mean_logprob));
    out
}

fn render(rows: &[Replayed], current: f32) -> String {
    let percent =
        |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let mut out = format!(
        "  {:>16}  {:>7}  {:>10}  {:>12}  {:>12}  {:>9}  {:>8}  {:>15}\n",
        "min_mean_logprob",
        "local",
        "escalation",
        "cost_usd",
        "per_request",
        "estimated",
        "unpriced",
        "local_success"
    );
    for row in rows {
        let per_request = match row.requests {
            0 => Decimal::ZERO,
            n => row.cost / Decimal::from(n),
        };
        let success = match row.local_success_rate() {
            Some(_) => format!(
                "{} of {}",
                percent(row.local_success_rate()),
                row.outcomes_known
            ),
            None => "-".into(),
        };
        let marker = if row.min_mean_logprob == current {
            '*'
        } else {
            ' '
        };
        let _ = writeln!(
            out,
            "{marker} {:>16.2}  {:>7}  {:>10}  {:>12}  {:>12}  {:>9}  {:>8}  {:>15}",
            row.min_mean_logprob,
            percent(row.local_share()),
            percent(row.escalation_rate()),
            row.cost.round_dp(COST_DECIMALS),
            per_request.round_dp(COST_DECIMALS),
            row.estimated,
            row.unpriced,
            success
        );
    }
    out.push_str("\n* the threshold in force\n");
    out
}
