//! The governor's configuration: the `governor:` section and each agent's limits,
//! validated with errors that name the key.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;

use super::raw::{self, RawAgent, RawGovernor};
use super::{AgentConfig, Config, Invalid};
use crate::governor::{
    AgentLimits, AgentSettings, GovernorConfig, GovernorSettings, PerClass, SpendCaps,
};

impl GovernorSettings {
    /// The `governor:` section and every agent's limits; backends are added with
    /// `backend`. Here, where the configuration is composed, so the governor never
    /// reads the whole of it.
    pub fn from_config(config: &Config) -> Self {
        Self {
            governor: config.governor.clone(),
            agents: config
                .agents
                .iter()
                .map(|agent| AgentSettings {
                    id: agent.id.clone(),
                    tenant: agent.tenant.clone(),
                    limits: agent.limits.clone(),
                })
                .collect(),
            backends: Vec::new(),
        }
    }
}

pub(super) fn validate_agent_limits(
    index: usize,
    agent: &RawAgent,
) -> Result<AgentLimits, Invalid> {
    let key = |field: &str| format!("agents[{index}].{field}");
    let priority_ceiling = agent
        .priority_ceiling
        .unwrap_or(raw::DEFAULT_PRIORITY_CEILING);
    let default_priority = match agent.default_priority {
        Some(asked) if asked < priority_ceiling => {
            return Err((
                key("default_priority"),
                format!("{asked} is above the agent's `priority_ceiling` {priority_ceiling}"),
            ))
        }
        Some(asked) => asked,
        None => raw::DEFAULT_PRIORITY.at_most(priority_ceiling),
    };
    let positive = |field: &str, value: Option<u64>| match value {
        Some(0) => Err((
            key(field),
            "must be at least 1 (leave it out for no limit)".into(),
        )),
        _ => Ok(value),
    };
    let max_concurrent =
        positive("max_concurrent", agent.max_concurrent.map(|n| n as u64))?.map(|n| n as usize);
    Ok(AgentLimits {
        priority_ceiling,
        default_priority,
        max_concurrent,
        requests_per_minute: positive("requests_per_minute", agent.requests_per_minute)?,
        tokens_per_minute: positive("tokens_per_minute", agent.tokens_per_minute)?,
        spend: spend_caps(
            &key("daily_spend_usd"),
            agent.daily_spend_usd,
            &key("monthly_spend_usd"),
            agent.monthly_spend_usd,
        )?,
    })
}

pub(super) fn validate_governor(
    raw: RawGovernor,
    agents: &[AgentConfig],
) -> Result<GovernorConfig, Invalid> {
    if raw.max_in_flight == 0 {
        return Err(("governor.max_in_flight".into(), "must be at least 1".into()));
    }
    let queue_timeout = super::wait_ms("governor.queue_timeout_ms", raw.queue_timeout_ms)?;
    if raw.aging_ms == 0 {
        return Err(("governor.aging_ms".into(), "must be at least 1".into()));
    }
    // The lowest class ranks with fresh top-class requests after two aging periods; a
    // queue timeout shorter than that would let P2 requests expire before aging helps.
    let promotion_ms = raw.aging_ms.saturating_mul(2);
    if promotion_ms >= raw.queue_timeout_ms {
        return Err((
            "governor.aging_ms".into(),
            format!(
                "a P2 request ranks with new P0 requests after 2 × aging_ms = {promotion_ms} ms, \
                 which must be below queue_timeout_ms ({} ms), or P2 requests time out before \
                 aging lifts them",
                raw.queue_timeout_ms
            ),
        ));
    }
    let mut tenants = BTreeMap::new();
    for (tenant, caps) in raw.tenants {
        let key = |field: &str| format!("governor.tenants.{tenant}.{field}");
        if !agents.iter().any(|agent| agent.tenant == tenant) {
            return Err((
                format!("governor.tenants.{tenant}"),
                format!("no agent under `agents` belongs to tenant `{tenant}`"),
            ));
        }
        let caps = spend_caps(
            &key("daily_spend_usd"),
            caps.daily_spend_usd,
            &key("monthly_spend_usd"),
            caps.monthly_spend_usd,
        )?;
        tenants.insert(tenant, caps);
    }
    let capacity = raw.queue_capacity;
    Ok(GovernorConfig {
        max_in_flight: raw.max_in_flight,
        queue_capacity: PerClass([capacity.p0, capacity.p1, capacity.p2]),
        queue_timeout,
        aging: Duration::from_millis(raw.aging_ms),
        tenants,
    })
}

fn spend_caps(
    daily_key: &str,
    daily: Option<Decimal>,
    monthly_key: &str,
    monthly: Option<Decimal>,
) -> Result<SpendCaps, Invalid> {
    for (key, cap) in [(daily_key, daily), (monthly_key, monthly)] {
        if cap.is_some_and(|cap| cap.is_sign_negative()) {
            return Err((key.to_string(), "must not be negative".into()));
        }
    }
    Ok(SpendCaps { daily, monthly })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;
    use crate::governor::Priority;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("routing/warden.yaml"))
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    const AGENT: &str = "agents:\n  - id: a\n    tenant: t\n    key_env: A\n";

    #[test]
    fn defaults_run_out_of_the_box() {
        let config = parse(AGENT).unwrap();
        assert_eq!(config.governor, GovernorConfig::default());
        let limits = &config.agents[0].limits;
        assert_eq!(limits, &AgentLimits::default());
        assert_eq!(limits.priority_ceiling, Priority::P0);
        assert_eq!(limits.default_priority, Priority::P1);
    }

    #[test]
    fn agent_limits_and_the_governor_section_are_read() {
        let config = parse(&format!(
            "{AGENT}    priority_ceiling: P1\n    max_concurrent: 2\n    requests_per_minute: 60\n    \
             tokens_per_minute: 10000\n    daily_spend_usd: \"1.50\"\n    monthly_spend_usd: 20\n\
             governor:\n  max_in_flight: 8\n  queue_capacity: {{P0: 4, P2: 0}}\n  queue_timeout_ms: 9000\n  \
             aging_ms: 4000\n  tenants:\n    t: {{monthly_spend_usd: \"100\"}}\n"
        ))
        .unwrap();
        let limits = &config.agents[0].limits;
        assert_eq!(limits.priority_ceiling, Priority::P1);
        assert_eq!(limits.default_priority, Priority::P1);
        assert_eq!(limits.max_concurrent, Some(2));
        assert_eq!(limits.requests_per_minute, Some(60));
        assert_eq!(limits.tokens_per_minute, Some(10_000));
        assert_eq!(limits.spend.daily, Some(Decimal::new(150, 2)));
        assert_eq!(limits.spend.monthly, Some(Decimal::from(20)));
        let governor = &config.governor;
        assert_eq!(governor.max_in_flight, 8);
        assert_eq!(
            governor.queue_capacity,
            PerClass([4, raw::DEFAULT_QUEUE_CAPACITY, 0])
        );
        assert_eq!(governor.queue_timeout, Duration::from_secs(9));
        assert_eq!(governor.aging, Duration::from_secs(4));
        assert_eq!(governor.tenants["t"].monthly, Some(Decimal::from(100)));
    }

    #[test]
    fn a_ceiling_below_the_default_lowers_the_default() {
        let config = parse(&format!("{AGENT}    priority_ceiling: P2\n")).unwrap();
        assert_eq!(config.agents[0].limits.default_priority, Priority::P2);
    }

    #[test]
    fn bad_values_name_their_key() {
        let agent = |extra: &str| invalid_key(&format!("{AGENT}    {extra}\n"));
        assert_eq!(agent("priority_ceiling: P5"), "agents[0].priority_ceiling");
        assert_eq!(
            agent("priority_ceiling: P1\n    default_priority: P0"),
            "agents[0].default_priority"
        );
        assert_eq!(agent("max_concurrent: 0"), "agents[0].max_concurrent");
        assert_eq!(
            agent("requests_per_minute: 0"),
            "agents[0].requests_per_minute"
        );
        assert_eq!(
            agent("tokens_per_minute: -1"),
            "agents[0].tokens_per_minute"
        );
        assert_eq!(
            agent("daily_spend_usd: \"-1\""),
            "agents[0].daily_spend_usd"
        );
        assert_eq!(
            agent("monthly_spend_usd: lots"),
            "agents[0].monthly_spend_usd"
        );
        let governor = |section: &str| invalid_key(&format!("{AGENT}governor:\n  {section}\n"));
        assert_eq!(governor("max_in_flight: 0"), "governor.max_in_flight");
        assert_eq!(governor("queue_timeout_ms: 0"), "governor.queue_timeout_ms");
        assert_eq!(governor("aging_ms: 0"), "governor.aging_ms");
        assert_eq!(
            governor("queue_timeout_ms: 10000\n  aging_ms: 5000"),
            "governor.aging_ms"
        );
        assert_eq!(
            governor("queue_capacity: {P3: 1}"),
            "governor.queue_capacity.P3"
        );
        assert_eq!(governor("tenants: {nobody: {}}"), "governor.tenants.nobody");
        assert_eq!(
            governor("tenants: {t: {daily_spend_usd: \"-2\"}}"),
            "governor.tenants.t.daily_spend_usd"
        );
        assert_eq!(governor("slots: 3"), "governor.slots");
    }
}
