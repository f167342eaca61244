//! A provider's validated configuration and its defaults: where it is, how long a call
//! may take, how often it is retried, when its circuit opens, which models it serves.
//! `config` reads the `providers:` section into it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible `/chat/completions` (OpenAI, vLLM, Ollama, llama.cpp...).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
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
    /// Whether it serves `model` for chat.
    pub fn serves(&self, model: &str) -> bool {
        self.serves_as(model, ModelKind::Chat)
    }

    /// Whether it serves `model` as `kind`.
    pub fn serves_as(&self, model: &str, kind: ModelKind) -> bool {
        self.models
            .iter()
            .any(|m| m.name == model && m.kind == kind)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderModel {
    pub name: String,
    pub upstream: String,
    pub kind: ModelKind,
}

/// What a provider's model is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Chat completions (and the Responses API, served as chat).
    #[default]
    Chat,
    /// `/v1/embeddings`: vectors for input texts.
    Embedding,
}

impl ModelKind {
    pub fn is_chat(&self) -> bool {
        *self == ModelKind::Chat
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub error_rate: f64,
    pub window: usize,
    pub min_requests: usize,
    pub open_for: Duration,
}
