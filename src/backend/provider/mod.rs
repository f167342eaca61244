//! External providers: one `Provider` per configured upstream, speaking its API's
//! dialect (OpenAI-compatible or Anthropic) behind the common `Backend` trait. Every
//! call has a deadline, retries only what may pass, and goes through the provider's
//! circuit breaker and concurrency limit. Upstream answers are always streamed, so
//! streaming clients get them as they come and everyone else gets the same text.

mod anthropic;
pub mod assemble;
pub mod breaker;
pub mod config;
mod dialect;
mod openai;
pub mod retry;
pub mod sse;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::breaker::{BreakerState, CircuitBreaker};
use self::dialect::{error_message, Dialect, StreamDecoder};
use self::retry::{parse_retry_after, status_is_retryable, Backoff, RetryDecision};
use self::sse::SseDecoder;
use super::{Backend, BackendError, BackendStatus, EventStream};
use crate::chat::{
    ChatRequest, Confidence, EmbeddingInput, GenerationEvent, GenerationSummary, StreamEvent,
    Timings,
};
use config::{ProviderConfig, ProviderKind};

/// Connecting never takes longer than this, whatever the response deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Provider {
    config: ProviderConfig,
    /// Parsed once: reqwest would otherwise parse the URL text on every request.
    endpoint: reqwest::Url,
    /// `/embeddings` beside it, for an OpenAI-compatible provider.
    embeddings_endpoint: Option<reqwest::Url>,
    api_key: Option<String>,
    http: reqwest::Client,
    dialect: Box<dyn Dialect>,
    breaker: Arc<CircuitBreaker>,
    slots: Arc<Semaphore>,
}

/// A failed attempt, before deciding whether to try again.
struct Failure {
    status: Option<u16>,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Provider {
    pub fn new(config: ProviderConfig, api_key: Option<String>) -> Result<Self, BackendError> {
        let unavailable =
            |e: &dyn std::fmt::Display| BackendError::Unavailable(format!("{}: {e}", config.name));
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(CONNECT_TIMEOUT))
            // An API answers where it was asked; a redirect is reported, not followed
            // with the key to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| unavailable(&e))?;
        let dialect: Box<dyn Dialect> = match config.kind {
            ProviderKind::Openai => Box::new(openai::OpenAi),
            ProviderKind::Anthropic => Box::new(anthropic::Anthropic),
        };
        let endpoint = reqwest::Url::parse(&format!("{}{}", config.base_url, dialect.path()))
            .map_err(|e| unavailable(&e))?;
        let embeddings_endpoint = match config.kind {
            ProviderKind::Openai => Some(
                reqwest::Url::parse(&format!("{}/embeddings", config.base_url))
                    .map_err(|e| unavailable(&e))?,
            ),
            ProviderKind::Anthropic => None,
        };
        Ok(Self {
            endpoint,
            embeddings_endpoint,
            breaker: Arc::new(CircuitBreaker::new(config.breaker.clone())),
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            api_key,
            http,
            dialect,
            config,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Whether its API takes `response_format` and so can promise a JSON answer.
    pub fn constrains_json(&self) -> bool {
        self.dialect.constrains_json()
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn serves(&self, model: &str) -> bool {
        self.config.serves(model)
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.config.backoff_base,
            max: self.config.backoff_max,
        }
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        body: &(impl serde::Serialize + Sync),
    ) -> Result<reqwest::Response, Failure> {
        let mut builder = self.http.post(url.clone()).json(body);
        for (name, value) in self.dialect.headers(self.api_key.as_deref()) {
            builder = builder.header(name, value);
        }
        let deadline = self.config.timeout;
        let response = match tokio::time::timeout(deadline, builder.send()).await {
            Err(_) => {
                return Err(Failure::transient(format!(
                    "no response within {deadline:?}"
                )))
            }
            Ok(Err(error)) => return Err(Failure::transient(format!("request failed: {error}"))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = parse_retry_after(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
        );
        let text = tokio::time::timeout(deadline, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err(Failure {
            status: Some(status.as_u16()),
            message: format!("HTTP {}: {}", status.as_u16(), error_message(&text)),
            retryable: status_is_retryable(status.as_u16()),
            retry_after,
        })
    }

    /// Posts `body` to `url` until it is answered 2xx, retrying what may pass, through
    /// the concurrency limit and the circuit breaker. The slot and the breaker's permit
    /// stay with the answer: whoever reads it says how it ended.
    async fn call(
        &self,
        url: &reqwest::Url,
        body: &(impl serde::Serialize + Sync),
    ) -> Result<Called, BackendError> {
        let started = Instant::now();
        let provider = self.config.name.clone();
        let mut attempt = 0;
        loop {
            // A full provider is a reason to fail over, not to wait: the chain's next
            // target may answer now. The slot first, so a half-open breaker's probe is
            // never spent on a call that is not made.
            let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
                BackendError::ProviderSaturated {
                    provider: provider.clone(),
                    slots: self.config.max_concurrency,
                }
            })?;
            let permit =
                self.breaker
                    .try_acquire()
                    .map_err(|rejected| BackendError::CircuitOpen {
                        provider: provider.clone(),
                        retry_in: rejected.retry_in,
                    })?;
            let queue_ms = ms_since(started);
            match self.send(url, body).await {
                Ok(response) => {
                    return Ok(Called {
                        response,
                        permit,
                        slot,
                        started,
                        queue_ms,
                    })
                }
                Err(failure) => {
                    drop(slot);
                    if failure.counts_against_provider() {
                        permit.failure();
                    }
                    let attempts_left = attempt < self.config.retries;
                    match self.backoff().decide(
                        attempt,
                        attempts_left,
                        failure.retryable,
                        failure.retry_after,
                    ) {
                        RetryDecision::RetryAfter(wait) => {
                            tracing::warn!(%provider, attempt, ?wait, error = %failure.message, "retrying");
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        RetryDecision::GiveUp => {
                            return Err(BackendError::Upstream {
                                provider,
                                status: failure.status,
                                message: failure.message,
                                retryable: failure.retryable,
                                retry_after: failure.retry_after,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Vectors for `inputs` from the embedding model `model`, with the client's
    /// `options` (`encoding_format`, `dimensions`, `user`) passed on as sent.
    pub async fn embed(
        &self,
        model: &str,
        inputs: &[EmbeddingInput],
        options: &serde_json::Map<String, Value>,
    ) -> Result<Embeddings, BackendError> {
        let provider = self.config.name.clone();
        let url = self.embeddings_endpoint.as_ref().ok_or_else(|| {
            BackendError::Generation(format!("{provider} does not serve embeddings"))
        })?;
        // Borrowed, not copied: a request may carry thousands of inputs, and each
        // retry sends them again.
        let body = EmbeddingsBody {
            model: self.upstream_model(model)?,
            input: inputs,
            options,
        };
        let called = self.call(url, &body).await?;
        let limit = inputs
            .len()
            .saturating_mul(EMBEDDING_ANSWER_BYTES_PER_INPUT)
            .saturating_add(EMBEDDING_ANSWER_BYTES_PER_INPUT);
        let mut response = called.response;
        let read = tokio::time::timeout(self.config.timeout, async {
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > limit {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Some(body))
        })
        .await;
        let answer = match read {
            Ok(Ok(Some(bytes))) => serde_json::from_slice::<EmbeddingsAnswer>(&bytes)
                .map_err(|error| format!("the answer is not a list of embeddings: {error}"))
                .and_then(|answer| match answer.data.len() {
                    count if count == inputs.len() => Ok(answer),
                    count => Err(format!(
                        "the answer holds {count} vectors for {} inputs",
                        inputs.len()
                    )),
                }),
            Ok(Ok(None)) => Err(format!(
                "the answer is over {limit} bytes for {} inputs",
                inputs.len()
            )),
            Ok(Err(error)) => Err(format!("reading the answer: {error}")),
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
        };
        drop(called.slot);
        match answer {
            Ok(answer) => {
                called.permit.success();
                Ok(Embeddings {
                    data: answer.data,
                    prompt_tokens: answer.usage.map_or(0, |usage| usage.prompt_tokens),
                    queue_ms: called.queue_ms,
                    latency_ms: ms_since(called.started),
                })
            }
            Err(message) => {
                called.permit.failure();
                Err(BackendError::Upstream {
                    provider,
                    status: None,
                    message,
                    retryable: true,
                    retry_after: None,
                })
            }
        }
    }

    fn upstream_model(&self, model: &str) -> Result<&str, BackendError> {
        self.config
            .models
            .iter()
            .find(|m| m.name == model)
            .map(|m| m.upstream.as_str())
            .ok_or_else(|| {
                BackendError::Generation(format!("{} does not serve `{model}`", self.config.name))
            })
    }
}

impl Failure {
    fn transient(message: String) -> Self {
        Self {
            status: None,
            message,
            retryable: true,
            retry_after: None,
        }
    }

    /// A provider that answers 4xx (bar 429 and friends) is up; the request was wrong.
    fn counts_against_provider(&self) -> bool {
        self.retryable
    }
}

#[async_trait::async_trait]
impl Backend for Provider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn models(&self) -> Vec<String> {
        self.config.models.iter().map(|m| m.name.clone()).collect()
    }

    fn status(&self) -> BackendStatus {
        match self.breaker.state() {
            BreakerState::Open => {
                BackendStatus::Failed("circuit open after repeated failures".into())
            }
            BreakerState::Closed | BreakerState::HalfOpen => BackendStatus::Ready,
        }
    }

    /// A provider does not queue: a full one refuses at once (`ProviderSaturated`).
    async fn generate(
        &self,
        request: ChatRequest,
        _ranks_at: Instant,
    ) -> Result<EventStream, BackendError> {
        let upstream_model = self.upstream_model(&request.model)?;
        let body = self
            .dialect
            .body(&request, upstream_model, self.config.default_max_tokens);
        let called = self.call(&self.endpoint, &body).await?;
        let stream = Streaming {
            provider: self.config.name.clone(),
            model: request.model.clone(),
            decoder: self.dialect.decoder(&request),
            idle_timeout: self.config.timeout,
            started: called.started,
            queue_ms: called.queue_ms,
        };
        Ok(stream.read(called.response, called.permit, called.slot))
    }
}

/// A request the provider answered 2xx, with what it holds until the answer is read.
struct Called {
    response: reqwest::Response,
    permit: breaker::Permit,
    slot: OwnedSemaphorePermit,
    started: Instant,
    queue_ms: f64,
}

/// How much of an embeddings answer is read per input before it is refused: a vector
/// of 4,096 floats written as JSON takes about 90 KB, so this leaves room for the
/// largest models while a runaway answer cannot fill the memory.
const EMBEDDING_ANSWER_BYTES_PER_INPUT: usize = 256 * 1024;

/// An embedding model's answer: the vectors as the provider wrote them (floats or
/// base64, as asked), and what it counted.
pub struct Embeddings {
    pub data: Vec<Value>,
    pub prompt_tokens: u32,
    pub queue_ms: f64,
    pub latency_ms: f64,
}

#[derive(serde::Serialize)]
struct EmbeddingsBody<'a> {
    model: &'a str,
    input: &'a [EmbeddingInput],
    #[serde(flatten)]
    options: &'a serde_json::Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct EmbeddingsAnswer {
    data: Vec<Value>,
    usage: Option<EmbeddingsUsage>,
}

#[derive(serde::Deserialize)]
struct EmbeddingsUsage {
    prompt_tokens: u32,
}

/// One upstream answer, read as the caller polls for it: no task of its own and no
/// channel between, so each chunk costs no thread wake-up. The circuit breaker hears how
/// the answer ended; a caller that drops the stream closes the upstream connection with
/// it and says nothing about the provider.
struct Streaming {
    provider: String,
    model: String,
    decoder: Box<dyn StreamDecoder>,
    idle_timeout: Duration,
    started: Instant,
    queue_ms: f64,
}

impl Streaming {
    fn read(
        self,
        response: reqwest::Response,
        permit: breaker::Permit,
        slot: OwnedSemaphorePermit,
    ) -> EventStream {
        let reading = Reading {
            body: Box::pin(response.bytes_stream()),
            sse: SseDecoder::default(),
            ready: VecDeque::new(),
            first_token_ms: None,
            logprobs: Vec::new(),
            summary: None,
            breaker: Some(permit),
            _slot: slot,
            answer: self,
        };
        Box::pin(stream::unfold(reading, |mut reading| async move {
            let event = reading.next_event().await?;
            Some((event, reading))
        }))
    }
}

type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct Reading {
    answer: Streaming,
    body: BodyStream,
    sse: SseDecoder,
    /// Content decoded from the last chunk, not yet taken.
    ready: VecDeque<GenerationEvent>,
    first_token_ms: Option<f64>,
    logprobs: Vec<f32>,
    /// Set once the upstream said the answer is complete.
    summary: Option<GenerationSummary>,
    /// Until the end is reported: `None` once the stream has ended.
    breaker: Option<breaker::Permit>,
    _slot: OwnedSemaphorePermit,
}

impl Reading {
    async fn next_event(&mut self) -> Option<Result<GenerationEvent, BackendError>> {
        loop {
            if let Some(content) = self.ready.pop_front() {
                return Some(Ok(content));
            }
            self.breaker.as_ref()?;
            let ended = match self.summary.take() {
                Some(summary) => Ok(summary),
                None => match self.read_chunk().await {
                    Ok(()) => continue,
                    Err(message) => Err(message),
                },
            };
            let breaker = self.breaker.take()?;
            return Some(match ended {
                Ok(summary) => {
                    breaker.success();
                    Ok(StreamEvent::Finished(Box::new(summary)))
                }
                Err(message) => {
                    breaker.failure();
                    Err(BackendError::Upstream {
                        provider: self.answer.provider.clone(),
                        status: None,
                        message,
                        retryable: true,
                        retry_after: None,
                    })
                }
            });
        }
    }

    /// Reads the next chunk of the body into `ready`, and `summary` once it completes
    /// the answer.
    async fn read_chunk(&mut self) -> Result<(), String> {
        let idle_timeout = self.answer.idle_timeout;
        let (events, body_ended) = match tokio::time::timeout(idle_timeout, self.body.next()).await
        {
            Err(_) => return Err(format!("the stream stalled for {idle_timeout:?}")),
            Ok(Some(Err(error))) => return Err(format!("the stream broke: {error}")),
            Ok(Some(Ok(bytes))) => (self.sse.push(&bytes)?, false),
            Ok(None) => (self.sse.finish().into_iter().collect::<Vec<_>>(), true),
        };
        for event in &events {
            if let Some(delta) = self.answer.decoder.event(event)? {
                let started = self.answer.started;
                self.first_token_ms.get_or_insert_with(|| ms_since(started));
                self.logprobs
                    .extend(delta.logprobs.iter().map(|l| l.logprob));
                self.ready.push_back(StreamEvent::Content {
                    text: delta.text,
                    logprobs: delta.logprobs,
                });
            }
        }
        if self.answer.decoder.complete() {
            self.summary = Some(self.summarise());
        } else if body_ended {
            return Err("the stream ended before the answer did".into());
        }
        Ok(())
    }

    fn summarise(&mut self) -> GenerationSummary {
        let answer = &mut self.answer;
        let ending = answer.decoder.ending();
        let total_ms = ms_since(answer.started);
        let first = self.first_token_ms.unwrap_or(total_ms);
        GenerationSummary {
            backend: answer.provider.clone(),
            model: answer.model.clone(),
            finish_reason: ending.finish_reason,
            tool_calls: ending.tool_calls,
            malformed_tool_calls: ending.malformed_tool_calls,
            usage: ending.usage,
            confidence: Confidence::from_logprobs(std::mem::take(&mut self.logprobs)),
            timings: Timings {
                queue_ms: answer.queue_ms,
                prefill_ms: first - answer.queue_ms,
                decode_ms: total_ms - first,
                first_token_ms: first,
            },
        }
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
