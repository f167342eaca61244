//! What policy did to one response, as recorded in the `policy` field of the `warden`
//! object (and so in the audit log): the snapshot, the subject, every tool-call decision with its rule, hash and outcome, the output findings and
//! the tickets opened. `policy replay` reads these records back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::autonomy::AutonomyMode;
use super::decide::{CheckedCall, ReasonCode, Verdict};
use super::output::{Detector, OutputAction};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// The policy snapshot every decision below was taken under.
    pub snapshot: String,
    pub autonomy: AutonomyMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<DecisionRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<OutputRecord>,
    /// Approval tickets this response opened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tickets: Vec<String>,
}

/// What became of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// Sent to the agent.
    Delivered,
    /// Removed; the agent was told why.
    Refused,
    /// Withheld under a new approval ticket.
    Held,
    /// Needed approval and an approved ticket for this exact call was redeemed.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub call_id: String,
    /// The name as the model wrote it.
    pub name: String,
    /// The tool it resolved to.
    pub tool: String,
    /// Canonical arguments (as delivered when constraints completed them).
    pub arguments: String,
    pub call_hash: String,
    pub tier: u8,
    pub verdict: Verdict,
    pub code: ReasonCode,
    pub rule: Option<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    pub snapshot: String,
    pub outcome: CallOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The choice that proposed the call, when the request asked for several (`n`).
    #[serde(default, skip_serializing_if = "crate::chat::is_first_choice")]
    pub choice: u32,
}

impl DecisionRecord {
    pub fn new(
        checked: &CheckedCall,
        snapshot: &str,
        outcome: CallOutcome,
        ticket: Option<String>,
        choice: u32,
    ) -> Self {
        Self {
            call_id: checked.id.clone(),
            name: checked.proposed_name.clone(),
            tool: checked.tool.clone(),
            arguments: checked.arguments.clone(),
            call_hash: checked.hash.clone(),
            tier: checked.tier,
            verdict: checked.decision.verdict,
            code: checked.decision.code,
            rule: checked.decision.rule.clone(),
            reason: checked.decision.reason.clone(),
            constraint: checked.decision.constraint.clone(),
            snapshot: snapshot.to_string(),
            outcome,
            ticket,
            choice,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub detector: Detector,
    pub action: OutputAction,
    pub count: u32,
}
