//! Policy on a response as it streams out of a backend (steps 8 and 9 of a request).
//! Text passes the output guard. Tool calls arrive whole in the backend's summary and
//! pass the tool-call gate there, before any of them is sent: every call any backend
//! proposed, well formed or not, gets one decision. Policy decides first (one canonical
//! form and hash, the schema the request declared, the rules); a call it lets through
//! then counts against its run (loops, the tool-call budget). Allowed calls go out
//! (with constraints applied), refused ones are removed and explained to the agent in
//! the content, approval-bound ones are held as tickets. Each decision is counted in
//! one metric and recorded once in the report, which the audit record's `tool_calls`
//! is drawn from.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use super::{RequestContext, ResponseEvent};
use crate::chat::{ChatRequest, FinishReason, GenerationSummary, TokenLogprob, ToolCall, ToolSpec};
use crate::error::GatewayError;
use crate::policy::approvals::{
    ApprovalError, ApprovalStore, Held, HeldCall, Ticket, TicketStatus,
};
use crate::policy::autonomy::AutonomyMode;
use crate::policy::decide::{CheckedCall, Decision, Policy, ReasonCode, Subject, Verdict};
use crate::policy::output::{Detector, GuardEnd, OutputAction, OutputGuard};
use crate::policy::report::{CallOutcome, DecisionRecord, OutputRecord, PolicyReport};
use crate::policy::PolicyEngine;
use crate::runs::{RunTicket, RunTracker, WithholdReason};

/// Whom the response is for, owned so the stream can outlive the request context.
struct Recipient {
    agent: String,
    tenant: String,
    role: Option<String>,
    labels: BTreeMap<String, String>,
    autonomy: AutonomyMode,
    request_id: String,
    run_id: Option<String>,
}

/// The run a response's calls count against, when its request names one.
pub(super) struct RunCheck {
    pub(super) runs: Arc<RunTracker>,
    pub(super) ticket: RunTicket,
}

/// Policy for one response, fixed when the request starts: a reload mid-generation
/// does not change the snapshot its decisions are stamped with. Each choice of the
/// response (`n`) has its text guarded and its calls gated on its own; the decisions
/// of all of them go into one report.
pub struct Screen {
    engine: Arc<PolicyEngine>,
    policy: Arc<Policy>,
    declared: Vec<ToolSpec>,
    recipient: Recipient,
    report: PolicyReport,
    choices: Vec<ChoiceGuard>,
    run: Option<RunCheck>,
}

/// The output guard of one choice.
struct ChoiceGuard {
    /// `None` once the choice has ended.
    guard: Option<OutputGuard>,
    /// Text already went out: notices then start a paragraph of their own.
    sent_text: bool,
}

impl Screen {
    /// `policy` is the snapshot the request runs under (from `engine.current()`).
    pub(super) fn new(
        engine: Arc<PolicyEngine>,
        policy: Arc<Policy>,
        request: &ChatRequest,
        context: &RequestContext,
        run: Option<RunCheck>,
    ) -> Self {
        let principal = &context.principal;
        let report = PolicyReport {
            snapshot: policy.snapshot().to_string(),
            autonomy: principal.autonomy,
            role: principal.role.clone(),
            labels: context.metadata.labels.clone(),
            ..PolicyReport::default()
        };
        let choices = (0..request.choices.max(1))
            .map(|_| ChoiceGuard {
                guard: Some(OutputGuard::new(
                    policy.output().scanner(&principal.agent_id),
                )),
                sent_text: false,
            })
            .collect();
        Self {
            choices,
            declared: request.callable_tools().to_vec(),
            recipient: Recipient {
                agent: principal.agent_id.clone(),
                tenant: principal.tenant.clone(),
                role: principal.role.clone(),
                labels: context.metadata.labels.clone(),
                autonomy: principal.autonomy,
                request_id: context.request_id.clone(),
                run_id: context.metadata.run_id.clone(),
            },
            engine,
            policy,
            report,
            run,
        }
    }

    /// Passes streamed text of `choice` through its output guard; returns what it
    /// releases now.
    pub(super) fn pass(
        &mut self,
        choice: u32,
        text: String,
        logprobs: Vec<TokenLogprob>,
    ) -> Option<ResponseEvent> {
        let screened = self.choices.get_mut(choice as usize)?;
        let release = screened.guard.as_mut()?.push(&text, logprobs);
        screened.sent_text |= !release.text.is_empty();
        (!release.text.is_empty() || !release.logprobs.is_empty()).then_some(
            ResponseEvent::Content {
                choice,
                text: release.text,
                logprobs: release.logprobs,
            },
        )
    }

    /// The end of `choice` through policy: the guard's last release with the notices
    /// of what was withheld (if any text), and the summary with only the calls let
    /// through.
    pub(super) async fn finish(
        &mut self,
        choice: u32,
        mut summary: GenerationSummary,
    ) -> Result<(Option<ResponseEvent>, GenerationSummary), GatewayError> {
        let screened = self.choices.get_mut(choice as usize);
        let sent_text = screened.as_ref().is_some_and(|screened| screened.sent_text);
        let end = match screened.and_then(|screened| screened.guard.take()) {
            Some(guard) => guard.finish(),
            None => GuardEnd::default(),
        };
        let mut text = end.release.text;
        let mut notices = Vec::new();
        for ((detector, action), count) in &end.findings {
            self.engine
                .counters()
                .findings
                .with_label_values(&[detector.as_str(), action_name(*action)])
                .inc_by(u64::from(*count));
            self.report.output.push(OutputRecord {
                detector: *detector,
                action: *action,
                count: *count,
            });
        }
        if let Some(content) = end.quarantined {
            let findings: Vec<(Detector, OutputAction)> = end.findings.keys().copied().collect();
            let ticket = self.open_ticket(
                Held::Output {
                    content,
                    findings: findings.clone(),
                },
                None,
                quarantine_reason(&findings),
            );
            let ticket = blocking(self.engine.approvals().clone(), move |store| {
                store.create(ticket)
            })
            .await?;
            notices.push(format!(
                "[warden] The rest of this response was withheld for review ({}). Ticket {id}; poll GET /v1/approvals/{id}.",
                ticket.reason,
                id = ticket.id
            ));
            self.report.tickets.push(ticket.id);
        }
        let subject = Subject {
            agent: &self.recipient.agent,
            tenant: &self.recipient.tenant,
            role: self.recipient.role.as_deref(),
            labels: &self.recipient.labels,
            autonomy: self.recipient.autonomy,
        };
        let checked: Vec<CheckedCall> = summary
            .tool_calls
            .iter()
            .map(|call| self.policy.check(call, Some(&self.declared), &subject))
            .chain(
                summary
                    .malformed_tool_calls
                    .iter()
                    .map(|call| self.policy.refuse_malformed(call)),
            )
            .collect();
        summary.tool_calls.clear();
        for checked in checked {
            if let Some(delivered) = self.decide(checked, choice).await? {
                summary.tool_calls.push(delivered);
            } else if let Some(record) = self.report.decisions.last() {
                notices.push(notice_for(record));
            }
        }
        // One rule for every backend: the answer ends in tool calls exactly when the
        // agent receives some.
        if !summary.tool_calls.is_empty() {
            summary.finish_reason = FinishReason::ToolCalls;
        } else if summary.finish_reason == FinishReason::ToolCalls {
            summary.finish_reason = FinishReason::Stop;
        }
        if !notices.is_empty() {
            if !text.is_empty() || sent_text {
                text.push_str("\n\n");
            }
            text.push_str(&notices.join("\n"));
        }
        let last_text = (!text.is_empty() || !end.release.logprobs.is_empty()).then_some(
            ResponseEvent::Content {
                choice,
                text,
                logprobs: end.release.logprobs,
            },
        );
        Ok((last_text, summary))
    }

    /// Every decision and finding over the response's choices, once they have all
    /// ended.
    pub(super) fn take_report(&mut self) -> PolicyReport {
        std::mem::take(&mut self.report)
    }

    /// Settles one call policy has checked (approvals, then the run's checks), counts
    /// and records the decision; returns the call to deliver, if any.
    async fn decide(
        &mut self,
        mut checked: CheckedCall,
        choice: u32,
    ) -> Result<Option<ToolCall>, GatewayError> {
        let snapshot = self.policy.snapshot().to_string();
        let (mut outcome, ticket, mut delivered) = match checked.decision.verdict {
            Verdict::Allow | Verdict::AllowWithConstraints => (CallOutcome::Delivered, None, true),
            Verdict::Deny => (CallOutcome::Refused, None, false),
            Verdict::RequireApproval => {
                let (agent, hash, request_id) = (
                    self.recipient.agent.clone(),
                    checked.hash.clone(),
                    self.recipient.request_id.clone(),
                );
                let redeemed = blocking(self.engine.approvals().clone(), move |store| {
                    store.redeem(&agent, &hash, &request_id, Utc::now())
                })
                .await?;
                match redeemed {
                    Some(ticket) => (CallOutcome::Released, Some(ticket.id), true),
                    None => {
                        let ticket = self.held_call(&checked);
                        let ticket = blocking(self.engine.approvals().clone(), move |store| {
                            store.create(ticket)
                        })
                        .await?;
                        self.report.tickets.push(ticket.id.clone());
                        (CallOutcome::Held, Some(ticket.id), false)
                    }
                }
            }
        };
        // The run counts only what would reach the agent: a refused or held call is
        // neither a loop nor a use of the budget.
        if delivered {
            if let Some(refusal) = self.run_refusal(&checked) {
                checked.decision = refusal;
                (outcome, delivered) = (CallOutcome::Refused, false);
            }
        }
        self.engine
            .counters()
            .decisions
            .with_label_values(&[
                checked.decision.verdict.as_str(),
                checked.decision.code.as_str(),
            ])
            .inc();
        self.report.decisions.push(DecisionRecord::new(
            &checked, &snapshot, outcome, ticket, choice,
        ));
        Ok(delivered.then(|| checked.to_tool_call()))
    }

    /// Counts a call about to be delivered against its run; the refusal when the run
    /// keeps it back.
    fn run_refusal(&self, checked: &CheckedCall) -> Option<Decision> {
        let run = self.run.as_ref()?;
        let withheld = run
            .runs
            .check_call(&run.ticket, &checked.tool, &checked.hash)
            .err()?;
        let code = match withheld.reason {
            WithholdReason::LoopDetected => ReasonCode::LoopDetected,
            WithholdReason::RunBudgetExceeded => ReasonCode::RunBudgetExceeded,
        };
        Some(Decision::refuse(code, withheld.detail))
    }

    fn held_call(&self, checked: &CheckedCall) -> Ticket {
        self.open_ticket(
            Held::ToolCall {
                call: HeldCall {
                    id: checked.id.clone(),
                    name: checked.tool.clone(),
                    arguments: checked.arguments.clone(),
                },
                call_hash: checked.hash.clone(),
            },
            checked.decision.rule.clone(),
            checked.decision.reason.clone(),
        )
    }

    fn open_ticket(&self, held: Held, rule: Option<String>, reason: String) -> Ticket {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.policy.approval_ttl())
            .unwrap_or(chrono::Duration::days(1));
        Ticket {
            id: Ticket::new_id(),
            held,
            agent: self.recipient.agent.clone(),
            tenant: self.recipient.tenant.clone(),
            request_id: self.recipient.request_id.clone(),
            run_id: self.recipient.run_id.clone(),
            snapshot: self.policy.snapshot().to_string(),
            rule,
            reason,
            created_at: now,
            expires_at: now + ttl,
            status: TicketStatus::Pending,
            review: None,
            redeemed_by: None,
        }
    }
}

/// What the agent reads about a call it did not get, so it can adapt.
fn notice_for(record: &DecisionRecord) -> String {
    let rule = record.rule.as_deref().map_or_else(
        || record.code.as_str().to_string(),
        |rule| format!("rule `{rule}`"),
    );
    let snapshot = &record.snapshot[..record.snapshot.len().min(12)];
    let call = if record.name.is_empty() {
        format!("A tool call ({})", record.call_id)
    } else {
        format!("The tool call `{}` ({})", record.name, record.call_id)
    };
    match (&record.outcome, &record.ticket) {
        (CallOutcome::Held, Some(ticket)) => format!(
            "[warden] {call} is waiting for approval: {} ({rule}, policy {snapshot}). Ticket {ticket}; poll GET /v1/approvals/{ticket}.",
            record.reason
        ),
        _ => format!(
            "[warden] {call} was refused: {} ({rule}, policy {snapshot}).",
            record.reason
        ),
    }
}

fn quarantine_reason(findings: &[(Detector, OutputAction)]) -> String {
    let quarantined: Vec<&str> = findings
        .iter()
        .filter(|(_, action)| *action == OutputAction::Quarantine)
        .map(|(detector, _)| detector.as_str())
        .collect();
    format!("it contains {}", quarantined.join(", "))
}

fn action_name(action: OutputAction) -> &'static str {
    match action {
        OutputAction::Allow => "allow",
        OutputAction::Redact => "redact",
        OutputAction::Quarantine => "quarantine",
    }
}

/// Runs a store operation (file I/O and fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    store: Arc<ApprovalStore>,
    operation: impl FnOnce(&ApprovalStore) -> Result<T, ApprovalError> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(move || operation(&store))
        .await
        .map_err(|error| {
            GatewayError::Internal(format!("the approvals store task failed: {error}"))
        })?
        .map_err(GatewayError::from)
}
