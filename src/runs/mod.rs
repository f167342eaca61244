//! Runs: the requests that share a `run_id` (`x-run-id` or `metadata.run_id`), and what
//! they may spend together. A request is admitted only while its run is within every
//! budget (steps, tool calls, wall time, cost). The tool-call gate asks the run about
//! every call policy lets through: one proposed more than `max_repeated_tool_calls`
//! times (a loop) or past the tool-call budget is refused and never reaches the agent.
//!
//! Runs are keyed by tenant and run id, so one tenant's run ids never touch another's.
//! State lives in memory and is rebuilt from the audit log at start-up
//! ([`RunTracker::restore`]); a run idle for `runs.idle_expiry_s` is forgotten.
//!
//! Admission counts the step at once, so concurrent requests of one run cannot all slip
//! under the step budget; cost is known only at completion, so a run can overshoot its
//! cost budget by the requests in flight when it crossed it, and is then refused.

pub mod limits;

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

use crate::audit::query::{self, Filter};
use crate::audit::read::AuditRecord;
use crate::audit::record::REQUEST_KIND;
use crate::audit::{AuditError, RequestRecord, RequestStatus};

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
    /// How often each call (by the hash policy gives it) was proposed.
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

/// Why the run keeps a call from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithholdReason {
    LoopDetected,
    RunBudgetExceeded,
}

/// A call the run keeps from the agent: why, and the sentence the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub reason: WithholdReason,
    pub detail: String,
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

    /// Counts one call that policy let through (`name`, and `call_hash`, the hash
    /// policy gave it) and says whether it may reach the agent: not when this exact
    /// call has been proposed more than `max_repeated_tool_calls` times in the run, nor
    /// once the run has received its `max_tool_calls`.
    pub fn check_call(
        &self,
        ticket: &RunTicket,
        name: &str,
        call_hash: &str,
    ) -> Result<(), Withheld> {
        let mut state = self
            .runs
            .entry(ticket.key.clone())
            .or_insert_with(|| RunState::new(Instant::now()));
        let limits = &ticket.limits;
        let proposed = {
            let count = state.proposals.entry(call_hash.to_string()).or_insert(0);
            *count += 1;
            *count
        };
        if proposed > limits.max_repeated_tool_calls {
            return Err(Withheld {
                reason: WithholdReason::LoopDetected,
                detail: format!(
                    "`{name}` with these arguments was proposed {proposed} times in run `{}`; the limit is {}",
                    ticket.key.run_id, limits.max_repeated_tool_calls
                ),
            });
        }
        if state.tool_calls >= limits.max_tool_calls {
            return Err(Withheld {
                reason: WithholdReason::RunBudgetExceeded,
                detail: format!(
                    "run `{}` has received its {} tool calls (`max_tool_calls`)",
                    ticket.key.run_id, limits.max_tool_calls
                ),
            });
        }
        state.tool_calls += 1;
        Ok(())
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
            match AuditRecord::parse(value) {
                Ok(AuditRecord::Request(record)) => {
                    let age = (now - record.received_at).to_std().unwrap_or_default();
                    self.restore(&record, age);
                    replayed += 1;
                }
                Ok(_) => {}
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

    /// Whether the run lets `hash` through, or why not.
    fn check(runs: &RunTracker, ticket: &RunTicket, hash: &str) -> Option<WithholdReason> {
        runs.check_call(ticket, "lookup", hash)
            .err()
            .map(|withheld| withheld.reason)
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
        assert_eq!(check(&runs, &ticket, "q1"), None);
        assert_eq!(check(&runs, &ticket, "q2"), None);
        let ticket = runs.admit("a", "t", "r", false).unwrap();
        assert_eq!(
            check(&runs, &ticket, "q3"),
            Some(WithholdReason::RunBudgetExceeded)
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
            verdicts.push((
                check(&runs, &ticket, "same"),
                check(&runs, &ticket, &format!("other {step}")),
            ));
        }
        let looped = Some(WithholdReason::LoopDetected);
        assert_eq!(
            verdicts,
            [(None, None), (None, None), (looped, None), (looped, None)]
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
