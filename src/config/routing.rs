//! The `providers:` and `routing:` sections (and agents' routing overrides): where
//! requests may go beyond the local model, and when they should.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::cost::ModelPrice;

pub const DEFAULT_PROVIDER_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_PROVIDER_MAX_CONCURRENCY: usize = 16;
pub const DEFAULT_PROVIDER_RETRIES: u32 = 2;
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 200;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 5_000;
/// Anthropic requires `max_tokens`; used when the client sets none.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4_096;
pub const DEFAULT_BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_BREAKER_ERROR_RATE: f64 = 0.5;
pub const DEFAULT_BREAKER_WINDOW: usize = 20;
pub const DEFAULT_BREAKER_MIN_REQUESTS: usize = 10;
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 30_000;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible `/chat/completions` (OpenAI, vLLM, Ollama, llama.cpp...).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub kind: ProviderKind,
    /// Up to and including the version segment, e.g. `https://host/v1`.
    pub base_url: String,
    /// Environment variable holding the provider's key; absent for keyless servers.
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Further attempts after a retryable failure (connect error, 429, 5xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    /// Anthropic only: `max_tokens` when the request sets none.
    pub default_max_tokens: Option<u32>,
    pub models: Vec<RawProviderModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviderModel {
    /// The name clients use (and the upstream's, unless `upstream` says otherwise).
    pub name: String,
    pub upstream: Option<String>,
    #[serde(default, deserialize_with = "crate::cost::optional_money")]
    pub input_per_million: Option<Decimal>,
    #[serde(default, deserialize_with = "crate::cost::optional_money")]
    pub output_per_million: Option<Decimal>,
    /// Where the provider discounts prompt tokens served from its cache.
    #[serde(default, deserialize_with = "crate::cost::optional_money")]
    pub cached_input_per_million: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Opens after this many failures in a row.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// ...or when this share of the last `window` calls failed (once `min_requests`
    /// calls were seen).
    #[serde(default = "default_error_rate")]
    pub error_rate: f64,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_min_requests")]
    pub min_requests: usize,
    /// How long it stays open before one probe is let through.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            error_rate: default_error_rate(),
            window: default_window(),
            min_requests: default_min_requests(),
            open_ms: default_open_ms(),
        }
    }
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker: BreakerConfig,
    pub default_max_tokens: u32,
    pub models: Vec<ProviderModel>,
}

impl ProviderConfig {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.name == model)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderModel {
    pub name: String,
    pub upstream: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub error_rate: f64,
    pub window: usize,
    pub min_requests: usize,
    pub open_for: Duration,
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

type Invalid = (String, String);

pub fn validate_providers(raw: Vec<RawProvider>) -> Result<Vec<ProviderConfig>, Invalid> {
    let mut names = BTreeSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(index, provider)| {
            let key = |field: &str| format!("providers[{index}].{field}");
            if provider.name.trim().is_empty() || !names.insert(provider.name.clone()) {
                return Err((
                    key("name"),
                    format!("`{}` is empty or declared twice", provider.name),
                ));
            }
            let url = url::Url::parse(&provider.base_url).map_err(|e| {
                (
                    key("base_url"),
                    format!("`{}` is not a URL: {e}", provider.base_url),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err((key("base_url"), "must be http or https".into()));
            }
            if provider.max_concurrency == 0 {
                return Err((key("max_concurrency"), "must be at least 1".into()));
            }
            let timeout = super::wait_ms(&key("timeout_ms"), provider.timeout_ms)?;
            if provider.backoff_max_ms > super::MAX_WAIT_MS {
                return Err((
                    key("backoff_max_ms"),
                    format!("must be at most {} (an hour)", super::MAX_WAIT_MS),
                ));
            }
            let open_for = super::wait_ms(
                &key("circuit_breaker.open_ms"),
                provider.circuit_breaker.open_ms,
            )?;
            if provider.backoff_base_ms > provider.backoff_max_ms {
                return Err((
                    key("backoff_base_ms"),
                    "must not exceed `backoff_max_ms`".into(),
                ));
            }
            if provider.models.is_empty() {
                return Err((key("models"), "a provider serves at least one model".into()));
            }
            let breaker = &provider.circuit_breaker;
            if breaker.consecutive_failures == 0 {
                return Err((
                    key("circuit_breaker.consecutive_failures"),
                    "must be at least 1".into(),
                ));
            }
            if !(0.0..=1.0).contains(&breaker.error_rate) || breaker.error_rate == 0.0 {
                return Err((
                    key("circuit_breaker.error_rate"),
                    "must be above 0 and at most 1".into(),
                ));
            }
            if breaker.window == 0 || breaker.min_requests > breaker.window {
                return Err((
                    key("circuit_breaker.min_requests"),
                    "must be between 0 and `window` (above 0)".into(),
                ));
            }
            if provider.default_max_tokens.is_some() && provider.kind != ProviderKind::Anthropic {
                return Err((
                    key("default_max_tokens"),
                    "only Anthropic providers need it".into(),
                ));
            }
            let mut model_names = BTreeSet::new();
            let models = provider
                .models
                .iter()
                .enumerate()
                .map(|(m, model)| {
                    if model.name.trim().is_empty() || !model_names.insert(model.name.clone()) {
                        return Err((
                            key(&format!("models[{m}].name")),
                            format!("`{}` is empty or listed twice", model.name),
                        ));
                    }
                    Ok(ProviderModel {
                        name: model.name.clone(),
                        upstream: model.upstream.clone().unwrap_or_else(|| model.name.clone()),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ProviderConfig {
                name: provider.name,
                kind: provider.kind,
                base_url: provider.base_url.trim_end_matches('/').to_string(),
                api_key_env: provider.api_key_env,
                timeout,
                max_concurrency: provider.max_concurrency,
                retries: provider.retries,
                backoff_base: Duration::from_millis(provider.backoff_base_ms),
                backoff_max: Duration::from_millis(provider.backoff_max_ms),
                breaker: BreakerConfig {
                    consecutive_failures: breaker.consecutive_failures,
                    error_rate: breaker.error_rate,
                    window: breaker.window,
                    min_requests: breaker.min_requests,
                    open_for,
                },
                default_max_tokens: provider
                    .default_max_tokens
                    .unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS),
                models,
            })
        })
        .collect()
}

/// Prices written on provider models, keyed `provider/model`: the same model may cost
/// differently at two providers.
pub fn provider_prices(raw: &[RawProvider]) -> Result<Vec<(String, ModelPrice)>, Invalid> {
    let mut prices = Vec::new();
    for (index, provider) in raw.iter().enumerate() {
        for (m, model) in provider.models.iter().enumerate() {
            match (model.input_per_million, model.output_per_million) {
                (Some(input_per_million), Some(output_per_million)) => prices.push((
                    format!("{}/{}", provider.name, model.name),
                    ModelPrice::Tokens {
                        input_per_million,
                        output_per_million,
                        cached_input_per_million: model.cached_input_per_million,
                    },
                )),
                (None, None) if model.cached_input_per_million.is_none() => {}
                _ => {
                    return Err((
                        format!("providers[{index}].models[{m}]"),
                        "give both `input_per_million` and `output_per_million`, or neither".into(),
                    ))
                }
            }
        }
    }
    Ok(prices)
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
                format!("no provider serves `{model}`"),
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

fn default_timeout_ms() -> u64 {
    DEFAULT_PROVIDER_TIMEOUT_MS
}
fn default_max_concurrency() -> usize {
    DEFAULT_PROVIDER_MAX_CONCURRENCY
}
fn default_retries() -> u32 {
    DEFAULT_PROVIDER_RETRIES
}
fn default_backoff_base_ms() -> u64 {
    DEFAULT_BACKOFF_BASE_MS
}
fn default_backoff_max_ms() -> u64 {
    DEFAULT_BACKOFF_MAX_MS
}
fn default_consecutive_failures() -> u32 {
    DEFAULT_BREAKER_CONSECUTIVE_FAILURES
}
fn default_error_rate() -> f64 {
    DEFAULT_BREAKER_ERROR_RATE
}
fn default_window() -> usize {
    DEFAULT_BREAKER_WINDOW
}
fn default_min_requests() -> usize {
    DEFAULT_BREAKER_MIN_REQUESTS
}
fn default_open_ms() -> u64 {
    DEFAULT_BREAKER_OPEN_MS
}
