//! Embeddings (`/v1/embeddings`), governed, priced and recorded like a chat: the same
//! admission (kill switches, rate limits, spend caps, run budgets), a permit for the
//! backend, failover along the providers that serve the model, and the answer's
//! account through the same pipeline, so its report, cost and audit record are written
//! by the code that writes every other. The local model answers when the request names
//! it and it serves embeddings (`local.embedding_pooling`); providers' embedding models
//! answer the rest.

use futures::stream;
use serde_json::{Map, Value};

use super::history::RouteHistory;
use super::pipeline::{self, Answer};
use super::screen::{RunCheck, Screen};
use super::{provider_answer, Gateway, RequestContext, ResponseGuards, Started, Unanswered};
use crate::backend::EventStream;
use crate::chat::{
    ChatRequest, EmbeddingInput, FinishReason, GenerationSummary, StreamEvent, Timings, Usage,
};
use crate::error::GatewayError;
use crate::route::{Reason, Route};

/// What an embeddings request asks, as both ways of answering it read it.
#[derive(Clone, Copy)]
struct Asked<'a> {
    request: &'a ChatRequest,
    inputs: &'a [EmbeddingInput],
    options: &'a Map<String, Value>,
}

/// The vectors of an embeddings answer.
pub enum Vectors {
    /// A provider's items as it wrote them (floats or base64, as asked).
    AsWritten(Vec<Value>),
    /// The local model's, one per input.
    Computed(Vec<Vec<f32>>),
}

impl Gateway {
    /// Embeds `inputs` with the embedding model `request.model` names. `request`
    /// carries the inputs' texts as messages for the record's digest and the policy's
    /// screen; `options` go to a provider as sent. Returns the response (its one event
    /// is the recorded account) and the vectors.
    pub async fn embed(
        &self,
        context: RequestContext,
        request: ChatRequest,
        inputs: Vec<EmbeddingInput>,
        options: Map<String, Value>,
    ) -> Result<(Started, Vectors), GatewayError> {
        let mut pending = self.recorder.open(&context, &request);
        let run = match pending.admit() {
            Ok(run) => run,
            Err(error) => return Err(pending.refuse(error.into()).await),
        };
        let asked = Asked {
            request: &request,
            inputs: &inputs,
            options: &options,
        };
        let answered = if self.local.models().contains(&request.model) {
            self.embed_locally(context, asked, run).await
        } else {
            self.embed_with_providers(context, asked, run).await
        };
        match answered {
            Ok((answer, vectors)) => {
                let started = pipeline::run(answer, pending, self.metrics.routes.clone());
                Ok((started, vectors))
            }
            Err(unanswered) => Err(pending.refuse(unanswered).await),
        }
    }

    async fn embed_locally(
        &self,
        context: RequestContext,
        asked: Asked<'_>,
        run: Option<RunCheck>,
    ) -> Result<(Answer, Vectors), Unanswered> {
        let Asked {
            request,
            inputs,
            options,
        } = asked;
        if !self.local.serves_embeddings() {
            return Err(GatewayError::invalid(
                "model",
                format!(
                    "`{}` is the local chat model; it serves embeddings only when \
                     `local.embedding_pooling` is set",
                    request.model
                ),
            )
            .into());
        }
        let mut history = RouteHistory::new(self.routing.current(), Route::Local);
        history.reason(Reason::NamedModel);
        let screen = self.screen(request, &context, run);
        let permit = self.admit(&context, self.local.name()).await?;
        let dimensions = options
            .get("dimensions")
            .and_then(Value::as_u64)
            .map(|asked| u32::try_from(asked).unwrap_or(u32::MAX));
        let embedded = self
            .local
            .embed(inputs, dimensions, permit.ranks_at().into_std())
            .await?;
        let account = account(
            self.local.name(),
            self.local_model(),
            embedded.prompt_tokens,
            embedded.queue_ms,
            embedded.latency_ms,
        );
        let guards = ResponseGuards { screen, permit };
        let answer = self.local_answer(vec![account], None, context, history, guards);
        Ok((answer, Vectors::Computed(embedded.vectors)))
    }

    async fn embed_with_providers(
        &self,
        context: RequestContext,
        asked: Asked<'_>,
        run: Option<RunCheck>,
    ) -> Result<(Answer, Vectors), Unanswered> {
        let table = self.routing.current();
        let request = asked.request;
        let targets = table.embedding_targets(&request.model);
        if targets.is_empty() {
            return Err(GatewayError::ModelNotFound(request.model.clone()).into());
        }
        let mut history = RouteHistory::new(table.clone(), Route::External);
        history.reason(Reason::NamedModel);
        let screen = self.screen(request, &context, run);
        let mut permit = self.admit_external(&context, &targets).await?;
        let tried = self
            .try_providers(&targets, &mut history, &mut permit, |target| {
                let provider = target.provider.clone();
                let model = target.model.clone();
                async move { provider.embed(&model, asked.inputs, asked.options).await }
            })
            .await;
        let (target, embeddings) = match tried {
            Ok(found) => found,
            Err(error) => {
                return Err(Unanswered {
                    error,
                    attempts: history.attempts,
                })
            }
        };
        let account = account(
            &target.provider.config().name,
            target.model.clone(),
            embeddings.prompt_tokens,
            embeddings.queue_ms,
            embeddings.latency_ms,
        );
        let guards = ResponseGuards { screen, permit };
        let answer = provider_answer(target, vec![account], context, history, guards);
        Ok((answer, Vectors::AsWritten(embeddings.data)))
    }

    fn screen(
        &self,
        request: &ChatRequest,
        context: &RequestContext,
        run: Option<RunCheck>,
    ) -> Screen {
        Screen::new(
            self.policy.clone(),
            self.policy.current(),
            request,
            context,
            run,
        )
    }
}

/// The account of an embeddings call, as a generation that wrote nothing: the pipeline
/// prices its tokens, reports and records it like any other answer.
fn account(
    backend: &str,
    model: String,
    prompt_tokens: u32,
    queue_ms: f64,
    latency_ms: f64,
) -> EventStream {
    let summary = GenerationSummary {
        backend: backend.to_string(),
        model,
        finish_reason: FinishReason::Stop,
        tool_calls: Vec::new(),
        malformed_tool_calls: Vec::new(),
        usage: Usage {
            prompt_tokens,
            ..Usage::default()
        },
        confidence: None,
        timings: Timings {
            queue_ms,
            prefill_ms: latency_ms - queue_ms,
            ..Timings::default()
        },
    };
    Box::pin(stream::iter([Ok(StreamEvent::Finished(Box::new(summary)))]))
}
