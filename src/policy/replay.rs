//! `warden policy replay`: the decisions recorded in an audit log re-taken under a
//! candidate policy, and what would change. A log is the audit folder (or one of its
//! files, or a copy of them), read through `audit::read`; of each request record's
//! `report` (the response's `warden` object) only the fields replay needs are read, and
//! records without a report (events, outcomes, refusals) are passed over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::decide::{Policy, ReasonCode, Subject, Verdict};
use super::report::PolicyReport;
use crate::audit::read::{read_files, AuditRecord, ReadError};
use crate::chat::ToolCall;

#[derive(Deserialize)]
struct ReportView {
    #[serde(default)]
    request_id: String,
    agent: String,
    tenant: String,
    #[serde(default)]
    policy: Option<PolicyReport>,
}

/// A recorded decision that the candidate policy decides differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub request_id: String,
    pub call_id: String,
    pub tool: String,
    pub before: (Verdict, Option<String>),
    pub after: (Verdict, Option<String>),
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Replay {
    pub snapshot: String,
    pub decisions: usize,
    /// Decisions that depended on the request itself (the tools it offered and their
    /// schemas, a call that could not be read) or on its run (loops, the tool-call
    /// budget), which a log does not hold: kept as they were.
    pub request_bound: usize,
    /// `file:line` of each line that is not a JSON object.
    pub unreadable_lines: Vec<String>,
    pub changes: Vec<Change>,
}

pub fn replay(policy: &Policy, log: &Path) -> Result<Replay, ReadError> {
    let mut replay = Replay {
        snapshot: policy.snapshot().to_string(),
        ..Replay::default()
    };
    read_files(log, &mut |record, place| {
        let report = record.and_then(|record| match record {
            AuditRecord::Request(request) => request
                .report
                .map(serde_json::from_value::<ReportView>)
                .transpose()
                .map_err(|error| place.malformed(error)),
            _ => Ok(None),
        });
        match report {
            Ok(Some(report)) => replay.decide_again(policy, &report),
            Ok(None) => {}
            Err(_) => {
                let at = format!("{}:{}", place.path.display(), place.line);
                replay.unreadable_lines.push(at);
            }
        }
        Ok(())
    })?;
    Ok(replay)
}

impl Replay {
    fn decide_again(&mut self, policy: &Policy, report: &ReportView) {
        let Some(recorded) = &report.policy else {
            return;
        };
        let subject = Subject {
            agent: &report.agent,
            tenant: &report.tenant,
            role: recorded.role.as_deref(),
            labels: &recorded.labels,
            autonomy: recorded.autonomy,
        };
        for record in &recorded.decisions {
            self.decisions += 1;
            if matches!(
                record.code,
                ReasonCode::UndeclaredTool
                    | ReasonCode::AmbiguousTool
                    | ReasonCode::SchemaViolation
                    | ReasonCode::MalformedCall
                    | ReasonCode::LoopDetected
                    | ReasonCode::RunBudgetExceeded
            ) {
                self.request_bound += 1;
                continue;
            }
            let call = ToolCall {
                id: record.call_id.clone(),
                name: record.name.clone(),
                arguments: record.arguments.clone(),
            };
            let checked = policy.check(&call, None, &subject);
            let before = (record.verdict, record.rule.clone());
            let after = (checked.decision.verdict, checked.decision.rule.clone());
            if before != after {
                self.changes.push(Change {
                    request_id: report.request_id.clone(),
                    call_id: record.call_id.clone(),
                    tool: record.tool.clone(),
                    before,
                    after,
                    reason: checked.decision.reason,
                });
            }
        }
    }

    pub fn render(&self) -> String {
        let rule = |r: &Option<String>| {
            r.as_deref()
                .map_or("default".to_string(), |r| format!("rule {r}"))
        };
        let mut out = String::new();
        for change in &self.changes {
            let _ = writeln!(
                out,
                "{} {} `{}`: {} ({}) -> {} ({}): {}",
                change.request_id,
                change.call_id,
                change.tool,
                change.before.0.as_str(),
                rule(&change.before.1),
                change.after.0.as_str(),
                rule(&change.after.1),
                change.reason
            );
        }
        let mut shifts: BTreeMap<(Verdict, Verdict), usize> = BTreeMap::new();
        for change in &self.changes {
            *shifts.entry((change.before.0, change.after.0)).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "{} decisions re-taken under policy {}: {} would change, {} kept (they depend on the request's own tools)",
            self.decisions,
            &self.snapshot[..self.snapshot.len().min(12)],
            self.changes.len(),
            self.request_bound
        );
        for ((from, to), count) in shifts {
            let _ = writeln!(out, "  {} -> {}: {count}", from.as_str(), to.as_str());
        }
        if !self.unreadable_lines.is_empty() {
            let _ = writeln!(
                out,
                "unreadable lines skipped: {}",
                self.unreadable_lines.join(", ")
            );
        }
        out
    }
}
