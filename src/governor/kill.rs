//! Kill switches: an operator stops all traffic, a tenant's or an agent's, until the
//! switch is cleared. They take effect for the next request and for queued ones.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What a kill switch covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "scope", content = "id", rename_all = "snake_case")]
pub enum KillScope {
    Global,
    Tenant(String),
    Agent(String),
}

impl fmt::Display for KillScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillScope::Global => f.write_str("global"),
            KillScope::Tenant(id) => write!(f, "tenant `{id}`"),
            KillScope::Agent(id) => write!(f, "agent `{id}`"),
        }
    }
}

/// Why and since when a switch is engaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KillSwitch {
    pub reason: String,
    pub engaged_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KillSwitches {
    global: Option<KillSwitch>,
    tenants: BTreeMap<String, KillSwitch>,
    agents: BTreeMap<String, KillSwitch>,
}

impl KillSwitches {
    /// Engages (or re-engages, with the new reason) the switch for `scope`.
    pub fn engage(&mut self, scope: &KillScope, switch: KillSwitch) {
        match scope {
            KillScope::Global => self.global = Some(switch),
            KillScope::Tenant(id) => {
                self.tenants.insert(id.clone(), switch);
            }
            KillScope::Agent(id) => {
                self.agents.insert(id.clone(), switch);
            }
        }
    }

    /// Clears the switch for `scope`; returns it if it was engaged.
    pub fn clear(&mut self, scope: &KillScope) -> Option<KillSwitch> {
        match scope {
            KillScope::Global => self.global.take(),
            KillScope::Tenant(id) => self.tenants.remove(id),
            KillScope::Agent(id) => self.agents.remove(id),
        }
    }

    /// The switch that stops `agent` of `tenant`, the widest first.
    pub fn stopping(&self, agent: &str, tenant: &str) -> Option<(KillScope, &KillSwitch)> {
        if let Some(switch) = &self.global {
            return Some((KillScope::Global, switch));
        }
        if let Some(switch) = self.tenants.get(tenant) {
            return Some((KillScope::Tenant(tenant.to_string()), switch));
        }
        self.agents
            .get(agent)
            .map(|switch| (KillScope::Agent(agent.to_string()), switch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(reason: &str) -> KillSwitch {
        KillSwitch {
            reason: reason.into(),
            engaged_at: Utc::now(),
        }
    }

    #[test]
    fn the_widest_engaged_switch_is_the_one_reported() {
        let mut switches = KillSwitches::default();
        assert!(switches.stopping("a", "t").is_none());
        switches.engage(&KillScope::Agent("a".into()), switch("loop"));
        assert_eq!(
            switches.stopping("a", "t").unwrap().0,
            KillScope::Agent("a".into())
        );
        assert!(switches.stopping("b", "t").is_none());
        switches.engage(&KillScope::Tenant("t".into()), switch("bill"));
        assert_eq!(
            switches.stopping("b", "t").unwrap().0,
            KillScope::Tenant("t".into())
        );
        switches.engage(&KillScope::Global, switch("outage"));
        assert_eq!(switches.stopping("z", "u").unwrap().1.reason, "outage");
        assert!(switches.clear(&KillScope::Global).is_some());
        assert!(switches.clear(&KillScope::Global).is_none());
        assert!(switches.stopping("z", "u").is_none());
    }
}
