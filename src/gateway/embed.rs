//! Embeddings (`/v1/embeddings`), governed, priced and recorded like a chat: the same
//! admission (kill switches, rate limits, spend caps, run budgets), a permit for the
//! provider, failover along the providers that serve the model, and the answer's
//! account through the same pipeline, so its report, cost and audit record are written
//! by the code that writes every other.

use futures::stream;
use serde_json::{Map, Value};

use super::history::RouteHistory;
use super::pipeline::{self, Answer};
use super::screen::{RunCheck, Screen};
use super::{provider_answer, Gateway, RequestContext, ResponseGuards, Started, Unanswered};
use crate::backend::EventStream;
use crate::chat::{ChatRequest, FinishReason, GenerationSummary, StreamEvent, Timings, Usage};
use crate::error::GatewayError;
use crate::route::{Reason, Route};

impl Gateway {
    /// Embeds `input` with the embedding model `request.model` names. `request`
    /// carries the input's texts as messages for the record's digest and the policy's
    /// screen; `options` go to the provider as sent. Returns the response (its one
    /// event is the recorded account) and the vectors.
    pub async fn embed(
        &self,
        context: RequestContext,
        request: ChatRequest,
        input: Value,
        options: Map<String, Value>,
    ) -> Result<(Started, Vec<Value>), GatewayError> {
        let mut pending = self.recorder.open(&context, &request);
        let run = match pending.admit() {
            Ok(run) => run,
            Err(error) => return Err(pending.refuse(error.into()).await),
        };
        match self
            .embed_with_providers(context, &request, &input, &options, run)
            .await
        {
            Ok((answer, data)) => {
                let started = pipeline::run(answer, pending, self.metrics.routes.clone());
                Ok((started, data))
            }
            Err(unanswered) => Err(pending.refuse(unanswered).await),
        }
    }

    async fn embed_with_providers(
        &self,
        context: RequestContext,
        request: &ChatRequest,
        input: &Value,
        options: &Map<String, Value>,
        run: Option<RunCheck>,
    ) -> Result<(Answer, Vec<Value>), Unanswered> {
        let table = self.routing.current();
        let targets = table.embedding_targets(&request.model);
        if targets.is_empty() {
            return Err(GatewayError::ModelNotFound(request.model.clone()).into());
        }
        let mut history = RouteHistory::new(table.clone(), Route::External);
        history.reason(Reason::NamedModel);
        let screen = Screen::new(
            self.policy.clone(),
            self.policy.current(),
            request,
            &context,
            run,
        );
        let mut permit = self.admit_external(&context, &targets).await?;
        let tried = self
            .try_providers(&targets, &mut history, &mut permit, |target| {
                let provider = target.provider.clone();
                let model = target.model.clone();
                async move { provider.embed(&model, input, options).await }
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
        // The account of the call, as a generation that wrote nothing: the pipeline
        // prices its tokens, reports and records it like any other answer.
        let summary = GenerationSummary {
            backend: target.provider.config().name.clone(),
            model: target.model.clone(),
            finish_reason: FinishReason::Stop,
            tool_calls: Vec::new(),
            malformed_tool_calls: Vec::new(),
            usage: Usage {
                prompt_tokens: embeddings.prompt_tokens,
                ..Usage::default()
            },
            confidence: None,
            timings: Timings {
                queue_ms: embeddings.queue_ms,
                prefill_ms: embeddings.latency_ms - embeddings.queue_ms,
                ..Timings::default()
            },
        };
        let events: EventStream =
            Box::pin(stream::iter([Ok(StreamEvent::Finished(Box::new(summary)))]));
        let guards = ResponseGuards { screen, permit };
        let answer = provider_answer(target, events, context, history, guards);
        Ok((answer, embeddings.data))
    }
}
