//! The path of one request through warden, independent of HTTP: decide where it runs
//! (local first, external when the risk, the context or the model asks for it), check
//! a local answer before it is shown and escalate it when it falls short, fail over
//! along the provider chain, and end every response with warden's report of all that.
//!
//! Every request holds one governor permit from before its first attempt until its
//! response stream ends or is dropped. The permit is admitted for the backend the
//! request starts on and moves with each later attempt, so the governor's per-backend
//! count is always where the work is. The governor limits the local engine (its
//! `slots`): local generations wait in its priority queue, and a generation that must
//! then wait for room in the engine's key/value cache keeps the place the governor
//! gave it ([`Permit::ranks_at`]), so both waits run in one order. A provider's `max_concurrency` is enforced by the provider's own semaphore
//! alone: a saturated provider is a failover signal for the chain, and queueing for it
//! in the governor as well would make a request wait twice.

mod embed;
pub use embed::Vectors;
mod history;
pub mod operator;
mod pipeline;
mod record;
mod report;
mod screen;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, FutureExt, Stream, StreamExt, TryStreamExt};
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::audit::record::{BusinessOutcome, RequestStatus};
use crate::audit::{AuditLog, Receipt};
use crate::auth::Principal;
use crate::backend::provider::breaker::BreakerState;
use crate::backend::{Backend, BackendError, BackendStatus, EventStream};
use crate::chat::{
    ChatRequest, Confidence, GenerationEvent, GenerationSummary, StreamEvent, TokenLogprob, Usage,
};
use crate::error::{panic_message, GatewayError};
use crate::governor::{Admission, Governor, Permit, Priority, QueueFallback};
use crate::metrics::{Metrics, PANIC_IN_HANDLER};
use crate::policy::PolicyEngine;
use crate::route::plan::{self, Steps};
use crate::route::{
    assess_risk, check_local_answer, Reason, Route, RoutingState, RoutingTable, Target, SHORTFALLS,
};
use crate::runs::RunTracker;
use history::RouteHistory;
use pipeline::Answer;
use screen::{RunCheck, Screen};

pub use history::{Attempt, AttemptOutcome};
pub use record::Recorder;
pub use report::{ReportTimings, WardenReport};

pub use crate::route::plan::AUTO_MODEL;

pub struct Gateway {
    local: Arc<dyn Backend>,
    routing: Arc<RoutingState>,
    metrics: Arc<Metrics>,
    governor: Governor,
    policy: Arc<PolicyEngine>,
    recorder: Arc<Recorder>,
}

/// One request as it travels: who sent it, when, under which id, and what the client
/// said about it beyond the chat itself.
pub struct RequestContext {
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub metadata: RequestMetadata,
    pub received: Instant,
}

/// What a client attaches to a request for warden's sake (headers or `metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMetadata {
    /// The priority class asked for; the governor applies the agent's default and
    /// ceiling.
    pub priority: Option<Priority>,
    /// The agent run this request is a step of.
    pub run_id: Option<String>,
    /// Every other entry: labels that policies and routing match on (`env: prod`).
    pub labels: BTreeMap<String, String>,
}

impl RequestContext {
    pub fn new(principal: Arc<Principal>, metadata: RequestMetadata) -> Self {
        Self {
            request_id: crate::chat::random_uuid().simple().to_string(),
            principal,
            metadata,
            received: Instant::now(),
        }
    }
}

/// What the client receives: each choice's text as it is released, then the recorded
/// completion.
#[derive(Debug, Clone)]
pub enum ResponseEvent {
    Content {
        /// Which of the answers the client asked for (`n`) this text belongs to.
        choice: u32,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished(Box<Recorded>),
}

/// The end of an answer, before its record is written: how each choice finished and
/// warden's account of them all.
#[derive(Debug, Clone)]
pub struct Completed {
    /// Each choice's end after the tool-call gate, in index order.
    pub choices: Vec<GenerationSummary>,
    /// Every choice's tokens together.
    pub usage: Usage,
    pub report: WardenReport,
}

/// A completion whose audit record is written: what the client is sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Each choice's end after the tool-call gate, in index order: one unless the
    /// client asked for several (`n`).
    pub choices: Vec<GenerationSummary>,
    /// Every choice's tokens together.
    pub usage: Usage,
    pub report: WardenReport,
    /// `report` serialised once, for the record and the response alike: both carry the
    /// same bytes.
    pub report_json: Box<RawValue>,
}

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<ResponseEvent, GatewayError>> + Send>>;

/// A response under way, as the client receives it.
pub struct Started {
    /// The model that answers, as the response names it.
    pub model: String,
    /// How it is being routed, as far as known before the first byte (`x-warden-route`).
    pub route: String,
    pub events: ResponseStream,
}

/// A whole, non-streamed response: each choice's text, then the record of them all.
#[derive(Debug, Clone)]
pub struct Response {
    /// In choice order, as many as `finished.choices`.
    pub texts: Vec<ChoiceText>,
    pub finished: Recorded,
}

/// The text one choice released to the client, with its tokens' log-probabilities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceText {
    pub content: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// One backend stream per choice, in index order.
pub(crate) type Choices = Vec<EventStream>;

/// One entry of the model list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub local: BackendStatus,
}

impl Gateway {
    pub fn new(
        local: Arc<dyn Backend>,
        routing: Arc<RoutingState>,
        metrics: Arc<Metrics>,
        policy: Arc<PolicyEngine>,
        recorder: Recorder,
        governor: Governor,
    ) -> Self {
        present_at_zero(&metrics, &routing.current());
        Self {
            local,
            routing,
            metrics,
            governor,
            policy,
            recorder: Arc::new(recorder),
        }
    }

    pub fn audit(&self) -> &AuditLog {
        self.recorder.audit()
    }

    pub fn runs(&self) -> &RunTracker {
        self.recorder.runs()
    }

    /// Attaches a business outcome to a run; returns once it is recorded.
    pub async fn record_outcome(&self, outcome: &BusinessOutcome) -> Result<Receipt, GatewayError> {
        self.recorder.record_outcome(outcome).await
    }

    /// Records a request refused before the gateway could take it (see
    /// `Recorder::record_unread`).
    pub async fn record_unread(
        &self,
        context: &RequestContext,
        body: &[u8],
        kind: &str,
        message: &str,
    ) {
        self.recorder
            .record_unread(context, body, kind, message)
            .await;
    }

    pub fn routing(&self) -> &Arc<RoutingState> {
        &self.routing
    }

    pub fn models(&self) -> Vec<ModelEntry> {
        let local = std::iter::once(AUTO_MODEL.to_string())
            .chain(self.local.models())
            .map(|id| ModelEntry {
                id,
                owned_by: "warden".into(),
            });
        let table = self.routing.current();
        let external = table.models().into_iter().map(|id| ModelEntry {
            owned_by: table
                .targets_for(&id)
                .first()
                .map_or_else(String::new, |target| target.provider.config().name.clone()),
            id,
        });
        local.chain(external).collect()
    }

    pub fn readiness(&self) -> Readiness {
        let local = self.local.status();
        Readiness {
            ready: local == BackendStatus::Ready,
            local,
        }
    }

    /// Starts answering `request`. `stream` says whether the client reads the answer as
    /// it comes, which decides whether a checked local answer can be streamed live.
    /// Whatever becomes of the request is recorded in the audit log, and a completion is
    /// released only once its record is durable.
    pub async fn start(
        &self,
        context: RequestContext,
        request: ChatRequest,
        stream: bool,
    ) -> Result<Started, GatewayError> {
        let mut pending = self.recorder.open(&context, &request);
        let run = match pending.admit() {
            Ok(run) => run,
            Err(error) => return Err(pending.refuse(error.into()).await),
        };
        // A panic on the way to an answer (there should be none) is still a request
        // that ended: answered 500 and recorded as such.
        let routed = AssertUnwindSafe(self.route(context, request, stream, run))
            .catch_unwind()
            .await;
        match routed {
            Ok(Ok(answer)) => Ok(pipeline::run(answer, pending, self.metrics.routes.clone())),
            Ok(Err(unanswered)) => Err(pending.refuse(unanswered).await),
            Err(panic) => {
                self.metrics.requests.count_panic(PANIC_IN_HANDLER);
                let error = GatewayError::Panicked(panic_message(panic.as_ref()));
                Err(pending.refuse(error.into()).await)
            }
        }
    }

    async fn route(
        &self,
        context: RequestContext,
        request: ChatRequest,
        stream: bool,
        run: Option<RunCheck>,
    ) -> Result<Answer, Unanswered> {
        let table = self.routing.current();
        // The policy is fixed for the whole request: its risk signals route it, and
        // whichever answer is finally chosen passes the same snapshot.
        let policy = self.policy.current();
        let mut history = RouteHistory::new(table.clone(), Route::Local);
        history.risk = assess_risk(&request, &context.metadata.labels, &table.routing, &policy);
        let screen = Screen::new(self.policy.clone(), policy, &request, &context, run);
        let asked = plan::Request {
            model: &request.model,
            stream,
            agent: &context.principal.agent_id,
            wants_json: request.wants_json(),
            raw_prompt: request.raw_prompt,
        };
        let planned = plan::plan(asked, &table, &self.local.models(), &history.risk)
            .map_err(GatewayError::from)?;
        history.route = planned.route;
        for reason in planned.reasons {
            history.reason(reason);
        }
        let (chain, verify, thresholds) = match planned.steps {
            Steps::Local => {
                let permit = self.admit(&context, self.local.name()).await?;
                let choices = self.generate_locally(request, &permit).await?;
                let guards = ResponseGuards { screen, permit };
                return Ok(self.local_answer(choices, None, context, history, guards));
            }
            Steps::External { targets } => {
                let permit = self.admit_external(&context, &targets).await?;
                let guards = ResponseGuards { screen, permit };
                return self
                    .start_external(context, request, stream, targets, history, guards)
                    .await;
            }
            Steps::LocalFirst {
                escalation,
                verify,
                thresholds,
            } => (escalation, verify, thresholds),
        };

        let permit = self.admit_local_first(&context, &table, &chain).await?;
        if permit.moved() {
            history.route = Route::External;
            history.reason(Reason::LocalSaturated);
            let guards = ResponseGuards { screen, permit };
            return self
                .start_external(context, request, stream, chain, history, guards)
                .await;
        }
        let mut guards = ResponseGuards { screen, permit };
        let started = Instant::now();
        let local_choices = match self.generate_locally(request.clone(), &guards.permit).await {
            Ok(choices) => choices,
            Err(error) => {
                if !self.hand_over_from_local(&error, started, &chain, &mut history) {
                    return Err(error.into());
                }
                return self
                    .start_external(context, request, stream, chain, history, guards)
                    .await;
            }
        };
        if !verify {
            return Ok(self.local_answer(local_choices, None, context, history, guards));
        }

        // Verify before anything is shown: the client sees either this answer or the
        // one that replaces it, never both. Every choice is checked; one that falls
        // short sends them all on, since a response's choices come from one model.
        let local = match collect_choices(local_choices).await {
            Ok(local) => local,
            Err(error) => {
                if !self.hand_over_from_local(&error, started, &chain, &mut history) {
                    return Err(error.into());
                }
                return self
                    .start_external(context, request, stream, chain, history, guards)
                    .await;
            }
        };
        let mut shortfalls = Vec::new();
        for choice in &local {
            for shortfall in
                check_local_answer(&choice.summary, request.callable_tools(), &thresholds)
            {
                if !shortfalls.contains(&shortfall) {
                    shortfalls.push(shortfall);
                }
            }
        }
        let Some(local_summary) = GenerationSummary::of_choices(local.iter().map(|c| &c.summary))
        else {
            return Err(GatewayError::Internal("the local model drew no choices".into()).into());
        };
        let confidence = local_summary.confidence;
        if shortfalls.is_empty() {
            return Ok(self.local_answer(replay(local), confidence, context, history, guards));
        }
        for shortfall in &shortfalls {
            self.metrics
                .escalations
                .with_label_values(&[shortfall.as_str()])
                .inc();
        }
        history.reasons.extend(shortfalls);
        history.answered(&local_summary, AttemptOutcome::Rejected);
        history.route = Route::Escalated;
        match self
            .try_chain(&request, stream, &chain, &mut history, &mut guards.permit)
            .await
        {
            Ok((target, events)) => Ok(provider_answer(target, events, context, history, guards)),
            Err(_) => {
                // The local answer was already paid for and the risk allowed it: better a
                // flagged local answer than none.
                let rejected = history
                    .attempts
                    .iter()
                    .position(|a| a.outcome == AttemptOutcome::Rejected);
                if let Some(index) = rejected {
                    history.attempts.remove(index);
                }
                history.route = Route::FallbackLocal;
                history.reason(Reason::FallbackLocal);
                Ok(self.local_answer(replay(local), confidence, context, history, guards))
            }
        }
    }

    /// Records a local failure the escalation chain can take the request over from,
    /// and says whether it can: `false` (nothing recorded) when the chain is empty or
    /// the failure is one a provider would meet too.
    fn hand_over_from_local(
        &self,
        error: &BackendError,
        started: Instant,
        chain: &[Target],
        history: &mut RouteHistory,
    ) -> bool {
        let reason = match error {
            BackendError::ContextLengthExceeded { .. } => Reason::ContextOverflow,
            BackendError::Saturated { .. } => Reason::LocalSaturated,
            BackendError::Loading | BackendError::Unavailable(_) => Reason::LocalUnavailable,
            // Stopped before it answered anything: a provider may still answer in time.
            BackendError::DeadlineExceeded { .. } => Reason::GenerationDeadline,
            BackendError::Grammar(_) => Reason::StructuredOutput,
            _ => return false,
        };
        if chain.is_empty() {
            return false;
        }
        history.failed(
            self.local.name(),
            &self.local_model(),
            error,
            ms_since(started),
        );
        history.route = Route::External;
        history.reason(reason);
        true
    }

    async fn start_external(
        &self,
        context: RequestContext,
        request: ChatRequest,
        stream: bool,
        targets: Vec<Target>,
        mut history: RouteHistory,
        mut guards: ResponseGuards,
    ) -> Result<Answer, Unanswered> {
        if targets.is_empty() {
            return Err(no_provider().into());
        }
        let (target, events) = match self
            .try_chain(&request, stream, &targets, &mut history, &mut guards.permit)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                return Err(Unanswered {
                    error,
                    attempts: history.attempts,
                })
            }
        };
        Ok(provider_answer(target, events, context, history, guards))
    }

    /// The local model's answer, for the pipeline; `confidence` once it was checked
    /// before any of it was shown (it goes into `x-warden-route`).
    fn local_answer(
        &self,
        events: Choices,
        confidence: Option<Confidence>,
        context: RequestContext,
        history: RouteHistory,
        guards: ResponseGuards,
    ) -> Answer {
        let route = history.header(self.local.name(), &self.local_model(), confidence);
        Answer {
            model: self.local_model(),
            route,
            events,
            context,
            history,
            guards,
        }
    }

    /// A permit for a request that goes straight to `targets`, admitted for the first.
    async fn admit_external(
        &self,
        context: &RequestContext,
        targets: &[Target],
    ) -> Result<Permit, GatewayError> {
        let first = targets.first().ok_or_else(no_provider)?;
        self.admit(context, &first.provider.config().name).await
    }

    /// Takes a governor permit for a request that starts on `backend`, waiting in the
    /// priority queue if need be.
    async fn admit(&self, context: &RequestContext, backend: &str) -> Result<Permit, GatewayError> {
        let admitted = self.governor.admit(admission(context, backend));
        Ok(admitted.instrument(queue_wait(backend)).await?)
    }

    /// A permit for the local engine; or, for a request the queue holds past
    /// `local_queue_fallback_ms` while the first escalation target's circuit is closed,
    /// a permit for that target ([`Permit::moved`]): better a paid answer now than a
    /// free one after the agent has given up.
    async fn admit_local_first(
        &self,
        context: &RequestContext,
        table: &RoutingTable,
        chain: &[Target],
    ) -> Result<Permit, GatewayError> {
        let local = admission(context, self.local.name());
        let fallback = table.routing.local_queue_fallback().zip(chain.first());
        match fallback {
            Some((after, target)) if target.provider.breaker_state() == BreakerState::Closed => {
                let fallback = QueueFallback {
                    after,
                    backend: &target.provider.config().name,
                };
                let admitted = self.governor.admit_or_move(local, fallback);
                Ok(admitted.instrument(queue_wait(self.local.name())).await?)
            }
            _ => Ok(self
                .governor
                .admit(local)
                .instrument(queue_wait(self.local.name()))
                .await?),
        }
    }

    /// Tries each target in order until one answers. A streaming client gets the first
    /// provider that starts answering; everyone else gets the first whole answer, so a
    /// provider that breaks mid-answer is failed over too.
    async fn try_chain(
        &self,
        request: &ChatRequest,
        stream: bool,
        targets: &[Target],
        history: &mut RouteHistory,
        permit: &mut Permit,
    ) -> Result<(Target, Choices), GatewayError> {
        let ranks_at = permit.ranks_at().into_std();
        self.try_providers(targets, history, permit, |target| {
            let mut attempt = request.clone();
            attempt.model = target.model.clone();
            let provider = target.provider.clone();
            async move {
                // A provider is asked once per choice: not every provider takes `n`, and
                // each call's usage is then what that provider bills for it.
                let choices = start_choices(attempt, move |one| {
                    let provider = provider.clone();
                    async move { provider.generate(one, ranks_at).await }
                })
                .await?;
                if stream {
                    Ok(choices)
                } else {
                    collect_choices(choices).await.map(replay)
                }
            }
        })
        .await
    }

    /// Tries `call` on each of `targets` in order, moving `permit` to each provider,
    /// until one answers; every failure is on `history`. When all fail, the error says
    /// whether coming back later can help.
    async fn try_providers<T, F, Fut>(
        &self,
        targets: &[Target],
        history: &mut RouteHistory,
        permit: &mut Permit,
        mut call: F,
    ) -> Result<(Target, T), GatewayError>
    where
        F: FnMut(&Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let mut retry_after = None;
        let mut only_refusals = true;
        for target in targets {
            let started = Instant::now();
            let provider_name = target.provider.config().name.clone();
            permit.move_to(&provider_name)?;
            let span = tracing::info_span!(
                "provider_attempt",
                provider = %provider_name,
                model = %target.model,
                failed = tracing::field::Empty,
            );
            let outcome = call(target).instrument(span.clone()).await;
            if let Err(error) = &outcome {
                span.record("failed", tracing::field::display(error));
            }
            match outcome {
                Ok(answer) => {
                    if history.attempts.iter().any(|a| {
                        a.outcome == AttemptOutcome::Failed || a.outcome == AttemptOutcome::Skipped
                    }) {
                        history.reason(Reason::ProviderFailover);
                    }
                    return Ok((target.clone(), answer));
                }
                Err(error) => {
                    tracing::warn!(provider = %provider_name, %error, "provider failed");
                    if matches!(error, BackendError::ProviderSaturated { .. }) {
                        history.reason(Reason::ProviderSaturated);
                        self.metrics
                            .providers_saturated
                            .with_label_values(&[provider_name.as_str()])
                            .inc();
                    }
                    only_refusals &= matches!(
                        error,
                        BackendError::Upstream {
                            retryable: false,
                            ..
                        }
                    );
                    if let BackendError::Upstream {
                        retry_after: Some(wait),
                        ..
                    }
                    | BackendError::CircuitOpen { retry_in: wait, .. } = &error
                    {
                        retry_after =
                            Some(retry_after.map_or(*wait, |known: Duration| known.min(*wait)));
                    }
                    history.failed(&provider_name, &target.model, &error, ms_since(started));
                }
            }
        }
        let failures: Vec<String> = history
            .attempts
            .iter()
            .filter_map(|a| {
                a.error
                    .as_ref()
                    .map(|e| format!("{} ({}): {e}", a.backend, a.model))
            })
            .collect();
        let message = format!(
            "every provider that could serve this request failed: {}",
            failures.join("; ")
        );
        // Providers that are up but refuse the request will refuse it again: no point
        // in telling the client to come back later.
        if only_refusals {
            return Err(GatewayError::Upstream {
                message,
                retry_after: None,
                retryable: false,
            });
        }
        Err(GatewayError::Unavailable {
            message,
            retry_after: Some(
                retry_after
                    .unwrap_or(ALL_DOWN_RETRY_AFTER)
                    .max(Duration::from_secs(1)),
            ),
        })
    }

    /// Starts every choice of a local generation (see [`start_choices`]); the engine
    /// batches them together.
    async fn generate_locally(
        &self,
        request: ChatRequest,
        permit: &Permit,
    ) -> Result<Choices, BackendError> {
        let (local, model) = (self.local.clone(), self.local_model());
        let ranks_at = permit.ranks_at().into_std();
        start_choices(request, move |one| {
            generate_traced(local.clone(), model.clone(), one, ranks_at)
        })
        .await
    }

    fn local_model(&self) -> String {
        self.local.models().into_iter().next().unwrap_or_default()
    }
}

/// Starts one local generation inside a span that lasts while its events are read:
/// `local_prefill` until the first token, `local_decode` from there to the end, and the
/// engine's own timings on `local_generation` once it finishes.
async fn generate_traced(
    local: Arc<dyn Backend>,
    model: String,
    request: ChatRequest,
    ranks_at: Instant,
) -> Result<EventStream, BackendError> {
    let span = tracing::info_span!(
        "local_generation",
        model = %model,
        queue_ms = tracing::field::Empty,
        prefill_ms = tracing::field::Empty,
        decode_ms = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    );
    // The phase under way; a span ends when it is dropped.
    let mut phase = Some(tracing::info_span!(parent: &span, "local_prefill"));
    let mut decoding = false;
    let events = local
        .generate(request, ranks_at)
        .instrument(span.clone())
        .await?;
    Ok(Box::pin(events.inspect(move |event| match event {
        Ok(StreamEvent::Content { .. }) if !decoding => {
            decoding = true;
            // Prefill ends before decode starts.
            drop(phase.take());
            phase = Some(tracing::info_span!(parent: &span, "local_decode"));
        }
        Ok(StreamEvent::Finished(summary)) => {
            drop(phase.take());
            let timings = &summary.timings;
            span.record("queue_ms", timings.queue_ms);
            span.record("prefill_ms", timings.prefill_ms);
            span.record("decode_ms", timings.decode_ms);
            span.record("completion_tokens", summary.usage.completion_tokens);
        }
        _ => {}
    })))
}

/// Starts every choice of `request` (OpenAI's `n`) with `start`, each with its own
/// seed ([`ChatRequest::choice`]). The first starts before this returns, so a failure
/// known up front (a context overflow, a provider's refusal) fails the attempt as a
/// whole; the others start when the response is first read, so choices beyond the
/// engine's free slots wait for a slot without holding back the ones already running.
async fn start_choices<F, Fut>(request: ChatRequest, start: F) -> Result<Choices, BackendError>
where
    F: Fn(ChatRequest) -> Fut,
    Fut: std::future::Future<Output = Result<EventStream, BackendError>> + Send + 'static,
{
    let later: Vec<Fut> = (1..request.choices)
        .map(|index| start(request.choice(index)))
        .collect();
    let mut first = request;
    first.choices = 1;
    let mut choices: Choices = vec![start(first).await?];
    choices.extend(
        later
            .into_iter()
            .map(|started| Box::pin(stream::once(started).try_flatten()) as EventStream),
    );
    Ok(choices)
}

/// Why a request got no answer, and the attempts made on the way to that (the audit
/// record keeps them: failed attempts take time and may cost money).
pub(crate) struct Unanswered {
    error: GatewayError,
    attempts: Vec<Attempt>,
}

impl From<GatewayError> for Unanswered {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            attempts: Vec::new(),
        }
    }
}

impl From<BackendError> for Unanswered {
    fn from(error: BackendError) -> Self {
        GatewayError::from(error).into()
    }
}

/// What travels with a request to its answer: the policy screen the answer passes and
/// the governor permit the request holds until the answer ends.
struct ResponseGuards {
    screen: Screen,
    permit: Permit,
}

/// A provider's answer, for the pipeline.
fn provider_answer(
    target: Target,
    events: Choices,
    context: RequestContext,
    history: RouteHistory,
    guards: ResponseGuards,
) -> Answer {
    let route = history.header(target.provider.config().name.as_str(), &target.model, None);
    Answer {
        model: target.model,
        route,
        events,
        context,
        history,
        guards,
    }
}

/// The span of a wait in the governor's queue for `backend`.
/// Creates at zero every series a dashboard alerts on whose labels are known at start,
/// so an alert on an increase has a series to watch before the first event.
fn present_at_zero(metrics: &Metrics, table: &RoutingTable) {
    for route in Route::ALL {
        metrics.routes.with_label_values(&[route.as_str()]);
    }
    let routes = Route::ALL.map(Route::as_str);
    for route in routes.iter().chain([&record::UNROUTED]) {
        for status in RequestStatus::ALL {
            metrics
                .requests
                .requests
                .with_label_values(&[route, status.as_str()]);
        }
    }
    for reason in SHORTFALLS {
        metrics.escalations.with_label_values(&[reason.as_str()]);
    }
    for provider in &table.providers {
        metrics
            .providers_saturated
            .with_label_values(&[provider.name()]);
    }
}

fn queue_wait(backend: &str) -> tracing::Span {
    tracing::info_span!("queue_wait", backend)
}

/// What `context` asks of the governor to run on `backend`.
fn admission<'a>(context: &'a RequestContext, backend: &'a str) -> Admission<'a> {
    Admission {
        agent: &context.principal.agent_id,
        tenant: &context.principal.tenant,
        priority: context.metadata.priority,
        backend,
    }
}

fn no_provider() -> GatewayError {
    plan::PlanError::NoProvider.into()
}

/// When every provider failed and none said when to come back.
const ALL_DOWN_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A generation held back whole, to be checked before it is shown.
struct CollectedEvents {
    events: Vec<GenerationEvent>,
    summary: GenerationSummary,
}

impl CollectedEvents {
    /// The same events again, as the backend produced them.
    fn replay(self) -> EventStream {
        let finished = StreamEvent::Finished(Box::new(self.summary));
        let events = self
            .events
            .into_iter()
            .chain(std::iter::once(finished))
            .map(Ok);
        Box::pin(futures::stream::iter(events.collect::<Vec<_>>()))
    }
}

/// Every choice held back whole, in order.
async fn collect_choices(choices: Choices) -> Result<Vec<CollectedEvents>, BackendError> {
    futures::future::try_join_all(choices.into_iter().map(collect_events)).await
}

/// Choices held back, as the backend produced them.
fn replay(choices: Vec<CollectedEvents>) -> Choices {
    choices.into_iter().map(CollectedEvents::replay).collect()
}

async fn collect_events(mut events: EventStream) -> Result<CollectedEvents, BackendError> {
    let mut held = Vec::new();
    while let Some(event) = events.next().await {
        match event? {
            StreamEvent::Finished(summary) => {
                return Ok(CollectedEvents {
                    events: held,
                    summary: *summary,
                })
            }
            content => held.push(content),
        }
    }
    Err(BackendError::Generation(
        "the generation ended without a summary".into(),
    ))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Drains a response stream into a whole response.
pub async fn collect(mut events: ResponseStream) -> Result<Response, GatewayError> {
    let mut texts: Vec<ChoiceText> = Vec::new();
    while let Some(event) = events.next().await {
        match event? {
            ResponseEvent::Content {
                choice,
                text,
                logprobs,
            } => {
                let index = choice as usize;
                if texts.len() <= index {
                    texts.resize_with(index + 1, ChoiceText::default);
                }
                texts[index].content.push_str(&text);
                texts[index].logprobs.extend(logprobs);
            }
            ResponseEvent::Finished(finished) => {
                texts.resize_with(finished.choices.len(), ChoiceText::default);
                return Ok(Response {
                    texts,
                    finished: *finished,
                });
            }
        }
    }
    Err(GatewayError::Internal(
        "the response ended without completing".into(),
    ))
}
