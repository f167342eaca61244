//! Backends generate completions: the local candle engine and, later, external
//! providers. Every backend speaks the same trait so routing can treat them alike.

pub mod local;
pub mod provider;

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;

use crate::chat::{ChatRequest, EmbeddingInput, Generation, GenerationEvent};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<GenerationEvent, BackendError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the prompt is {prompt_tokens} tokens but the model's context holds {context_length}")]
    ContextLengthExceeded {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("{} {max_tokens} exceeds the model's context of {context_length} tokens", field.as_str())]
    MaxTokensExceeded {
        max_tokens: usize,
        context_length: usize,
        /// The request field that asked for it.
        field: crate::chat::MaxTokensField,
    },
    #[error("the generation ran past the server's deadline of {} ms (`local.max_generation_ms`) before it produced an answer", limit.as_millis())]
    DeadlineExceeded { limit: Duration },
    #[error("all {slots} engine slots stayed busy for {waited:?}")]
    Saturated { slots: usize, waited: Duration },
    /// A provider's `max_concurrency` calls are all in flight: the request goes on to
    /// the next provider at once rather than wait for this one.
    #[error("{provider}: all {slots} of its slots (`max_concurrency`) are busy")]
    ProviderSaturated { provider: String, slots: usize },
    #[error("{provider}: {message}")]
    Upstream {
        provider: String,
        status: Option<u16>,
        message: String,
        retryable: bool,
        retry_after: Option<Duration>,
    },
    #[error("{provider}: circuit open after repeated failures; next probe in {retry_in:?}")]
    CircuitOpen {
        provider: String,
        retry_in: Duration,
    },
    #[error("the model is still loading")]
    Loading,
    #[error("the model failed to load: {0}")]
    Unavailable(String),
    #[error("generation failed: {0}")]
    Generation(String),
    /// A request field the backend cannot take as written, found only once the
    /// backend read it (a token id outside the model's vocabulary).
    #[error("{message}")]
    InvalidInput { field: String, message: String },
    /// A schema the request holds the answer to that the local grammar engine cannot
    /// compile.
    #[error(transparent)]
    Grammar(#[from] local::GrammarError),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "error", rename_all = "snake_case")]
pub enum BackendStatus {
    Ready,
    Loading,
    Failed(String),
}

/// A model that can be asked for chat completions.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Stable name used in responses, logs and routing decisions.
    fn name(&self) -> &str;

    /// Names of the models this backend serves, as clients address them.
    fn models(&self) -> Vec<String>;

    /// Whether the backend can take requests now.
    fn status(&self) -> BackendStatus;

    /// The backend's own series for `/metrics`, if it keeps any.
    fn collector(&self) -> Option<Box<dyn prometheus::core::Collector>> {
        None
    }

    /// Starts a generation. Errors that can be known up front (context overflow,
    /// saturation) come from this call so the caller can answer with a proper status
    /// before any byte is streamed. A backend that queues requests serves them in the
    /// order of `ranks_at`, earliest first: the gateway passes the governor's order, so
    /// a request keeps the place its priority gave it.
    async fn generate(
        &self,
        request: ChatRequest,
        ranks_at: Instant,
    ) -> Result<EventStream, BackendError>;

    /// Whether `embed` answers: the backend serves its model as an embedding model too.
    fn serves_embeddings(&self) -> bool {
        false
    }

    /// One vector per input, in order, of `dimensions` values when the client asks
    /// for a size; waiting in the order of `ranks_at` as `generate` does.
    async fn embed(
        &self,
        _inputs: &[EmbeddingInput],
        _dimensions: Option<u32>,
        _ranks_at: Instant,
    ) -> Result<Embedded, BackendError> {
        Err(BackendError::Unavailable(format!(
            "{} serves no embeddings",
            self.name()
        )))
    }
}

/// A backend's vectors for an embeddings request, with what it counted.
#[derive(Debug)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
    pub queue_ms: f64,
    pub latency_ms: f64,
}

/// Drains a backend's events into a whole generation.
pub async fn collect(events: EventStream) -> Result<Generation, BackendError> {
    crate::chat::collect(events, || {
        BackendError::Generation("the generation ended without a summary".into())
    })
    .await
}
