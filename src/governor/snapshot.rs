//! What `GET /admin/governor` shows: in flight, queued by class, waits, limits, spend
//! and kill switches, as one consistent picture taken under the governor's lock.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::kill::KillSwitches;
use super::{PerClass, Priority};

#[derive(Debug, Clone, Serialize)]
pub struct GovernorSnapshot {
    pub in_flight: usize,
    pub queued: PerClass<usize>,
    pub waits: PerClass<ClassWaits>,
    pub limits: LimitsView,
    pub backends: BTreeMap<String, BackendView>,
    pub agents: BTreeMap<String, AgentView>,
    pub tenants: BTreeMap<String, SpendView>,
    pub kill_switches: KillSwitches,
}

/// Waits of one class since start: admitted requests, and the one waiting longest now.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClassWaits {
    pub admitted: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub oldest_queued_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub max_in_flight: usize,
    pub queue_capacity: PerClass<usize>,
    pub queue_timeout_ms: u64,
    pub aging_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub in_flight: usize,
    /// Generations the backend may run at once; absent when only the global cap applies.
    pub limit: Option<usize>,
    /// Recent mean time a permit was held (what `Retry-After` estimates are made from).
    pub mean_service_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub tenant: String,
    pub in_flight: usize,
    pub queued: usize,
    pub priority_ceiling: Priority,
    pub default_priority: Priority,
    pub max_concurrent: Option<usize>,
    pub requests_per_minute: Option<u64>,
    /// Requests the agent may start now under its per-minute limit.
    pub requests_available: Option<f64>,
    pub tokens_per_minute: Option<u64>,
    /// Tokens left in the agent's bucket (negative while paying back a large completion).
    pub tokens_available: Option<f64>,
    pub spend: SpendView,
}

/// Spend in US dollars in the current UTC day and month, against the caps.
#[derive(Debug, Clone, Serialize)]
pub struct SpendView {
    pub today_usd: Decimal,
    pub this_month_usd: Decimal,
    pub daily_cap_usd: Option<Decimal>,
    pub monthly_cap_usd: Option<Decimal>,
}
