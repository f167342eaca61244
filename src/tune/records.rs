//! The decisions `warden tune` replays, read from the JSONL the gateway writes (through
//! `audit::read`). A line is a request record carrying a `report` (the `warden` object
//! of a response), a bare report, or an outcome attached to a run; anything else
//! (approvals, configuration changes) says nothing about thresholds and is skipped.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::audit::read::{read_files, read_lines, AuditRecord, Place, ReadError};
use crate::audit::record::OutcomeStatus;
use crate::backend::local::BACKEND_NAME as LOCAL_BACKEND;
use crate::chat::{Confidence, Usage};
use crate::gateway::AttemptOutcome;
use crate::route::{Reason, Route};

/// One routed request, as far as thresholds are concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub agent: String,
    pub run_id: Option<String>,
    pub route: Route,
    /// The local model's answer, when it gave one a threshold could judge.
    pub local: Option<LocalAnswer>,
    /// Spent on every attempt but the local answer.
    pub external_cost: Decimal,
    /// Whether an external provider's answer was served.
    pub answered_externally: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalAnswer {
    pub confidence: Confidence,
    pub usage: Usage,
    pub cost: Decimal,
    /// Malformed or schema-invalid tool calls escalate whatever the thresholds.
    pub faulty: bool,
}

impl Decision {
    /// Whether the answer the agent got came from the local model.
    pub fn served_locally(&self) -> bool {
        matches!(self.route, Route::Local | Route::FallbackLocal)
    }
}

/// What the log holds: decisions in the order written, and each run's latest outcome.
#[derive(Debug, Default)]
pub struct Log {
    pub decisions: Vec<Decision>,
    pub outcomes: HashMap<String, bool>,
}

#[derive(Deserialize)]
struct RecordedReport {
    agent: String,
    #[serde(default)]
    run_id: Option<String>,
    route: Route,
    reasons: Vec<Reason>,
    attempts: Vec<RecordedAttempt>,
}

#[derive(Deserialize)]
struct RecordedAttempt {
    backend: String,
    outcome: AttemptOutcome,
    usage: Usage,
    #[serde(default)]
    confidence: Option<Confidence>,
    #[serde(default)]
    cost_usd: Option<Decimal>,
}

impl Log {
    /// Reads files and directories (every `.jsonl` file in them, by name) in order.
    pub fn read_paths(paths: &[PathBuf]) -> Result<Self, ReadError> {
        let mut log = Log::default();
        for path in paths {
            read_files(path, &mut |record, place| log.add(record?, place))?;
        }
        Ok(log)
    }

    /// Adds the records of one JSONL stream; `path` names it in errors.
    pub fn read(&mut self, reader: impl BufRead, path: &Path) -> Result<(), ReadError> {
        read_lines(reader, path, &mut |record, place| self.add(record?, place))
    }

    fn add(&mut self, record: AuditRecord, place: Place<'_>) -> Result<(), ReadError> {
        let report = match record {
            AuditRecord::Outcome(outcome) => {
                self.outcomes
                    .insert(outcome.run_id, outcome.status == OutcomeStatus::Success);
                return Ok(());
            }
            AuditRecord::Request(request) => match request.report {
                Some(report) => report,
                None => return Ok(()),
            },
            // A bare report: a line of a log of responses' `warden` objects.
            AuditRecord::Other(record)
                if record.get("kind").is_none() && record.get("attempts").is_some() =>
            {
                record
            }
            AuditRecord::Other(_) => return Ok(()),
        };
        let report: RecordedReport =
            serde_json::from_value(report).map_err(|error| place.malformed(error))?;
        self.decisions.push(Decision::from(report));
        Ok(())
    }

    /// Whether the run this decision belongs to succeeded, when an outcome says so.
    pub fn outcome(&self, decision: &Decision) -> Option<bool> {
        decision
            .run_id
            .as_ref()
            .and_then(|run| self.outcomes.get(run))
            .copied()
    }
}

impl From<RecordedReport> for Decision {
    fn from(report: RecordedReport) -> Self {
        let faulty = report.reasons.iter().any(|reason| {
            matches!(
                reason,
                Reason::MalformedToolCall | Reason::InvalidToolArguments
            )
        });
        // A raw prompt (`/v1/completions`) runs locally whatever the thresholds: no
        // threshold judged it, so none is judged again.
        let judged = !report.reasons.contains(&Reason::RawPrompt);
        let is_local_answer = |attempt: &RecordedAttempt| {
            judged
                && attempt.backend == LOCAL_BACKEND
                && matches!(
                    attempt.outcome,
                    AttemptOutcome::Served | AttemptOutcome::Rejected
                )
                && attempt.confidence.is_some()
        };
        let local = report
            .attempts
            .iter()
            .find(|attempt| is_local_answer(attempt))
            .and_then(|attempt| {
                Some(LocalAnswer {
                    confidence: attempt.confidence?,
                    usage: attempt.usage,
                    cost: attempt.cost_usd.unwrap_or_default(),
                    faulty,
                })
            });
        let external = || report.attempts.iter().filter(|a| !is_local_answer(a));
        Decision {
            agent: report.agent.clone(),
            run_id: report.run_id.clone(),
            route: report.route,
            local,
            external_cost: external().filter_map(|a| a.cost_usd).sum(),
            answered_externally: external()
                .any(|a| a.backend != LOCAL_BACKEND && a.outcome == AttemptOutcome::Served),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn report(route: &str, reasons: &[&str], attempts: Value) -> Value {
        json!({
            "request_id": "r", "agent": "a", "tenant": "t", "run_id": "run-1",
            "route": route, "reasons": reasons, "risk": {"score": 0, "signals": []},
            "backend": "local", "model": "m", "attempts": attempts, "cost_usd": null
        })
    }

    /// An audit request record carrying `report`, as the gateway writes it.
    fn request_record(report: Value) -> Value {
        json!({
            "seq": 1, "kind": "request", "request_id": "r", "agent": "a", "tenant": "t",
            "status": "completed", "received_at": "2026-12-06T00:00:00Z", "latency_ms": 60.0,
            "model_requested": "auto", "prompt": {"sha256": "00", "bytes": 2},
            "report": report
        })
    }

    fn local_attempt(outcome: &str, mean: f32) -> Value {
        json!({"backend": "local", "model": "m", "outcome": outcome,
               "usage": {"prompt_tokens": 100, "completion_tokens": 20},
               "confidence": {"mean_logprob": mean, "min_logprob": -3.0},
               "latency_ms": 10.0, "cost_usd": "0.0001"})
    }

    fn read(lines: &[Value]) -> Log {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        let mut log = Log::default();
        log.read(text.as_bytes(), Path::new("log.jsonl")).unwrap();
        log
    }

    #[test]
    fn audit_records_bare_reports_and_outcomes_are_read() {
        let escalated = report(
            "escalated",
            &["local_first", "low_mean_logprob"],
            json!([local_attempt("rejected", -2.0),
                   {"backend": "openai", "model": "gpt", "outcome": "served",
                    "usage": {"prompt_tokens": 100, "completion_tokens": 30},
                    "latency_ms": 50.0, "cost_usd": "0.002"}]),
        );
        let log = read(&[
            request_record(escalated),
            report(
                "local",
                &["local_first"],
                json!([local_attempt("served", -0.2)]),
            ),
            json!({"seq": 3, "kind": "kill_switch", "scope": "global"}),
            json!({"seq": 4, "kind": "outcome", "run_id": "run-1", "outcome": "ticket",
                   "status": "success", "agent": "a", "tenant": "t"}),
        ]);
        assert_eq!(log.decisions.len(), 2);
        let first = &log.decisions[0];
        assert_eq!(first.route, Route::Escalated);
        assert_eq!(first.local.unwrap().confidence.mean_logprob, -2.0);
        assert_eq!(first.external_cost, Decimal::new(2, 3));
        assert!(first.answered_externally);
        assert!(log.decisions[1].served_locally());
        assert_eq!(log.outcome(first), Some(true));
    }

    #[test]
    fn tool_call_faults_are_kept_and_external_only_requests_have_no_local_answer() {
        let log = read(&[
            report(
                "fallback_local",
                &["local_first", "malformed_tool_call", "fallback_local"],
                json!([local_attempt("served", -0.1)]),
            ),
            report(
                "external",
                &["risk_above_ceiling"],
                json!([{"backend": "openai", "model": "gpt", "outcome": "served",
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "latency_ms": 1.0}]),
            ),
        ]);
        assert!(log.decisions[0].local.unwrap().faulty);
        assert!(!log.decisions[0].answered_externally);
        assert_eq!(log.decisions[1].local, None);
    }

    #[test]
    fn raw_prompts_are_served_locally_but_never_judged() {
        let log = read(&[report(
            "local",
            &["raw_prompt"],
            json!([local_attempt("served", -3.0)]),
        )]);
        let decision = &log.decisions[0];
        assert_eq!(decision.local, None);
        assert!(decision.served_locally());
        assert_eq!(
            decision.external_cost,
            Decimal::new(1, 4),
            "its cost still counts"
        );
    }

    #[test]
    fn a_broken_line_is_named() {
        let mut log = Log::default();
        let error = log
            .read("{}\nnot json\n".as_bytes(), Path::new("x.jsonl"))
            .unwrap_err();
        assert!(matches!(error, ReadError::Malformed { line: 2, .. }));
    }
}
