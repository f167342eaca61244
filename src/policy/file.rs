//! The policy file (`routing/policy.yaml`) exactly as written: unknown keys are refused
//! and every default is a named constant. `super::compile` validates it into a
//! `Policy`. The raw form is also what the snapshot id hashes, defaults filled in, so
//! comments and layout do not change it but every meaningful edit does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long an approval ticket stays open: one working day.
pub const DEFAULT_APPROVAL_TTL_SECONDS: u64 = 24 * 60 * 60;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Decision when no rule matches; allowlist-first.
    #[serde(default = "default_decision")]
    pub default: String,
    /// Every tool warden knows, by name; tools not listed are unknown (tier 3).
    #[serde(default)]
    pub tools: BTreeMap<String, RawTool>,
    /// Per-tenant facts rules can refer to (`$tenant.domains`).
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// First match wins.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub approvals: RawApprovals,
    #[serde(default)]
    pub output: RawOutput,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// 0 read-only, 1 reversible write, 2 consequential write, 3 irreversible.
    pub tier: u8,
    #[serde(default)]
    pub tags: Vec<String>,
    /// JSON schema the arguments must satisfy, on top of the one the request declares.
    #[serde(default)]
    pub schema: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant's own e-mail and web domains (`*.example.com` for subdomains).
    #[serde(default)]
    pub domains: Vec<String>,
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default, rename = "match")]
    pub matches: RawMatch,
    /// ALLOW, DENY, REQUIRE_APPROVAL or ALLOW_WITH_CONSTRAINTS.
    pub decision: String,
    /// Told to the agent and the operator.
    pub reason: String,
    #[serde(default)]
    pub constraints: Option<RawConstraints>,
    /// Lets a `guarded` agent run the tier-3 tools this rule names.
    #[serde(default)]
    pub break_glass: bool,
}

/// Every field given must match; a list matches any of its entries.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Tool names or globs (`db_*`), compared after normalisation.
    pub tool: Option<OneOrMany<String>>,
    pub agent: Option<OneOrMany<String>>,
    pub role: Option<OneOrMany<String>>,
    pub tenant: Option<OneOrMany<String>>,
    /// Request labels (`env: prod`), from the request's metadata.
    #[serde(default)]
    pub labels: BTreeMap<String, OneOrMany<String>>,
    /// Risk tiers of the tool (unknown tools are tier 3).
    pub tier: Option<OneOrMany<u8>>,
    /// Catalog tags of the tool; any of them.
    pub tags: Option<OneOrMany<String>>,
    /// Conditions on the arguments; all of them.
    #[serde(default)]
    pub args: Vec<RawCondition>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub path: String,
    /// ==, !=, <, <=, >, >=, in, not_in, matches, exists, host_in.
    pub op: String,
    #[serde(default)]
    pub value: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConstraints {
    /// Argument path → hosts its URL or address may point to.
    #[serde(default)]
    pub allowed_hosts: BTreeMap<String, Vec<String>>,
    /// Argument path → the largest value allowed.
    #[serde(default)]
    pub max: BTreeMap<String, f64>,
    /// A timeout argument capped (and set when absent).
    #[serde(default)]
    pub timeout: Option<RawTimeout>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeout {
    pub path: String,
    pub max_seconds: f64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// After this, a pending ticket is expired (rejected) and an approved one can no
    /// longer be redeemed.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

impl Default for RawApprovals {
    fn default() -> Self {
        Self {
            ttl_seconds: DEFAULT_APPROVAL_TTL_SECONDS,
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Detector → allow, redact or quarantine; detectors not listed are redacted
    /// (`compile::BUILT_IN_OUTPUT_ACTION`).
    #[serde(default)]
    pub detectors: BTreeMap<String, String>,
    /// Agent → detector → action, overriding `detectors` for that agent.
    #[serde(default)]
    pub agents: BTreeMap<String, BTreeMap<String, String>>,
}

fn default_decision() -> String {
    "DENY".into()
}

fn default_ttl() -> u64 {
    DEFAULT_APPROVAL_TTL_SECONDS
}
