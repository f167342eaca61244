//! Cost reports, read from the audit log (the server's `GET /admin/reports/cost` and the
//! offline `warden report` are the same code over the same records).
//!
//! Per group: requests (every request record, refusals included), tokens and cost over
//! every attempt, the runs the requests belong to and how many ended in a successful or
//! failed outcome, the cost per successful outcome (the cost of all of the group's runs,
//! failed ones and retries included, over its successes), the share of completed
//! requests served locally, the escalation rate, and the saving against sending each
//! request to the escalation model (its price for the answer's tokens, less what was
//! paid).
//!
//! Requests count in the window by the time they were recorded; outcomes are read from
//! the window's start on, since an outcome is reported after the run's requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::query::{self, Filter};
use crate::audit::read::AuditRecord;
use crate::audit::record::{decimal_field, BusinessOutcome, OutcomeStatus, REQUEST_KIND};
use crate::audit::{AuditError, RequestRecord, RequestStatus};
use crate::backend::local::BACKEND_NAME as LOCAL_BACKEND;

/// Cost per success is rounded to the micro-dollar.
const COST_PER_SUCCESS_DP: u32 = 6;
const NO_RUN: &str = "(no run)";
const NO_OUTCOME: &str = "(no outcome)";
const NOT_SERVED: &str = "(not served)";
const TOTAL: &str = "total";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Outcome,
    Agent,
    Tenant,
    Model,
    Route,
}

/// Which part of the log a report covers: records at or after `from`, before `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
}

/// Reads `2025-01-31` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "`{text}` is not a date (2025-01-31) or an RFC 3339 time (2025-01-31T12:00:00Z)"
            )
        })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub group_by: GroupBy,
    #[serde(flatten)]
    pub window: Window,
    pub groups: Vec<Figures>,
    pub total: Figures,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub group: String,
    pub requests: u64,
    pub completed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Decimal,
    pub runs: u64,
    pub successes: u64,
    pub failures: u64,
    pub cost_per_success_usd: Option<Decimal>,
    /// Completed requests answered by the local model, over completed requests.
    pub local_share: Option<f64>,
    /// Completed requests escalated from the local model, over completed requests.
    pub escalation_rate: Option<f64>,
    /// What the escalation model would have charged; `None` without an
    /// `escalation_model` in the prices.
    pub reference_cost_usd: Option<Decimal>,
    /// The reference cost less what those requests cost.
    pub saving_usd: Option<Decimal>,
}

/// What a report needs from one request record.
#[derive(Debug, Clone)]
struct Served {
    agent: String,
    tenant: String,
    run: Option<(String, String)>,
    model: String,
    route: String,
    completed: bool,
    local: bool,
    escalated: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: Decimal,
    reference_cost_usd: Option<Decimal>,
}

impl Served {
    fn from_record(record: &RequestRecord) -> Self {
        let report = record.report.as_ref();
        let text = |field: &str| {
            report
                .and_then(|report| report[field].as_str())
                .map(str::to_string)
        };
        let attempts = report
            .and_then(|report| report["attempts"].as_array())
            .cloned()
            .unwrap_or_default();
        let (mut prompt_tokens, mut completion_tokens) =
            attempts
                .iter()
                .fold((0, 0), |(prompt, completion), attempt| {
                    (
                        prompt + attempt["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                        completion + attempt["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                    )
                });
        if attempts.is_empty() {
            if let Some(usage) = record.usage {
                prompt_tokens = u64::from(usage.prompt_tokens);
                completion_tokens = u64::from(usage.completion_tokens);
            }
        }
        let backend = text("backend");
        let local = backend.as_deref() == Some(LOCAL_BACKEND);
        let first_local = attempts
            .first()
            .is_some_and(|attempt| attempt["backend"].as_str() == Some(LOCAL_BACKEND));
        let completed = record.status == RequestStatus::Completed;
        Self {
            agent: record.agent.clone(),
            tenant: record.tenant.clone(),
            run: record
                .run_id
                .clone()
                .map(|run_id| (record.tenant.clone(), run_id)),
            model: text("model").unwrap_or_else(|| record.model_requested.clone()),
            route: text("route").unwrap_or_else(|| NOT_SERVED.to_string()),
            completed,
            local: completed && local,
            escalated: completed && first_local && !local,
            prompt_tokens,
            completion_tokens,
            cost_usd: record.cost_usd().unwrap_or_default(),
            reference_cost_usd: report
                .and_then(|report| decimal_field(report, "reference_cost_usd")),
        }
    }
}

/// Outcomes by run (tenant and run id), the latest winning.
type Outcomes = HashMap<(String, String), BusinessOutcome>;

/// Reads the log under `dir` and reports on `window`, grouped by `group_by`.
pub fn from_log(dir: &Path, group_by: GroupBy, window: Window) -> Result<CostReport, AuditError> {
    let mut served = Vec::new();
    let mut outcomes = Outcomes::new();
    let filter = Filter {
        from: window.from,
        ..Filter::default()
    };
    let mut problem = None;
    query::for_each(dir, &filter, |record| {
        match read(record, &window) {
            Ok(Some(AuditRecord::Request(request))) => served.push(Served::from_record(&request)),
            Ok(Some(AuditRecord::Outcome(outcome))) => {
                outcomes.insert((outcome.tenant.clone(), outcome.run_id.clone()), outcome);
            }
            Ok(Some(AuditRecord::Other(_)) | None) => {}
            Err(error) => {
                problem = Some(error);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(error) = problem {
        return Err(error);
    }
    Ok(build(group_by, window, &served, &outcomes))
}

/// The record typed, or `None` for a request written after the window.
fn read(record: Value, window: &Window) -> Result<Option<AuditRecord>, AuditError> {
    let seq = record["seq"].as_u64().unwrap_or(0);
    let kind = record["kind"].as_str().unwrap_or_default().to_string();
    if kind == REQUEST_KIND {
        let time = record["time"].as_str().and_then(|t| parse_time(t).ok());
        if window
            .to
            .is_some_and(|to| time.is_none_or(|time| time >= to))
        {
            return Ok(None);
        }
    }
    AuditRecord::parse(record)
        .map(Some)
        .map_err(|error| AuditError::Malformed {
            seq,
            kind,
            problem: error.to_string(),
        })
}

fn build(group_by: GroupBy, window: Window, served: &[Served], outcomes: &Outcomes) -> CostReport {
    let mut groups: BTreeMap<String, Vec<&Served>> = BTreeMap::new();
    for request in served {
        let key = match group_by {
            GroupBy::Agent => request.agent.clone(),
            GroupBy::Tenant => request.tenant.clone(),
            GroupBy::Model => request.model.clone(),
            GroupBy::Route => request.route.clone(),
            GroupBy::Outcome => match &request.run {
                None => NO_RUN.to_string(),
                Some(run) => outcomes
                    .get(run)
                    .map_or_else(|| NO_OUTCOME.to_string(), |o| o.outcome.clone()),
            },
        };
        groups.entry(key).or_default().push(request);
    }
    CostReport {
        group_by,
        window,
        groups: groups
            .into_iter()
            .map(|(group, requests)| figures(group, &requests, outcomes))
            .collect(),
        total: figures(
            TOTAL.to_string(),
            &served.iter().collect::<Vec<_>>(),
            outcomes,
        ),
    }
}

fn figures(group: String, requests: &[&Served], outcomes: &Outcomes) -> Figures {
    let count = |keep: fn(&Served) -> bool| requests.iter().filter(|r| keep(r)).count() as u64;
    let completed = count(|r| r.completed);
    let share = |part: u64| (completed > 0).then(|| part as f64 / completed as f64);
    let runs: HashSet<&(String, String)> = requests.iter().filter_map(|r| r.run.as_ref()).collect();
    let ended = |status: OutcomeStatus| {
        runs.iter()
            .filter(|run| outcomes.get(**run).is_some_and(|o| o.status == status))
            .count() as u64
    };
    let successes = ended(OutcomeStatus::Success);
    let cost_usd: Decimal = requests.iter().map(|r| r.cost_usd).sum();
    let with_reference: Vec<(Decimal, Decimal)> = requests
        .iter()
        .filter_map(|r| {
            r.reference_cost_usd
                .map(|reference| (reference, r.cost_usd))
        })
        .collect();
    let reference_cost_usd = (!with_reference.is_empty()).then(|| {
        with_reference
            .iter()
            .map(|(reference, _)| *reference)
            .sum::<Decimal>()
    });
    let saving_usd = (!with_reference.is_empty()).then(|| {
        with_reference
            .iter()
            .map(|(reference, cost)| reference - cost)
            .sum::<Decimal>()
    });
    Figures {
        group,
        requests: requests.len() as u64,
        completed,
        prompt_tokens: requests.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens: requests.iter().map(|r| r.completion_tokens).sum(),
        cost_usd,
        runs: runs.len() as u64,
        successes,
        failures: ended(OutcomeStatus::Failure),
        cost_per_success_usd: (successes > 0).then(|| {
            (cost_usd / Decimal::from(successes))
                .round_dp_with_strategy(COST_PER_SUCCESS_DP, RoundingStrategy::MidpointAwayFromZero)
        }),
        local_share: share(count(|r| r.local)),
        escalation_rate: share(count(|r| r.escalated)),
        reference_cost_usd,
        saving_usd,
    }
}

const CSV_HEADER: [&str; 15] = [
    "group",
    "requests",
    "completed",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "runs",
    "successes",
    "failures",
    "cost_per_success_usd",
    "local_share",
    "escalation_rate",
    "reference_cost_usd",
    "saving_usd",
    "group_by",
];

impl CostReport {
    /// One header row, one row per group, then the total.
    pub fn to_csv(&self) -> Result<String, csv::Error> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(CSV_HEADER)?;
        let group_by = serde_json::to_value(self.group_by)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        let optional = |value: Option<String>| value.unwrap_or_default();
        for row in self.groups.iter().chain(std::iter::once(&self.total)) {
            writer.write_record([
                row.group.clone(),
                row.requests.to_string(),
                row.completed.to_string(),
                row.prompt_tokens.to_string(),
                row.completion_tokens.to_string(),
                row.cost_usd.to_string(),
                row.runs.to_string(),
                row.successes.to_string(),
                row.failures.to_string(),
                optional(row.cost_per_success_usd.map(|d| d.to_string())),
                optional(row.local_share.map(|share| format!("{share:.4}"))),
                optional(row.escalation_rate.map(|rate| format!("{rate:.4}"))),
                optional(row.reference_cost_usd.map(|d| d.to_string())),
                optional(row.saving_usd.map(|d| d.to_string())),
                group_by.clone(),
            ])?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|error| csv::Error::from(error.into_error()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{RecordedError, TextDigest, OUTCOME_KIND};
    use crate::audit::{AuditConfig, AuditLog, Entry};
    use serde_json::json;
    use std::str::FromStr;

    fn amount(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn attempt(backend: &str, outcome: &str, prompt: u32, completion: u32, cost: &str) -> Value {
        json!({"backend": backend, "model": if backend == "local" { "small" } else { "big" },
               "outcome": outcome, "cost_usd": cost,
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})
    }

    /// A completed request; the last attempt answered.
    fn served(
        agent: &str,
        run: &str,
        route: &str,
        attempts: Vec<Value>,
        cost: &str,
        reference: &str,
    ) -> RequestRecord {
        let answer = attempts.last().cloned().unwrap();
        RequestRecord {
            report: Some(
                json!({"route": route, "backend": answer["backend"], "model": answer["model"],
                                "attempts": attempts, "cost_usd": cost, "reference_cost_usd": reference}),
            ),
            ..refused(agent, run)
        }
    }

    fn refused(agent: &str, run: &str) -> RequestRecord {
        RequestRecord {
            request_id: format!("{agent}-{run}"),
            agent: agent.into(),
            tenant: "acme".into(),
            run_id: Some(run.into()),
            status: RequestStatus::Refused,
            error: Some(RecordedError {
                kind: "run_budget_exceeded".into(),
                message: "max_steps".into(),
            }),
            received_at: Utc::now(),
            latency_ms: 1.0,
            model_requested: "auto".into(),
            prompt: TextDigest {
                sha256: "0".repeat(64),
                bytes: 10,
                text: None,
            },
            completion: None,
            later_choices: Vec::new(),
            usage: None,
            tool_calls: Vec::new(),
            attempts: Vec::new(),
            report: None,
        }
    }

    fn outcome(agent: &str, run: &str, name: &str, status: OutcomeStatus) -> BusinessOutcome {
        BusinessOutcome {
            run_id: run.into(),
            outcome: name.into(),
            status,
            value: None,
            agent: agent.into(),
            tenant: "acme".into(),
        }
    }

    /// Three runs: r1 closes a ticket (a local answer, then one escalated: the rejected
    /// local attempt is paid for too), r2 fails to (one refusal, one local answer), r3
    /// matches an invoice on the external model alone.
    async fn workload(dir: &Path) {
        let config = AuditConfig {
            dir: dir.to_path_buf(),
            fsync: false,
            commit_delay: std::time::Duration::ZERO,
            max_batch: 16,
            segment_bytes: 4096,
            store_text: false,
        };
        let log = AuditLog::open(
            &config,
            crate::metrics::Metrics::new().unwrap().audit.clone(),
        )
        .unwrap();
        let completed = |mut record: RequestRecord| {
            record.status = RequestStatus::Completed;
            record.error = None;
            record
        };
        let requests = [
            completed(served(
                "a",
                "r1",
                "local",
                vec![attempt("local", "served", 100, 10, "0.0100")],
                "0.0100",
                "0.0500",
            )),
            completed(served(
                "a",
                "r1",
                "escalated",
                vec![
                    attempt("local", "rejected", 200, 20, "0.0050"),
                    attempt("openai", "served", 200, 30, "0.1200"),
                ],
                "0.1250",
                "0.1200",
            )),
            refused("b", "r2"),
            completed(served(
                "b",
                "r2",
                "local",
                vec![attempt("local", "served", 50, 5, "0.0200")],
                "0.0200",
                "0.0600",
            )),
            completed(served(
                "a",
                "r3",
                "external",
                vec![attempt("openai", "served", 300, 40, "0.3000")],
                "0.3000",
                "0.3000",
            )),
        ];
        for request in &requests {
            log.append(request.entry().unwrap()).await.unwrap();
        }
        for (agent, run, name, status) in [
            ("a", "r1", "ticket_closed", OutcomeStatus::Success),
            ("b", "r2", "ticket_closed", OutcomeStatus::Failure),
            ("a", "r3", "invoice_matched", OutcomeStatus::Success),
        ] {
            let entry = Entry::new(OUTCOME_KIND, &outcome(agent, run, name, status)).unwrap();
            log.append(entry).await.unwrap();
        }
        log.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_constructed_workload_reports_hand_computed_figures() {
        let dir = tempfile::tempdir().unwrap();
        workload(dir.path()).await;
        let report = from_log(dir.path(), GroupBy::Outcome, Window::default()).unwrap();
        let names: Vec<&str> = report.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(names, ["invoice_matched", "ticket_closed"]);

        let tickets = &report.groups[1];
        assert_eq!(
            (tickets.requests, tickets.completed, tickets.runs),
            (4, 3, 2)
        );
        assert_eq!((tickets.successes, tickets.failures), (1, 1));
        assert_eq!(
            (tickets.prompt_tokens, tickets.completion_tokens),
            (550, 65)
        );
        // 0.0100 + (0.0050 + 0.1200) + 0 + 0.0200; the failed run counts.
        assert_eq!(tickets.cost_usd, amount("0.1550"));
        assert_eq!(tickets.cost_per_success_usd, Some(amount("0.155")));
        assert_eq!(tickets.local_share, Some(2.0 / 3.0));
        assert_eq!(tickets.escalation_rate, Some(1.0 / 3.0));
        // 0.05 + 0.12 + 0.06 against 0.01 + 0.125 + 0.02.
        assert_eq!(tickets.reference_cost_usd, Some(amount("0.23")));
        assert_eq!(tickets.saving_usd, Some(amount("0.075")));

        let invoices = &report.groups[0];
        assert_eq!(invoices.cost_usd, amount("0.3"));
        assert_eq!(invoices.cost_per_success_usd, Some(amount("0.3")));
        assert_eq!(
            (invoices.local_share, invoices.escalation_rate),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(invoices.saving_usd, Some(Decimal::ZERO));

        let total = &report.total;
        assert_eq!(
            (total.requests, total.completed, total.runs, total.successes),
            (5, 4, 3, 2)
        );
        assert_eq!(total.cost_usd, amount("0.455"));
        // All runs' cost over the successes: 0.455 / 2.
        assert_eq!(total.cost_per_success_usd, Some(amount("0.2275")));
        assert_eq!(
            (total.local_share, total.escalation_rate),
            (Some(0.5), Some(0.25))
        );
        assert_eq!(total.saving_usd, Some(amount("0.075")));

        let by_agent = from_log(dir.path(), GroupBy::Agent, Window::default()).unwrap();
        let costs: Vec<(String, Decimal)> = by_agent
            .groups
            .iter()
            .map(|g| (g.group.clone(), g.cost_usd))
            .collect();
        assert_eq!(
            costs,
            [
                ("a".to_string(), amount("0.435")),
                ("b".to_string(), amount("0.02"))
            ]
        );
        let by_route = from_log(dir.path(), GroupBy::Route, Window::default()).unwrap();
        let routes: Vec<(&str, u64)> = by_route
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.requests))
            .collect();
        assert_eq!(
            routes,
            [
                ("(not served)", 1),
                ("escalated", 1),
                ("external", 1),
                ("local", 2)
            ]
        );
    }

    #[tokio::test]
    async fn the_csv_is_a_table_with_a_header_row() {
        let dir = tempfile::tempdir().unwrap();
        workload(dir.path()).await;
        let report = from_log(dir.path(), GroupBy::Outcome, Window::default()).unwrap();
        let csv = report.to_csv().unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, CSV_HEADER);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|row| row.len() == CSV_HEADER.len()));
        let total = &rows[2];
        assert_eq!(&total[0], "total");
        assert_eq!(amount(&total[5]), amount("0.455"));
        assert_eq!(amount(&total[9]), amount("0.2275"));
        assert_eq!(&total[10], "0.5000");
    }

    #[test]
    fn times_are_dates_or_rfc3339() {
        assert_eq!(
            parse_time("2025-01-31").unwrap().to_rfc3339(),
            "2025-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2025-01-31T12:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2025-01-31T10:00:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
