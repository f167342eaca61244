//! Deciding one tool call: which tool it is, whether its arguments are well formed and
//! fit the schemas, which rule matches first, what the rule's constraints and the
//! agent's autonomy mode make of it. Pure: no I/O, no clock.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::{self, ArgumentsError};
use super::autonomy::{AutonomyMode, MAX_TIER};
use super::condition::{Caller, Condition};
use super::constraint::Constraint;
use super::hosts::HostPattern;
use super::names::{fold, NamePattern};
use super::output::OutputPolicy;
use super::risk::RiskSignals;
use crate::chat::{MalformedToolCall, ToolCall, ToolSpec};

/// The four decisions, in rising strictness: combining two, the later one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Allow,
    AllowWithConstraints,
    RequireApproval,
    Deny,
}

impl Verdict {
    pub const NAMES: &'static str = "ALLOW, DENY, REQUIRE_APPROVAL or ALLOW_WITH_CONSTRAINTS";

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ALLOW" => Some(Verdict::Allow),
            "ALLOW_WITH_CONSTRAINTS" => Some(Verdict::AllowWithConstraints),
            "REQUIRE_APPROVAL" => Some(Verdict::RequireApproval),
            "DENY" => Some(Verdict::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "ALLOW",
            Verdict::AllowWithConstraints => "ALLOW_WITH_CONSTRAINTS",
            Verdict::RequireApproval => "REQUIRE_APPROVAL",
            Verdict::Deny => "DENY",
        }
    }

    /// Whether a rule with this decision lets calls through.
    pub fn permissive(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::AllowWithConstraints)
    }
}

/// Why a call got its decision, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A rule matched.
    Rule,
    /// No rule matched.
    Default,
    /// The agent's autonomy mode was stricter than the rule.
    Autonomy,
    /// The request did not offer a tool of that name.
    UndeclaredTool,
    /// The name matches more than one offered tool once normalised.
    AmbiguousTool,
    MalformedArguments,
    DuplicateKey,
    ArgumentsNotObject,
    SchemaViolation,
    ConstraintViolated,
    /// The backend's call could not be read as a call at all (no name, a stream that
    /// contradicts itself, an unclosed block).
    MalformedCall,
    /// The run proposed this exact call more often than `max_repeated_tool_calls`.
    LoopDetected,
    /// The run has received its `max_tool_calls`.
    RunBudgetExceeded,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Rule => "rule",
            ReasonCode::Default => "default",
            ReasonCode::Autonomy => "autonomy",
            ReasonCode::UndeclaredTool => "undeclared_tool",
            ReasonCode::AmbiguousTool => "ambiguous_tool",
            ReasonCode::MalformedArguments => "malformed_arguments",
            ReasonCode::DuplicateKey => "duplicate_key",
            ReasonCode::ArgumentsNotObject => "arguments_not_object",
            ReasonCode::SchemaViolation => "schema_violation",
            ReasonCode::ConstraintViolated => "constraint_violated",
            ReasonCode::MalformedCall => "malformed_call",
            ReasonCode::LoopDetected => "loop_detected",
            ReasonCode::RunBudgetExceeded => "run_budget_exceeded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub code: ReasonCode,
    /// The rule that matched, if one did.
    pub rule: Option<String>,
    pub reason: String,
    /// The constraint that was violated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
}

impl Decision {
    /// A refusal that needs no rule: malformed calls, and any check outside the rules
    /// (run-level loop detection, say) that must stop a call.
    pub fn refuse(code: ReasonCode, reason: impl Into<String>) -> Self {
        Decision {
            verdict: Verdict::Deny,
            code,
            rule: None,
            reason: reason.into(),
            constraint: None,
        }
    }
}

/// Who a call is decided for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub agent: &'a str,
    pub tenant: &'a str,
    pub role: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    pub autonomy: AutonomyMode,
}

/// A call after the decision: what the agent would receive if it is let through.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedCall {
    pub id: String,
    /// The name as the model wrote it.
    pub proposed_name: String,
    /// The offered tool it resolved to (or the normalised name when none was offered).
    pub tool: String,
    /// Canonical arguments, constraints applied; the raw text when unparseable.
    pub arguments: String,
    /// Hash of the normalised name and the canonical arguments.
    pub hash: String,
    pub tier: u8,
    pub decision: Decision,
}

impl CheckedCall {
    /// The call as it reaches the agent.
    pub fn to_tool_call(&self) -> ToolCall {
        ToolCall {
            id: self.id.clone(),
            name: self.tool.clone(),
            arguments: self.arguments.clone(),
        }
    }
}

pub struct CatalogTool {
    pub name: String,
    pub tier: u8,
    pub tags: Vec<String>,
    pub schema: Option<Arc<jsonschema::Validator>>,
}

pub struct Rule {
    pub id: String,
    pub tools: Option<Vec<NamePattern>>,
    pub agents: Option<Vec<NamePattern>>,
    pub roles: Option<Vec<NamePattern>>,
    pub tenants: Option<Vec<NamePattern>>,
    pub labels: Vec<(String, Vec<String>)>,
    pub tiers: Option<Vec<u8>>,
    pub tags: Option<Vec<String>>,
    pub conditions: Vec<Condition>,
    pub verdict: Verdict,
    pub reason: String,
    pub constraints: Vec<Constraint>,
    pub break_glass: bool,
}

impl Rule {
    fn names_tool(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(tool)))
    }
}

/// A loaded, validated policy: one snapshot.
pub struct Policy {
    pub(super) snapshot: String,
    pub(super) default: Verdict,
    /// By normalised name.
    pub(super) tools: HashMap<String, CatalogTool>,
    pub(super) rules: Vec<Rule>,
    /// Normalised tool name → the rules that can match it, in order; built for every
    /// name the policy mentions, so deciding a known tool never scans all rules.
    pub(super) index: HashMap<String, Vec<usize>>,
    /// The rules that can match a name the policy never mentions (no tool filter, or a
    /// glob), in order: all an unknown tool has to be tried against.
    pub(super) unindexed: Vec<usize>,
    pub(super) tenants: HashMap<String, Vec<HostPattern>>,
    pub(super) approval_ttl: Duration,
    pub(super) output: OutputPolicy,
    pub(super) risk: RiskSignals,
}

impl Policy {
    /// The canonical hash of the policy: stamped on every decision and ticket.
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }

    pub fn approval_ttl(&self) -> Duration {
        self.approval_ttl
    }

    pub fn output(&self) -> &OutputPolicy {
        &self.output
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn catalog(&self) -> impl Iterator<Item = &CatalogTool> {
        self.tools.values()
    }

    /// The tier of a tool by any spelling of its name; unknown tools are tier 3.
    pub fn tier_of(&self, name: &str) -> u8 {
        self.tools
            .get(&fold(name))
            .map_or(MAX_TIER, |tool| tool.tier)
    }

    /// The refusal of something proposed as a call that cannot be read as one: it gets
    /// an identity (its raw text's hash) and a record like any refused call.
    pub fn refuse_malformed(&self, call: &MalformedToolCall) -> CheckedCall {
        let folded = fold(&call.name);
        CheckedCall {
            id: call.id.clone(),
            proposed_name: call.name.clone(),
            hash: args::raw_call_hash(&folded, &call.arguments),
            tier: self.tools.get(&folded).map_or(MAX_TIER, |tool| tool.tier),
            tool: folded,
            arguments: call.arguments.clone(),
            decision: Decision::refuse(ReasonCode::MalformedCall, call.problem.clone()),
        }
    }

    /// Decides one call. `declared` is what the request offered: the call must name
    /// one of those tools and fit its schema. `None` (operator tools: `policy test`,
    /// `policy replay`) skips that step.
    pub fn check(
        &self,
        call: &ToolCall,
        declared: Option<&[ToolSpec]>,
        subject: &Subject,
    ) -> CheckedCall {
        let folded = fold(&call.name);
        let catalog = self.tools.get(&folded);
        let tier = catalog.map_or(MAX_TIER, |tool| tool.tier);
        let refused = |tool: String, decision: Decision| CheckedCall {
            id: call.id.clone(),
            proposed_name: call.name.clone(),
            hash: args::raw_call_hash(&folded, &call.arguments),
            tool,
            arguments: call.arguments.clone(),
            tier,
            decision,
        };
        let (tool, declared_schema) = match declared.map(|tools| offered(tools, &folded)) {
            None => (folded.clone(), None),
            Some(Offered::Tool(spec)) => (spec.name.clone(), Some(&spec.parameters)),
            Some(Offered::None) => {
                let reason = format!("the request did not offer a tool named `{}`", call.name);
                return refused(
                    folded.clone(),
                    Decision::refuse(ReasonCode::UndeclaredTool, reason),
                );
            }
            Some(Offered::Several) => {
                let reason = format!(
                    "`{}` matches more than one offered tool once normalised",
                    call.name
                );
                return refused(
                    folded.clone(),
                    Decision::refuse(ReasonCode::AmbiguousTool, reason),
                );
            }
        };
        let arguments = match args::parse_object(&call.arguments) {
            Ok(arguments) => arguments,
            Err(error) => {
                let code = match error {
                    ArgumentsError::NotJson(_) => ReasonCode::MalformedArguments,
                    ArgumentsError::DuplicateKey(_) => ReasonCode::DuplicateKey,
                    ArgumentsError::NotAnObject(_) => ReasonCode::ArgumentsNotObject,
                };
                return refused(tool, Decision::refuse(code, error.to_string()));
            }
        };
        let mut arguments = Value::Object(arguments);
        let canonical = args::canonical(&arguments);
        let mut checked = CheckedCall {
            id: call.id.clone(),
            proposed_name: call.name.clone(),
            hash: args::call_hash(&folded, &canonical),
            tool,
            arguments: canonical,
            tier,
            decision: Decision::refuse(ReasonCode::Default, ""),
        };
        let schema_error = declared_schema
            .and_then(|schema| fits_declared(schema, &arguments).err())
            .or_else(|| {
                let validator = catalog.and_then(|tool| tool.schema.as_ref())?;
                let error = validator.iter_errors(&arguments).next()?;
                Some(format!(
                    "the arguments break the catalog schema at `{}`: {error}",
                    error.instance_path()
                ))
            });
        if let Some(reason) = schema_error {
            checked.decision = Decision::refuse(ReasonCode::SchemaViolation, reason);
            return checked;
        }
        let (decision, completed) = self.decide(&folded, catalog, tier, &mut arguments, subject);
        checked.decision = decision;
        // Constraints may have filled in arguments (a timeout): the agent gets those,
        // and the hash stays the one of the call the model proposed.
        if completed && checked.decision.verdict != Verdict::Deny {
            checked.arguments = args::canonical(&arguments);
        }
        checked
    }

    /// Rules, constraints and the autonomy mode, for well-formed arguments.
    fn decide(
        &self,
        tool: &str,
        catalog: Option<&CatalogTool>,
        tier: u8,
        arguments: &mut Value,
        subject: &Subject,
    ) -> (Decision, bool) {
        let caller = Caller {
            agent: subject.agent,
            tenant: subject.tenant,
            domains: self.tenants.get(subject.tenant).map_or(&[], Vec::as_slice),
        };
        let candidates: Cow<[usize]> = match self.index.get(tool) {
            Some(indexed) => Cow::Borrowed(indexed),
            None => Cow::Owned(
                self.unindexed
                    .iter()
                    .copied()
                    .filter(|&i| self.rules[i].names_tool(tool))
                    .collect(),
            ),
        };
        let matched = candidates
            .iter()
            .map(|&i| &self.rules[i])
            .find(|rule| rule_matches(rule, catalog, tier, arguments, subject, &caller));
        let (mut decision, break_glass) = match matched {
            Some(rule) => (
                Decision {
                    verdict: rule.verdict,
                    code: ReasonCode::Rule,
                    rule: Some(rule.id.clone()),
                    reason: rule.reason.clone(),
                    constraint: None,
                },
                rule.break_glass,
            ),
            None => (
                Decision {
                    verdict: self.default,
                    code: ReasonCode::Default,
                    rule: None,
                    reason: format!(
                        "no rule matches `{tool}`; the default is {}",
                        self.default.as_str()
                    ),
                    constraint: None,
                },
                false,
            ),
        };
        let constrained = matched.filter(|rule| rule.verdict == Verdict::AllowWithConstraints);
        if let Some(rule) = constrained {
            for constraint in &rule.constraints {
                if let Err(violation) = constraint.apply(arguments) {
                    let decision = Decision {
                        verdict: Verdict::Deny,
                        code: ReasonCode::ConstraintViolated,
                        rule: Some(rule.id.clone()),
                        reason: format!(
                            "constraint `{}` violated: {}",
                            violation.constraint, violation.detail
                        ),
                        constraint: Some(violation.constraint),
                    };
                    return (decision, false);
                }
            }
        }
        if let Some((ceiling, reason)) = subject.autonomy.ceiling(tier, break_glass) {
            if ceiling > decision.verdict {
                decision.verdict = ceiling;
                decision.code = ReasonCode::Autonomy;
                decision.reason = reason;
            }
        }
        (decision, constrained.is_some())
    }
}

enum Offered<'a> {
    Tool(&'a ToolSpec),
    None,
    Several,
}

fn offered<'a>(tools: &'a [ToolSpec], folded: &str) -> Offered<'a> {
    let mut found = tools.iter().filter(|tool| fold(&tool.name) == folded);
    match (found.next(), found.next()) {
        (Some(tool), None) => Offered::Tool(tool),
        (None, _) => Offered::None,
        (Some(_), Some(_)) => Offered::Several,
    }
}

/// Whether `call` names one of the `offered` tools and its arguments fit that tool's
/// schema, read as the gate reads them (names folded, arguments an object without
/// repeated keys): routing asks this of a local answer, so it escalates exactly the
/// calls the gate would refuse for their shape.
pub fn fits_offered(call: &ToolCall, offered_tools: &[ToolSpec]) -> bool {
    let Offered::Tool(spec) = offered(offered_tools, &fold(&call.name)) else {
        return false;
    };
    args::parse_object(&call.arguments)
        .is_ok_and(|arguments| fits_declared(&spec.parameters, &Value::Object(arguments)).is_ok())
}

fn fits_declared(schema: &Value, arguments: &Value) -> Result<(), String> {
    let validator = crate::schema::compiled(schema)
        .map_err(|error| format!("the schema the request declared is not usable: {error}"))?;
    let first = validator.iter_errors(arguments).next().map(|error| {
        format!(
            "the arguments do not fit the declared schema at `{}`: {error}",
            error.instance_path()
        )
    });
    first.map_or(Ok(()), Err)
}

fn any_pattern(patterns: &Option<Vec<NamePattern>>, value: Option<&str>) -> bool {
    match patterns {
        None => true,
        Some(patterns) => value.is_some_and(|value| patterns.iter().any(|p| p.matches(value))),
    }
}

fn rule_matches(
    rule: &Rule,
    catalog: Option<&CatalogTool>,
    tier: u8,
    arguments: &Value,
    subject: &Subject,
    caller: &Caller,
) -> bool {
    any_pattern(&rule.agents, Some(subject.agent))
        && any_pattern(&rule.tenants, Some(subject.tenant))
        && any_pattern(&rule.roles, subject.role)
        && rule.labels.iter().all(|(key, values)| {
            subject
                .labels
                .get(key)
                .is_some_and(|value| values.iter().any(|v| v == value))
        })
        && rule
            .tiers
            .as_ref()
            .is_none_or(|tiers| tiers.contains(&tier))
        && rule.tags.as_ref().is_none_or(|tags| {
            catalog.is_some_and(|tool| tool.tags.iter().any(|tag| tags.contains(tag)))
        })
        && rule
            .conditions
            .iter()
            .all(|condition| condition.holds(arguments, caller, rule.verdict.permissive()))
}
