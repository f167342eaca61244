//! The `audit:` and `runs:` sections (and each agent's `runs:`), validated.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;

use super::raw::{self, RawAudit, RawRunLimits, RawRuns};
use super::Invalid;
use crate::audit::AuditConfig;
use crate::runs::{RunLimits, RunsConfig};

/// Group commits wait at most this long: a request is acknowledged only after its commit.
const MAX_COMMIT_DELAY_US: u64 = 1_000_000;
/// A run lasts at most a year, and is forgotten a year after its last request at the
/// latest: past that a figure is a typo, and deadlines that far out overflow clocks.
const MAX_RUN_SECONDS: u64 = 366 * 24 * 3600;
/// Smaller segments would rotate every few records.
const MIN_SEGMENT_BYTES: u64 = 4096;

pub fn validate_audit(audit: RawAudit, base: &Path) -> Result<AuditConfig, Invalid> {
    if audit.commit_delay_us > MAX_COMMIT_DELAY_US {
        return Err((
            "audit.commit_delay_us".into(),
            format!("must be at most {MAX_COMMIT_DELAY_US} (one second): requests wait for it"),
        ));
    }
    if audit.max_batch == 0 {
        return Err(("audit.max_batch".into(), "must be at least 1".into()));
    }
    if audit.segment_bytes < MIN_SEGMENT_BYTES {
        return Err((
            "audit.segment_bytes".into(),
            format!("must be at least {MIN_SEGMENT_BYTES}"),
        ));
    }
    if audit.dir.trim().is_empty() {
        return Err(("audit.dir".into(), "must name a folder".into()));
    }
    Ok(AuditConfig {
        dir: base.join(audit.dir),
        fsync: audit.fsync,
        commit_delay: Duration::from_micros(audit.commit_delay_us),
        max_batch: audit.max_batch,
        segment_bytes: audit.segment_bytes,
        store_text: audit.store_text,
    })
}

/// `agents` pairs each agent's index and id with its own `runs:`, if any.
pub fn validate_runs(
    runs: RawRuns,
    agents: Vec<(usize, String, Option<RawRunLimits>)>,
) -> Result<RunsConfig, Invalid> {
    let builtin = RunLimits {
        max_steps: raw::DEFAULT_RUN_MAX_STEPS,
        max_tool_calls: raw::DEFAULT_RUN_MAX_TOOL_CALLS,
        max_wall_time: Duration::from_secs(raw::DEFAULT_RUN_MAX_WALL_TIME_S),
        max_cost_usd: Decimal::new(raw::DEFAULT_RUN_MAX_COST_CENTS, 2),
        max_repeated_tool_calls: raw::DEFAULT_RUN_MAX_REPEATED_TOOL_CALLS,
    };
    let defaults = limits(&runs.defaults, &builtin, "runs.defaults")?;
    let mut per_agent = HashMap::new();
    for (index, id, own) in agents {
        if let Some(own) = own {
            let limits = limits(&own, &defaults, &format!("agents[{index}].runs"))?;
            per_agent.insert(id, limits);
        }
    }
    let idle_expiry_s = runs.idle_expiry_s.unwrap_or(raw::DEFAULT_RUN_IDLE_EXPIRY_S);
    if idle_expiry_s > MAX_RUN_SECONDS {
        return Err((
            "runs.idle_expiry_s".into(),
            format!("must be at most {MAX_RUN_SECONDS} (a year)"),
        ));
    }
    let idle_expiry = Duration::from_secs(idle_expiry_s);
    let longest_run = per_agent
        .values()
        .chain(std::iter::once(&defaults))
        .map(|limits| limits.max_wall_time)
        .max()
        .unwrap_or_default();
    if idle_expiry < longest_run {
        return Err((
            "runs.idle_expiry_s".into(),
            format!(
                "must be at least the longest `max_wall_time_s` ({}s): a run forgotten while idle would start its clock again",
                longest_run.as_secs()
            ),
        ));
    }
    Ok(RunsConfig {
        defaults,
        per_agent,
        idle_expiry,
    })
}

fn limits(raw: &RawRunLimits, inherited: &RunLimits, section: &str) -> Result<RunLimits, Invalid> {
    let key = |field: &str| format!("{section}.{field}");
    let limits = RunLimits {
        max_steps: raw.max_steps.unwrap_or(inherited.max_steps),
        max_tool_calls: raw.max_tool_calls.unwrap_or(inherited.max_tool_calls),
        max_wall_time: raw
            .max_wall_time_s
            .map_or(inherited.max_wall_time, Duration::from_secs),
        max_cost_usd: raw.max_cost_usd.unwrap_or(inherited.max_cost_usd),
        max_repeated_tool_calls: raw
            .max_repeated_tool_calls
            .unwrap_or(inherited.max_repeated_tool_calls),
    };
    if limits.max_steps == 0 {
        return Err((key("max_steps"), "must be at least 1".into()));
    }
    if limits.max_wall_time.is_zero() || limits.max_wall_time.as_secs() > MAX_RUN_SECONDS {
        return Err((
            key("max_wall_time_s"),
            format!("must be between 1 and {MAX_RUN_SECONDS} (a year)"),
        ));
    }
    if limits.max_cost_usd.is_sign_negative() {
        return Err((key("max_cost_usd"), "must not be negative".into()));
    }
    if limits.max_repeated_tool_calls == 0 {
        return Err((
            key("max_repeated_tool_calls"),
            "must be at least 1: the first call of a kind is never a loop".into(),
        ));
    }
    Ok(limits)
}
