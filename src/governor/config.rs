//! The governor's validated configuration and its defaults: caps, queues, aging,
//! tenants' spend caps, and each agent's limits. `config` reads them from the file.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{PerClass, Priority, SpendCaps};

/// In-flight requests across every agent and backend.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Requests that may wait, per priority class, beyond which a request gets 429.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Longest wait in the governor's queue before a request gets 503.
pub const DEFAULT_GOVERNOR_QUEUE_TIMEOUT_MS: u64 = 30_000;
/// A waiting request gains one class per period: a P2 request ranks with new P0
/// requests after 10 s, well inside the queue timeout.
pub const DEFAULT_AGING_MS: u64 = 5_000;
/// What an agent may claim: what it asks for, unless the operator lowers its ceiling.
pub const DEFAULT_PRIORITY_CEILING: Priority = Priority::P0;
/// The class of a request that names none.
pub const DEFAULT_PRIORITY: Priority = Priority::P1;

#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    pub max_in_flight: usize,
    pub queue_capacity: PerClass<usize>,
    pub queue_timeout: Duration,
    /// A waiting request gains one class per `aging`.
    pub aging: Duration,
    /// Spend caps by tenant.
    pub tenants: BTreeMap<String, SpendCaps>,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue_capacity: PerClass([DEFAULT_QUEUE_CAPACITY; 3]),
            queue_timeout: Duration::from_millis(DEFAULT_GOVERNOR_QUEUE_TIMEOUT_MS),
            aging: Duration::from_millis(DEFAULT_AGING_MS),
            tenants: BTreeMap::new(),
        }
    }
}

/// What one agent may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    pub priority_ceiling: Priority,
    pub default_priority: Priority,
    pub max_concurrent: Option<usize>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub spend: SpendCaps,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            priority_ceiling: DEFAULT_PRIORITY_CEILING,
            default_priority: DEFAULT_PRIORITY.at_most(DEFAULT_PRIORITY_CEILING),
            max_concurrent: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            spend: SpendCaps::default(),
        }
    }
}
