//! What the gateway writes down about each request, at both ends: the run budget at
//! admission; at completion the run's cost, the audit record (written, and fsynced,
//! before the answer's last event is released, with every tool call the gate decided)
//! and the request metrics. A request that ends any other way (refused, failed,
//! abandoned by its client) is recorded too.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tracing::Instrument;

use serde::Serialize;
use serde_json::Value;

use super::screen::RunCheck;
use super::{Completed, Recorded, RequestContext, ResponseEvent, Unanswered};
use crate::audit::record::{BusinessOutcome, OUTCOME_KIND};
use crate::audit::record::{RecordedError, RecordedToolCall, TextDigest, TextHasher, Tokens};
use crate::audit::{AuditLog, Receipt, RequestRecord, RequestStatus};
use crate::chat::ChatRequest;
use crate::error::GatewayError;
use crate::metrics::{RequestMetrics, PANIC_IN_RESPONSE};
use crate::policy::report::{CallOutcome, DecisionRecord};
use crate::runs::{RunTicket, RunTracker, RunUsage};

/// The route label of a request that was never routed.
pub(super) const UNROUTED: &str = "none";

/// Where every request's record goes: the audit log, its run and the request metrics.
pub struct Recorder {
    audit: AuditLog,
    runs: Arc<RunTracker>,
    metrics: RequestMetrics,
    store_text: bool,
}

impl Recorder {
    pub fn new(
        audit: AuditLog,
        runs: Arc<RunTracker>,
        metrics: RequestMetrics,
        store_text: bool,
    ) -> Self {
        Self {
            audit,
            runs,
            metrics,
            store_text,
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn runs(&self) -> &RunTracker {
        &self.runs
    }

    /// Starts the record of a request that has reached the gateway.
    pub fn open(
        self: &Arc<Self>,
        context: &RequestContext,
        request: &ChatRequest,
    ) -> PendingRecord {
        PendingRecord {
            recorder: self.clone(),
            request_id: context.request_id.clone(),
            agent: context.principal.agent_id.clone(),
            tenant: context.principal.tenant.clone(),
            run_id: context.metadata.run_id.clone(),
            ticket: None,
            received: context.received,
            received_at: Utc::now()
                - chrono::Duration::from_std(context.received.elapsed()).unwrap_or_default(),
            model_requested: request.model.clone(),
            offers_tools: !request.callable_tools().is_empty(),
            prompt: TextDigest::of_prompt(request, self.store_text),
            completions: (0..request.choices.max(1))
                .map(|_| TextHasher::new(self.store_text))
                .collect(),
            first_content: None,
            span: tracing::Span::current(),
            open: true,
        }
    }

    /// Records a request refused before it could be read as one (its body unreadable,
    /// not JSON, or invalid): who sent it, the digest of what they sent, and why
    /// (`kind`, a stable code). Returns once it is durable; a record that cannot be
    /// written is logged, the refusal stands either way.
    pub async fn record_unread(
        &self,
        context: &RequestContext,
        body: &[u8],
        kind: &str,
        message: &str,
    ) {
        let elapsed = context.received.elapsed();
        let record: RequestRecord = RequestRecord {
            request_id: context.request_id.clone(),
            agent: context.principal.agent_id.clone(),
            tenant: context.principal.tenant.clone(),
            run_id: None,
            status: RequestStatus::Refused,
            error: Some(RecordedError {
                kind: kind.to_string(),
                message: message.to_string(),
            }),
            received_at: Utc::now() - chrono::Duration::from_std(elapsed).unwrap_or_default(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            model_requested: String::new(),
            prompt: TextDigest::of_bytes(body),
            completion: None,
            later_choices: Vec::new(),
            usage: None,
            tool_calls: Vec::new(),
            attempts: Vec::new(),
            report: None,
        };
        let written = match record.entry() {
            Ok(entry) => self.audit.append(entry).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::error!(%error, "could not record a refused request");
        }
        self.metrics
            .requests
            .with_label_values(&[UNROUTED, RequestStatus::Refused.as_str()])
            .inc();
    }

    /// Records a business outcome for a run; returns once it is durable.
    pub async fn record_outcome(&self, outcome: &BusinessOutcome) -> Result<Receipt, GatewayError> {
        Ok(self.audit.append_event(OUTCOME_KIND, outcome).await?)
    }
}

/// One request's record in the making.
pub struct PendingRecord {
    recorder: Arc<Recorder>,
    request_id: String,
    agent: String,
    tenant: String,
    run_id: Option<String>,
    ticket: Option<RunTicket>,
    received: Instant,
    received_at: DateTime<Utc>,
    model_requested: String,
    offers_tools: bool,
    prompt: TextDigest,
    /// What each choice has sent the client so far.
    completions: Vec<TextHasher>,
    first_content: Option<Instant>,
    /// The request's span (see `api::chat`): its end is written into it.
    span: tracing::Span,
    /// Until a record is queued; dropping an open one records a cancellation.
    open: bool,
}

impl PendingRecord {
    /// Admits the request into its run, if it names one; returns what the tool-call
    /// gate counts the answer's calls against.
    pub(super) fn admit(&mut self) -> Result<Option<RunCheck>, GatewayError> {
        let Some(run_id) = &self.run_id else {
            return Ok(None);
        };
        let ticket =
            self.recorder
                .runs
                .admit(&self.agent, &self.tenant, run_id, self.offers_tools)?;
        self.ticket = Some(ticket.clone());
        Ok(Some(RunCheck {
            runs: self.recorder.runs.clone(),
            ticket,
        }))
    }

    /// Records a request that ended before its answer started (turned away, or every
    /// backend that could serve it failed), with the attempts it made; returns the
    /// error.
    pub(crate) async fn refuse(mut self, unanswered: Unanswered) -> GatewayError {
        let Unanswered { error, attempts } = unanswered;
        if let Some(ticket) = &self.ticket {
            self.recorder.runs.release(ticket);
        }
        self.span.record("attempts", attempts.len());
        let mut record = self.record(status_before_answer(&error), Some(recorded(&error)));
        record.attempts = attempts.iter().filter_map(as_written).collect();
        self.write_end(&record).await;
        error
    }

    /// Counts a panic caught while producing the answer.
    pub(super) fn count_panic(&self) {
        self.recorder.metrics.count_panic(PANIC_IN_RESPONSE);
    }

    /// Settles the run the request is a step of, if it names one, with its cost.
    pub(super) fn settle_run(&mut self, cost: Option<Decimal>) -> Option<RunUsage> {
        let ticket = self.ticket.as_ref()?;
        Some(self.recorder.runs.settle(ticket, cost))
    }

    pub(super) fn saw_content(&mut self, choice: u32, text: &str) {
        if self.first_content.is_none() && !text.is_empty() {
            self.first_content = Some(Instant::now());
        }
        if let Some(completion) = self.completions.get_mut(choice as usize) {
            completion.push(text);
        }
    }

    /// Writes the record of an answered request; the completion is released only once
    /// the record is durable.
    pub(super) async fn complete(
        &mut self,
        completed: Completed,
    ) -> Result<ResponseEvent, GatewayError> {
        let tool_calls = completed
            .report
            .policy
            .iter()
            .flat_map(|policy| &policy.decisions)
            .map(recorded_call)
            .collect();
        let usage = completed.usage;
        let report_json = match serde_json::value::to_raw_value(&completed.report) {
            Ok(json) => json,
            Err(error) => {
                let error = GatewayError::Internal(format!("the report: {error}"));
                return Err(self.fail(error).await);
            }
        };
        let mut record = self.record(RequestStatus::Completed, None);
        record.usage = Some(Tokens {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        });
        record.tool_calls = tool_calls;
        record.report = Some(&*report_json);
        self.write(&record).await?;
        let Completed {
            choices,
            usage,
            report,
        } = completed;
        self.span.record("priority", report.priority.as_str());
        self.span.record("backend", report.backend.as_str());
        self.span.record("attempts", report.attempts.len());
        let metrics = &self.recorder.metrics;
        self.observe(RequestStatus::Completed, report.route.as_str());
        metrics
            .tokens
            .with_label_values(&[report.model.as_str(), "prompt"])
            .inc_by(u64::from(usage.prompt_tokens));
        metrics
            .tokens
            .with_label_values(&[report.model.as_str(), "completion"])
            .inc_by(u64::from(usage.completion_tokens));
        for attempt in &report.attempts {
            if let Some(cost) = attempt.cost_usd {
                metrics
                    .cost_usd
                    .with_label_values(&[attempt.model.as_str()])
                    .inc_by(cost.to_f64().unwrap_or(0.0));
            }
        }
        Ok(ResponseEvent::Finished(Box::new(Recorded {
            choices,
            usage,
            report,
            report_json,
        })))
    }

    /// Records a generation that broke off; returns its error.
    pub(super) async fn fail(&mut self, error: GatewayError) -> GatewayError {
        self.record_end(RequestStatus::Failed, &error).await;
        error
    }

    async fn record_end(&mut self, status: RequestStatus, error: &GatewayError) {
        let record = self.record(status, Some(recorded(error)));
        self.write_end(&record).await;
    }

    /// Writes the record of a request that ended without an answer.
    async fn write_end(&mut self, record: &RequestRecord) {
        let status = record.status;
        if let Err(audit) = self.write(record).await {
            tracing::error!(error = %audit, "could not record a {} request", status.as_str());
        }
        self.observe(status, UNROUTED);
    }

    async fn write<R: Serialize>(
        &mut self,
        record: &RequestRecord<R>,
    ) -> Result<Receipt, GatewayError> {
        self.open = false;
        let entry = record.entry()?;
        let commit = tracing::info_span!("audit_commit", status = record.status.as_str());
        Ok(self.recorder.audit.append(entry).instrument(commit).await?)
    }

    fn record<R>(
        &mut self,
        status: RequestStatus,
        error: Option<RecordedError>,
    ) -> RequestRecord<R> {
        let mut completions = std::mem::take(&mut self.completions)
            .into_iter()
            .map(TextHasher::finish);
        let answered = status != RequestStatus::Refused;
        let completion = completions.next().filter(|_| answered);
        let later_choices = completions.filter(|_| answered).collect();
        RequestRecord {
            request_id: self.request_id.clone(),
            agent: self.agent.clone(),
            tenant: self.tenant.clone(),
            run_id: self.run_id.clone(),
            status,
            error,
            received_at: self.received_at,
            latency_ms: self.received.elapsed().as_secs_f64() * 1000.0,
            model_requested: self.model_requested.clone(),
            prompt: self.prompt.clone(),
            completion,
            later_choices,
            usage: None,
            tool_calls: Vec::new(),
            attempts: Vec::new(),
            report: None,
        }
    }

    fn observe(&self, status: RequestStatus, route: &str) {
        self.span.record("status", status.as_str());
        self.span.record("route", route);
        let metrics = &self.recorder.metrics;
        metrics
            .requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        metrics
            .duration
            .with_label_values(&[route])
            .observe(self.received.elapsed().as_secs_f64());
        if let Some(first) = self.first_content {
            metrics
                .time_to_first_token
                .with_label_values(&[route])
                .observe(first.duration_since(self.received).as_secs_f64());
        }
    }
}

impl Drop for PendingRecord {
    /// A response dropped before its end: its client left. Nothing can wait here, so the
    /// record is queued without waiting for it.
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let _inside = self.span.clone().entered();
        let reason = RecordedError {
            kind: "client_disconnected".into(),
            message: "the client disconnected before the end".into(),
        };
        let record: RequestRecord = self.record(RequestStatus::Cancelled, Some(reason));
        match record.entry() {
            Ok(entry) => self.recorder.audit.append_detached(entry),
            Err(error) => tracing::error!(%error, "could not record a cancelled request"),
        }
        self.observe(RequestStatus::Cancelled, UNROUTED);
    }
}

fn status_before_answer(error: &GatewayError) -> RequestStatus {
    match error {
        GatewayError::Auth(_)
        | GatewayError::InvalidRequest { .. }
        | GatewayError::ModelNotFound(_)
        | GatewayError::ContextLengthExceeded { .. }
        | GatewayError::Unavailable { .. }
        | GatewayError::RunBudgetExceeded(_)
        | GatewayError::Governor(_)
        | GatewayError::Approval(_)
        | GatewayError::PolicyInvalid(_)
        | GatewayError::UnknownKillScope(_) => RequestStatus::Refused,
        GatewayError::Upstream { .. }
        | GatewayError::Internal(_)
        | GatewayError::Panicked(_)
        | GatewayError::GenerationDeadline { .. }
        | GatewayError::Audit(_) => RequestStatus::Failed,
    }
}

/// `value` as the response writes it, read back: `to_value` would widen f32 figures
/// (confidence) to f64 digits the response never showed.
fn as_written(value: &impl Serialize) -> Option<Value> {
    serde_json::to_string(value)
        .and_then(|text| serde_json::from_str(&text))
        .ok()
}

fn recorded(error: &GatewayError) -> RecordedError {
    RecordedError {
        kind: error.class().code.to_string(),
        message: error.to_string(),
    }
}

/// A decision of the tool-call gate as the audit record lists it.
fn recorded_call(decision: &DecisionRecord) -> RecordedToolCall {
    RecordedToolCall {
        id: decision.call_id.clone(),
        name: decision.name.clone(),
        sha256: decision.call_hash.clone(),
        returned: matches!(
            decision.outcome,
            CallOutcome::Delivered | CallOutcome::Released
        ),
        decision: decision.verdict.as_str().to_string(),
        reason: decision.code.as_str().to_string(),
        choice: decision.choice,
    }
}
