//! Runs: the requests that share a `run_id` (`x-run-id` or `metadata.run_id`), and what
//! they may spend together. A request is admitted only while its run is within every
//! budget (steps, tool calls, wall time, cost); the tool calls it produces are screened
//! for loops (the same call proposed more than `max_repeated_tool_calls` times) and for
//! the tool-call budget, and withheld calls never reach the agent.
//!
//! Runs are keyed by tenant and run id, so one tenant's run ids never touch another's.
//! State lives in memory and is rebuilt from the audit log at start-up
//! ([`RunTracker::restore`]); a run idle for `runs.idle_expiry_s` is forgotten.
//!
//! Admission counts the step at once, so concurrent requests of one run cannot all slip
//! under the step budget; cost is known only at completion, so a run can overshoot its
//! cost budget by the requests in flight when it crossed it, and is then refused.

pub mod limits;
mod loops;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;

use dashmap::DashMap;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::time::Instant;

pub use limits::{RunLimit, RunLimits, RunsConfig};
pub use loops::call_hash;

use crate::audit::query::{self, Filter};
use crate::audit::record::REQUEST_KIND;
use crate::audit::{AuditError, RequestRecord, RequestStatus};
use crate::chat::ToolCall;

/// How often idle runs are swept out, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("run `{run_id}` has reached its `{limit}` budget ({used} of {max}); start a new run, or ask an operator to raise `runs.{limit}`")]
pub struct RunBudgetExceeded {
    pub run_id: String,
    pub limit: RunLimit,
    pub used: String,
    pub max: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RunKey {
    tenant: String,
    run_id: String,
}

#[derive(Debug)]
struct RunState {
    started: Instant,
    last_active: Instant,
    steps: u32,
    tool_calls: u32,
    cost_usd: Decimal,
    /// How often each call (by [`call_hash`]) was proposed.
    proposals: HashMap<String, u32>,
}

impl RunState {
    fn new(started: Instant) -> Self {
        Self {
            started,
            last_active: started,
            steps: 0,
            tool_calls: 0,
            cost_usd: Decimal::ZERO,
            proposals: HashMap::new(),
        }
    }

    fn usage(&self, now: Instant) -> RunUsage {
        RunUsage {
            steps: self.steps,
            tool_calls: self.tool_calls,
            cost_usd: self.cost_usd,
            elapsed_s: now.saturating_duration_since(self.started).as_secs_f64(),
        }
    }
}

/// What a run has used so far; reported as `warden.run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunUsage {
    pub steps: u32,
    pub tool_calls: u32,
    pub cost_usd: Decimal,
    pub elapsed_s: f64,
}

/// A request's admission into its run.
#[derive(Debug, Clone)]
pub struct RunTicket {
    key: RunKey,
    limits: RunLimits,
}

impl RunTicket {
    pub fn run_id(&self) -> &str {
        &self.key.run_id
    }
}

/// Why a tool call was withheld from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WithholdReason {
    LoopDetected,
    RunBudgetExceeded,
}

impl WithholdReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WithholdReason::LoopDetected => "loop_detected",
            WithholdReason::RunBudgetExceeded => "run_budget_exceeded",
        }
    }
}

/// A tool call the run checks kept from the agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Withheld {
    pub id: String,
    pub name: String,
    pub sha256: String,
    pub reason: WithholdReason,
    pub detail: String,
}

/// The tool calls of one generation after the run checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Screened {
    pub returned: Vec<ToolCall>,
    pub withheld: Vec<Withheld>,
}

pub struct RunTracker {
    config: RunsConfig,
    runs: DashMap<RunKey, RunState>,
    last_sweep: Mutex<Instant>,
}

impl RunTracker {
    pub fn new(config: RunsConfig) -> Self {
        Self {
            config,
            runs: DashMap::new(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Admits one step of `run_id` for `agent`, or names the budget it would exceed.
    /// `offers_tools`: the request lets the model call tools, so it could exceed the
    /// tool-call budget (a request without tools cannot).
    pub fn admit(
        &self,
        agent: &str,
        tenant: &str,
        run_id: &str,
        offers_tools: bool,
    ) -> Result<RunTicket, RunBudgetExceeded> {
        let now = Instant::now();
        self.sweep(now);
        let limits = self.config.limits_for(agent).clone();
        let key = RunKey {
            tenant: tenant.to_string(),
            run_id: run_id.to_string(),
        };
        let mut state = self
            .runs
            .entry(key.clone())
            .or_insert_with(|| RunState::new(now));
        let exceeded = |limit: RunLimit, used: String, max: String| RunBudgetExceeded {
            run_id: run_id.to_string(),
            limit,
            used,
            max,
        };
        if state.steps >= limits.max_steps {
            return Err(exceeded(
                RunLimit::MaxSteps,
                state.steps.to_string(),
                limits.max_steps.to_string(),
            ));
        }
        if offers_tools && state.tool_calls >= limits.max_tool_calls {
            return Err(exceeded(
                RunLimit::MaxToolCalls,
                state.tool_calls.to_string(),
                limits.max_tool_calls.to_string(),
            ));
        }
        let elapsed = now.saturating_duration_since(state.started);
        if elapsed >= limits.max_wall_time {
            return Err(exceeded(
                RunLimit::MaxWallTimeS,
                format!("{}s", elapsed.as_secs()),
                format!("{}s", limits.max_wall_time.as_secs()),
            ));
        }
        if state.cost_usd >= limits.max_cost_usd {
            return Err(exceeded(
                RunLimit::MaxCostUsd,
                format!("${}", state.cost_usd),
                format!("${}", limits.max_cost_usd),
            ));
        }
        state.steps += 1;
        state.last_active = now;
        Ok(RunTicket { key, limits })
    }

    /// Gives back the step of a request refused before it generated anything.
    pub fn release(&self, ticket: &RunTicket) {
        if let Some(mut state) = self.runs.get_mut(&ticket.key) {
            state.steps = state.steps.saturating_sub(1);
        }
    }

    /// Counts each proposed call and keeps back those that repeat too often or would
    /// exceed the run's tool-call budget.
    pub fn screen(&self, ticket: &RunTicket, calls: Vec<ToolCall>) -> Screened {
        let mut state = self
            .runs
            .entry(ticket.key.clone())
            .or_insert_with(|| RunState::new(Instant::now()));
        let limits = &ticket.limits;
        let mut screened = Screened::default();
        for call in calls {
            let sha256 = call_hash(&call);
            let proposed = {
                let count = state.proposals.entry(sha256.clone()).or_insert(0);
                *count += 1;
                *count
            };
            let withheld = if proposed > limits.max_repeated_tool_calls {
                Some((
                    WithholdReason::LoopDetected,
                    format!(
                        "`{}` with these arguments was proposed {} times in run `{}`; the limit is {}",
                        call.name, proposed, ticket.key.run_id, limits.max_repeated_tool_calls
                    ),
                ))
            } else if state.tool_calls >= limits.max_tool_calls {
                Some((
                    WithholdReason::RunBudgetExceeded,
                    format!(
                        "run `{}` has received its {} tool calls (`max_tool_calls`)",
                        ticket.key.run_id, limits.max_tool_calls
                    ),
                ))
            } else {
                None
            };
            match withheld {
                Some((reason, detail)) => screened.withheld.push(Withheld {
                    id: call.id,
                    name: call.name,
                    sha256,
                    reason,
                    detail,
                }),
                None => {
                    state.tool_calls += 1;
                    screened.returned.push(call);
                }
            }
        }
        screened
    }

    /// Adds a completed request's cost to its run; returns what the run has used.
    pub fn settle(&self, ticket: &RunTicket, cost_usd: Option<Decimal>) -> RunUsage {
        let now = Instant::now();
        let mut state = self
            .runs
            .entry(ticket.key.clone())
            .or_insert_with(|| RunState::new(now));
        state.cost_usd += cost_usd.unwrap_or_default();
        state.last_active = now;
        state.usage(now)
    }

    /// Replays a request recorded `age` ago into its run (start-up, oldest first).
    pub fn restore(&self, record: &RequestRecord, age: Duration) {
        let Some(run_id) = &record.run_id else {
            return;
        };
        if age >= self.config.idle_expiry || record.status == RequestStatus::Refused {
            return;
        }
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        let key = RunKey {
            tenant: record.tenant.clone(),
            run_id: run_id.clone(),
        };
        let mut state = self.runs.entry(key).or_insert_with(|| RunState::new(at));
        state.steps += 1;
        state.last_active = state.last_active.max(at);
        state.cost_usd += record.cost_usd().unwrap_or_default();
        for call in &record.tool_calls {
            *state.proposals.entry(call.sha256.clone()).or_insert(0) += 1;
            state.tool_calls += u32::from(call.returned);
        }
    }

    /// Rebuilds the runs still within `idle_expiry` from the audit log under `dir`;
    /// returns how many requests were replayed.
    pub fn restore_from_log(&self, dir: &Path) -> Result<usize, AuditError> {
        let now = Utc::now();
        let filter = Filter {
            kind: Some(REQUEST_KIND.into()),
            from: chrono::Duration::from_std(self.config.idle_expiry)
                .ok()
                .and_then(|expiry| now.checked_sub_signed(expiry)),
            ..Filter::default()
        };
        let mut replayed = 0;
        query::for_each(dir, &filter, |value| {
            match serde_json::from_value::<RequestRecord>(value) {
                Ok(record) => {
                    let age = (now - record.received_at).to_std().unwrap_or_default();
                    self.restore(&record, age);
                    replayed += 1;
                }
                Err(error) => tracing::warn!(%error, "skipping an unreadable request record"),
            }
            ControlFlow::Continue(())
        })?;
        Ok(replayed)
    }

    /// What a run has used, if it is known.
    pub fn usage(&self, tenant: &str, run_id: &str) -> Option<RunUsage> {
        let key = RunKey {
            tenant: tenant.to_string(),
            run_id: run_id.to_string(),
        };
        self.runs.get(&key).map(|state| state.usage(Instant::now()))
    }

    fn sweep(&self, now: Instant) {
        let mut last = match self.last_sweep.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now.saturating_duration_since(*last) < SWEEP_INTERVAL {
            return;
        }
        *last = now;
        drop(last);
        let expiry = self.config.idle_expiry;
        self.runs
            .retain(|_, state| now.saturating_duration_since(state.last_active) < expiry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn limits() -> RunLimits {
        RunLimits {
            max_steps: 3,
            max_tool_calls: 2,
            max_wall_time: Duration::from_secs(600),
            max_cost_usd: Decimal::from_str("0.10").unwrap(),
            max_repeated_tool_calls: 2,
        }
    }

    fn tracker() -> RunTracker {
        let strict = RunLimits {
            max_steps: 1,
            ..limits()
        };
        RunTracker::new(RunsConfig {
            defaults: limits(),
            per_agent: HashMap::from([("strict".to_string(), strict)]),
            idle_expiry: Duration::from_secs(3600),
        })
    }

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: format!("call_{arguments}"),
            name: "lookup".into(),
            arguments: arguments.into(),
        }
    }

    fn refused(result: Result<RunTicket, RunBudgetExceeded>) -> RunLimit {
        result.unwrap_err().limit
    }

    #[tokio::test(start_paused = true)]
    async fn steps_trip_on_the_request_past_the_limit() {
        let runs = tracker();
        for _ in 0..3 {
            runs.admit("a", "t", "r1", false).unwrap();
        }
        assert_eq!(
            refused(runs.admit("a", "t", "r1", false)),
            RunLimit::MaxSteps
        );
        // Another tenant's run of the same name is another run.
        runs.admit("a", "other", "r1", false).unwrap();
        // Per-agent limits override the defaults.
        runs.admit("strict", "t", "r2", false).unwrap();
        assert_eq!(
            refused(runs.admit("strict", "t", "r2", false)),
            RunLimit::MaxSteps
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_refused_downstream_is_given_back() {
        let runs = tracker();
        let ticket = runs.admit("strict", "t", "r", false).unwrap();
        runs.release(&ticket);
        runs.admit("strict", "t", "r", false).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn wall_time_counts_from_the_first_request() {
        let runs = tracker();
        runs.admit("a", "t", "r", false).unwrap();
        tokio::time::advance(Duration::from_secs(599)).await;
        runs.admit("a", "t", "r", false).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            refused(runs.admit("a", "t", "r", false)),
            RunLimit::MaxWallTimeS
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cost_refuses_once_reached() {
        let runs = tracker();
        let ticket = runs.admit("a", "t", "r", false).unwrap();
        let usage = runs.settle(&ticket, Some(Decimal::from_str("0.06").unwrap()));
        assert_eq!(usage.cost_usd, Decimal::from_str("0.06").unwrap());
        let ticket = runs.admit("a", "t", "r", false).unwrap();
        runs.settle(&ticket, Some(Decimal::from_str("0.04").unwrap()));
        assert_eq!(
            refused(runs.admit("a", "t", "r", false)),
            RunLimit::MaxCostUsd
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tool_call_budget_withholds_extra_calls_and_refuses_tool_requests() {
        let runs = tracker();
        let ticket = runs.admit("a", "t", "r", true).unwrap();
        let screened = runs.screen(&ticket, vec![call("{\"q\":1}"), call("{\"q\":2}")]);
        assert_eq!(screened.returned.len(), 2);
        let ticket = runs.admit("a", "t", "r", false).unwrap();
        let screened = runs.screen(&ticket, vec![call("{\"q\":3}")]);
        assert!(screened.returned.is_empty());
        assert_eq!(
            screened.withheld[0].reason,
            WithholdReason::RunBudgetExceeded
        );
        assert_eq!(
            refused(runs.admit("a", "t", "r", true)),
            RunLimit::MaxToolCalls
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_call_past_the_repeat_limit_is_a_loop() {
        let runs = RunTracker::new(RunsConfig {
            defaults: RunLimits {
                max_steps: 100,
                max_tool_calls: 100,
                ..limits()
            },
            per_agent: HashMap::new(),
            idle_expiry: Duration::from_secs(3600),
        });
        let mut verdicts = Vec::new();
        for step in 0..4 {
            let ticket = runs.admit("a", "t", "r", true).unwrap();
            // The same call, written differently each time.
            let arguments = if step % 2 == 0 {
                "{\"q\":1,\"n\":2}"
            } else {
                "{ \"n\": 2, \"q\": 1 }"
            };
            let other = call(&format!("{{\"other\":{step}}}"));
            let screened = runs.screen(&ticket, vec![call(arguments), other]);
            verdicts.push((
                screened.returned.len(),
                screened.withheld.first().map(|w| w.reason),
            ));
        }
        assert_eq!(
            verdicts,
            [
                (2, None),
                (2, None),
                (1, Some(WithholdReason::LoopDetected)),
                (1, Some(WithholdReason::LoopDetected))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_are_forgotten() {
        let runs = tracker();
        runs.admit("strict", "t", "r", false).unwrap();
        tokio::time::advance(Duration::from_secs(3601)).await;
        runs.admit("a", "t", "other", false).unwrap();
        assert!(runs.usage("t", "r").is_none());
        runs.admit("strict", "t", "r", false).unwrap();
    }
}
