//! The one path every answer takes from its backend to the client, whichever backend
//! it comes from and however it was chosen: text through the output guard as it
//! streams; at each choice's end the tool-call gate; once every choice has ended,
//! warden's report, built here and nowhere else, then the audit record, written before
//! the last event goes out. The governor's permit travels with the answer: its end, or
//! a client that stops reading, gives the slots back.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use prometheus::IntCounterVec;
use tracing::Instrument;

use super::history::RouteHistory;
use super::record::PendingRecord;
use super::report::WardenReport;
use super::screen::Screen;
use super::{Choices, Completed, RequestContext, ResponseEvent, ResponseGuards, Started};
use crate::backend::BackendError;
use crate::chat::{FinishReason, GenerationEvent, GenerationSummary, StreamEvent, Usage};
use crate::error::{panic_message, GatewayError};
use crate::governor::Permit;
use crate::route::Reason;

/// An answer chosen by routing, ready to be sent through the pipeline.
pub(super) struct Answer {
    /// The model that answers, as the response names it.
    pub model: String,
    /// How it was routed, as far as known before the first byte (`x-warden-route`).
    pub route: String,
    pub events: Choices,
    pub context: RequestContext,
    pub history: RouteHistory,
    pub guards: ResponseGuards,
}

/// What the report is made of, kept until the generation ends.
struct ReportParts {
    context: RequestContext,
    history: RouteHistory,
    permit: Permit,
}

/// One choice's next backend event, with the choice's index.
type ChoiceEvent = (u32, Result<GenerationEvent, BackendError>);

struct Pipeline {
    /// Every choice's events, as each comes.
    backend: SelectAll<BoxStream<'static, ChoiceEvent>>,
    screen: Screen,
    /// Each choice's end after the gate, once it has ended.
    ends: Vec<Option<GenerationSummary>>,
    parts: Option<ReportParts>,
    /// `None` once the response has ended and its record is written.
    record: Option<PendingRecord>,
    routes: IntCounterVec,
    ready: VecDeque<Result<ResponseEvent, GatewayError>>,
}

/// Sends `answer` through the pipeline; `record` is the request's audit record, and
/// `routes` counts completed responses by route.
pub(super) fn run(answer: Answer, record: PendingRecord, routes: IntCounterVec) -> Started {
    let Answer {
        model,
        route,
        events,
        context,
        history,
        guards: ResponseGuards { screen, permit },
    } = answer;
    let ends = events.iter().map(|_| None).collect();
    let backend = stream::select_all(
        events
            .into_iter()
            .zip(0u32..)
            .map(|(events, choice)| events.map(move |event| (choice, event)).boxed()),
    );
    let pipeline = Pipeline {
        backend,
        screen,
        ends,
        parts: Some(ReportParts {
            context,
            history,
            permit,
        }),
        record: Some(record),
        routes,
        ready: VecDeque::new(),
    };
    let events = stream::unfold(pipeline, |mut pipeline| async move {
        loop {
            if let Some(event) = pipeline.ready.pop_front() {
                return Some((event, pipeline));
            }
            pipeline.record.as_ref()?;
            // A panic while producing the answer (there should be none) ends it with an
            // error the client sees and the record keeps, not as a dropped connection
            // taken for the client's own.
            let step = AssertUnwindSafe(pipeline.step()).catch_unwind().await;
            if let Err(panic) = step {
                if let Some(record) = pipeline.record.as_ref() {
                    record.count_panic();
                }
                let error = GatewayError::Panicked(panic_message(panic.as_ref()));
                pipeline.fail(error).await;
            }
        }
    });
    Started {
        model,
        route,
        events: Box::pin(events),
    }
}

impl Pipeline {
    /// Takes the backends' next event as far as it goes.
    async fn step(&mut self) {
        match self.backend.next().await {
            Some((choice, Ok(StreamEvent::Content { text, logprobs }))) => {
                if let Some(released) = self.screen.pass(choice, text, logprobs) {
                    self.send(released);
                }
            }
            Some((choice, Ok(StreamEvent::Finished(summary)))) => {
                let span = tracing::info_span!(
                    "policy",
                    choice,
                    tool_calls = summary.tool_calls.len() + summary.malformed_tool_calls.len(),
                );
                match self.screen.finish(choice, *summary).instrument(span).await {
                    Ok((last_text, screened)) => {
                        if let Some(text) = last_text {
                            self.send(text);
                        }
                        if let Some(end) = self.ends.get_mut(choice as usize) {
                            *end = Some(screened);
                        }
                        if self.ends.iter().all(Option::is_some) {
                            self.complete().await;
                        }
                    }
                    Err(error) => self.fail(error).await,
                }
            }
            Some((_, Err(error))) => self.fail(error.into()).await,
            // A choice ended without a summary: held text is never released unchecked.
            None => {
                let error = GatewayError::Internal("the response ended without completing".into());
                self.fail(error).await;
            }
        }
    }

    fn send(&mut self, content: ResponseEvent) {
        if let (ResponseEvent::Content { choice, text, .. }, Some(record)) =
            (&content, self.record.as_mut())
        {
            record.saw_content(*choice, text);
            self.ready.push_back(Ok(content));
        }
    }

    /// Builds the report once every choice is screened, then writes the record; the
    /// completion goes out only once the record is durable.
    async fn complete(&mut self) {
        let (Some(parts), Some(mut record)) = (self.parts.take(), self.record.take()) else {
            return;
        };
        let choices: Vec<GenerationSummary> = self.ends.drain(..).flatten().collect();
        let Some(summary) = GenerationSummary::of_choices(&choices) else {
            self.record = Some(record);
            let error = GatewayError::Internal("the response had no choices".into());
            return self.fail(error).await;
        };
        let policy = self.screen.take_report();
        let ReportParts {
            context,
            mut history,
            permit,
        } = parts;
        if summary.finish_reason == FinishReason::Deadline {
            history.reason(Reason::GenerationDeadline);
        }
        let usage: Usage = summary.usage;
        let mut report = WardenReport::new(
            &context,
            &summary,
            history,
            permit.priority(),
            permit.waited(),
        );
        report.policy = Some(policy);
        report.run = record.settle_run(report.cost_usd);
        // Every attempt's tokens and cost count, not only the served one's.
        let tokens = report
            .attempts
            .iter()
            .map(|attempt| u64::from(attempt.usage.total_tokens()))
            .sum();
        permit.charge(tokens, report.cost_usd);
        drop(permit);
        self.routes
            .with_label_values(&[report.route.as_str()])
            .inc();
        let completed = Completed {
            choices,
            usage,
            report,
        };
        let answer = record.complete(completed).await;
        self.ready.push_back(answer);
    }

    /// Ends the response with `error`, recorded.
    async fn fail(&mut self, error: GatewayError) {
        if let Some(mut record) = self.record.take() {
            let error = record.fail(error).await;
            self.ready.push_back(Err(error));
        }
    }
}
