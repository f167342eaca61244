//! What a run may spend: the limits configured per agent (with defaults), and the name
//! of each limit as a refusal reports it.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

/// The budgets of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Requests a run may make.
    pub max_steps: u32,
    /// Tool calls a run may receive.
    pub max_tool_calls: u32,
    /// Time from a run's first request after which it may make no more.
    pub max_wall_time: Duration,
    /// Dollars a run may spend; a request is refused once it has reached this.
    pub max_cost_usd: Decimal,
    /// The same tool call (same name and arguments) proposed more often than this in
    /// one run is withheld as a loop.
    pub max_repeated_tool_calls: u32,
}

/// The validated `runs:` section and the agents' own `runs:` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunsConfig {
    pub defaults: RunLimits,
    pub per_agent: HashMap<String, RunLimits>,
    /// A run without a request for this long is forgotten (and its budgets with it).
    pub idle_expiry: Duration,
}

impl RunsConfig {
    pub fn limits_for(&self, agent: &str) -> &RunLimits {
        self.per_agent.get(agent).unwrap_or(&self.defaults)
    }
}

/// A budget, named as in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunLimit {
    MaxSteps,
    MaxToolCalls,
    MaxWallTimeS,
    MaxCostUsd,
}

impl RunLimit {
    pub fn name(self) -> &'static str {
        match self {
            RunLimit::MaxSteps => "max_steps",
            RunLimit::MaxToolCalls => "max_tool_calls",
            RunLimit::MaxWallTimeS => "max_wall_time_s",
            RunLimit::MaxCostUsd => "max_cost_usd",
        }
    }
}

impl std::fmt::Display for RunLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
