//! The `providers:` section as written, validated into the providers' own
//! configuration (`backend::provider::config`). The `routing:` section is routing's
//! own (`route::config`).

use std::collections::BTreeSet;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::backend::provider::config::{
    BreakerConfig, ModelKind, ProviderConfig, ProviderKind, ProviderModel,
    DEFAULT_ANTHROPIC_MAX_TOKENS, DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS,
    DEFAULT_BREAKER_CONSECUTIVE_FAILURES, DEFAULT_BREAKER_ERROR_RATE, DEFAULT_BREAKER_MIN_REQUESTS,
    DEFAULT_BREAKER_OPEN_MS, DEFAULT_BREAKER_WINDOW, DEFAULT_PROVIDER_MAX_CONCURRENCY,
    DEFAULT_PROVIDER_RETRIES, DEFAULT_PROVIDER_TIMEOUT_MS,
};
use crate::cost::ModelPrice;

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviderModel {
    /// The name clients use (and the upstream's, unless `upstream` says otherwise).
    pub name: String,
    pub upstream: Option<String>,
    /// `chat` (the default) or `embedding` (served on `/v1/embeddings` only).
    #[serde(default, skip_serializing_if = "ModelKind::is_chat")]
    pub kind: ModelKind,
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_per_million: Option<Decimal>,
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_per_million: Option<Decimal>,
    /// Where the provider discounts prompt tokens served from its cache.
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub cached_input_per_million: Option<Decimal>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
                    if model.kind == ModelKind::Embedding && provider.kind != ProviderKind::Openai {
                        return Err((
                            key(&format!("models[{m}].kind")),
                            "only OpenAI-compatible providers serve embeddings".into(),
                        ));
                    }
                    Ok(ProviderModel {
                        name: model.name.clone(),
                        upstream: model.upstream.clone().unwrap_or_else(|| model.name.clone()),
                        kind: model.kind,
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
