//! The routing policy, validated, and its defaults: the escalation chain, the
//! confidence thresholds (per agent too), label risks, verify-before-stream and the
//! local queue fallback. `config` reads the `routing:` section into it; `PUT
//! /admin/routing` replaces it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::provider::config::ProviderConfig;

/// A key and why its value is refused.
type Invalid = (String, String);

/// A mean token log-probability below this sends a local answer out. Calibrated with
/// `warden tune` on recorded traffic: on the default model, answers that stayed on
/// topic sat near -0.3, rambling ones below -0.6.
pub const DEFAULT_MIN_MEAN_LOGPROB: f32 = -1.0;
/// One token this unlikely marks a guess in the middle of an answer.
pub const DEFAULT_MIN_TOKEN_LOGPROB: f32 = -12.0;
/// Risk scores run from 0 to 100; above the ceiling a request skips the local model.
pub const DEFAULT_LOCAL_RISK_CEILING: u8 = 50;
/// How long a request may wait for a local slot before it goes to the first escalation
/// target instead, unless the governor's queue timeout is shorter: then a quarter of it.
pub const DEFAULT_LOCAL_QUEUE_FALLBACK_MS: u64 = 2_000;

/// The routing policy; also the body of `PUT /admin/routing`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Models to escalate to, in order: the fallback chain.
    #[serde(default)]
    pub escalation_models: Vec<String>,
    pub min_mean_logprob: Option<f32>,
    pub min_token_logprob: Option<f32>,
    pub local_risk_ceiling: Option<u8>,
    /// `label=value` → risk score (0-100) of requests carrying that metadata label.
    #[serde(default)]
    pub label_risk: BTreeMap<String, u8>,
    /// Hold a local answer until it is checked, so a stream never shows what an
    /// escalation then replaces. Off: local answers stream at once, unchecked.
    pub verify_before_stream: Option<bool>,
    /// How long a request waits for a local slot before it goes to the first escalation
    /// target (whose circuit must be closed); 0 turns this off.
    pub local_queue_fallback_ms: Option<u64>,
    /// Per-agent threshold overrides, by agent id.
    #[serde(default)]
    pub agents: BTreeMap<String, RawThresholds>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    pub min_mean_logprob: Option<f32>,
    pub min_token_logprob: Option<f32>,
    pub local_risk_ceiling: Option<u8>,
}

/// When a local answer is good enough, and when a request should not be tried locally.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub min_mean_logprob: f32,
    pub min_token_logprob: f32,
    pub local_risk_ceiling: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingConfig {
    pub escalation_models: Vec<String>,
    pub thresholds: Thresholds,
    pub label_risk: BTreeMap<String, u8>,
    pub verify_before_stream: bool,
    /// 0: off.
    pub local_queue_fallback_ms: u64,
    pub agent_thresholds: BTreeMap<String, Thresholds>,
}

impl RoutingConfig {
    /// How long a request waits in the queue for a local slot before it is sent to the
    /// first escalation target; `None` if it never is.
    pub fn local_queue_fallback(&self) -> Option<Duration> {
        (self.local_queue_fallback_ms > 0)
            .then(|| Duration::from_millis(self.local_queue_fallback_ms))
    }

    /// The thresholds that apply to one agent.
    pub fn thresholds_for(&self, agent: &str) -> Thresholds {
        self.agent_thresholds
            .get(agent)
            .copied()
            .unwrap_or(self.thresholds)
    }
}

/// Checks a routing section against the providers and agents it refers to, and the
/// governor's queue timeout, which the local queue fallback must come before.
pub fn validate_routing(
    raw: RawRouting,
    providers: &[ProviderConfig],
    agents: &[String],
    queue_timeout: Duration,
    prefix: &str,
) -> Result<RoutingConfig, Invalid> {
    let key = |field: &str| format!("{prefix}{field}");
    let timeout_ms = u64::try_from(queue_timeout.as_millis()).unwrap_or(u64::MAX);
    let local_queue_fallback_ms = match raw.local_queue_fallback_ms {
        Some(ms) if ms > 0 && ms >= timeout_ms => {
            return Err((
                key("local_queue_fallback_ms"),
                format!(
                    "{ms} ms is not below governor.queue_timeout_ms ({timeout_ms} ms): requests \
                     would time out before they fall back (0 turns the fallback off)"
                ),
            ))
        }
        Some(ms) => ms,
        None => DEFAULT_LOCAL_QUEUE_FALLBACK_MS.min(timeout_ms / 4),
    };
    for (index, model) in raw.escalation_models.iter().enumerate() {
        if !providers.iter().any(|provider| provider.serves(model)) {
            return Err((
                key(&format!("escalation_models[{index}]")),
                format!("no provider serves `{model}` as a chat model"),
            ));
        }
    }
    let global = RawThresholds {
        min_mean_logprob: raw.min_mean_logprob,
        min_token_logprob: raw.min_token_logprob,
        local_risk_ceiling: raw.local_risk_ceiling,
    };
    let defaults = Thresholds {
        min_mean_logprob: DEFAULT_MIN_MEAN_LOGPROB,
        min_token_logprob: DEFAULT_MIN_TOKEN_LOGPROB,
        local_risk_ceiling: DEFAULT_LOCAL_RISK_CEILING,
    };
    let thresholds = thresholds(&global, defaults, &key(""))?;
    let mut agent_thresholds = BTreeMap::new();
    for (agent, overrides) in &raw.agents {
        let at = key(&format!("agents.{agent}."));
        if !agents.contains(agent) {
            return Err((at, format!("no agent `{agent}` is declared")));
        }
        agent_thresholds.insert(agent.clone(), self::thresholds(overrides, thresholds, &at)?);
    }
    for (label, score) in &raw.label_risk {
        if !label.contains('=') || *score > 100 {
            return Err((
                key(&format!("label_risk.{label}")),
                "entries are `label=value: score` with score 0-100".into(),
            ));
        }
    }
    Ok(RoutingConfig {
        escalation_models: raw.escalation_models,
        thresholds,
        label_risk: raw.label_risk,
        verify_before_stream: raw.verify_before_stream.unwrap_or(true),
        local_queue_fallback_ms,
        agent_thresholds,
    })
}

fn thresholds(raw: &RawThresholds, base: Thresholds, prefix: &str) -> Result<Thresholds, Invalid> {
    let logprob = |field: &str, value: Option<f32>, default: f32| match value {
        Some(v) if v > 0.0 || !v.is_finite() => Err((
            format!("{prefix}{field}"),
            "log-probabilities are 0 or below".into(),
        )),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let ceiling = raw.local_risk_ceiling.unwrap_or(base.local_risk_ceiling);
    if ceiling > 100 {
        return Err((
            format!("{prefix}local_risk_ceiling"),
            "risk runs from 0 to 100".into(),
        ));
    }
    Ok(Thresholds {
        min_mean_logprob: logprob(
            "min_mean_logprob",
            raw.min_mean_logprob,
            base.min_mean_logprob,
        )?,
        min_token_logprob: logprob(
            "min_token_logprob",
            raw.min_token_logprob,
            base.min_token_logprob,
        )?,
        local_risk_ceiling: ceiling,
    })
}
