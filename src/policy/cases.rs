//! `warden policy test`: a table of calls and the decisions they must get. Each case
//! names the call (arguments as an object, or as raw text to try malformed input),
//! optionally the tools the request offered, and who calls; the expected decision,
//! and optionally the rule, reason code, constraint and delivered arguments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use super::args::{canonical, parse_object};
use super::autonomy::AutonomyMode;
use super::decide::{Policy, ReasonCode, Subject, Verdict};
use crate::chat::{ToolCall, ToolSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub defaults: Caller,
    pub cases: Vec<Case>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    pub agent: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
    pub autonomy: Option<AutonomyMode>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub tool: String,
    /// An object, or a string taken as the raw arguments text.
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Tools the request offered: name → parameters schema.
    #[serde(default)]
    pub offered: Option<BTreeMap<String, Value>>,
    #[serde(flatten)]
    pub caller: Caller,
    pub expect: String,
    pub rule: Option<String>,
    pub code: Option<ReasonCode>,
    pub constraint: Option<String>,
    /// The arguments the agent would receive.
    pub delivered: Option<Value>,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub expected: String,
    pub got: Verdict,
    pub rule: Option<String>,
    pub code: ReasonCode,
    /// Why it failed, if it did.
    pub mismatch: Option<String>,
}

pub fn load(path: &Path) -> anyhow::Result<CaseFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let deserializer = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        anyhow::anyhow!("{}: `{}`: {}", path.display(), error.path(), error.inner())
    })
}

pub fn run(policy: &Policy, file: &CaseFile) -> Vec<CaseResult> {
    file.cases
        .iter()
        .map(|case| run_case(policy, &file.defaults, case))
        .collect()
}

fn run_case(policy: &Policy, defaults: &Caller, case: &Case) -> CaseResult {
    let pick =
        |own: &Option<String>, default: &Option<String>| own.clone().or_else(|| default.clone());
    let agent = pick(&case.caller.agent, &defaults.agent).unwrap_or_else(|| "agent".into());
    let tenant = pick(&case.caller.tenant, &defaults.tenant).unwrap_or_else(|| "tenant".into());
    let role = pick(&case.caller.role, &defaults.role);
    let labels = case
        .caller
        .labels
        .clone()
        .or_else(|| defaults.labels.clone())
        .unwrap_or_default();
    let subject = Subject {
        agent: &agent,
        tenant: &tenant,
        role: role.as_deref(),
        labels: &labels,
        autonomy: case
            .caller
            .autonomy
            .or(defaults.autonomy)
            .unwrap_or_default(),
    };
    let arguments = match &case.arguments {
        None => "{}".to_string(),
        Some(Value::String(raw)) => raw.clone(),
        Some(value) => value.to_string(),
    };
    let call = ToolCall {
        id: "call_case".into(),
        name: case.tool.clone(),
        arguments,
    };
    let offered: Option<Vec<ToolSpec>> = case.offered.as_ref().map(|tools| {
        tools
            .iter()
            .map(|(name, parameters)| ToolSpec {
                name: name.clone(),
                description: None,
                parameters: parameters.clone(),
            })
            .collect()
    });
    let checked = policy.check(&call, offered.as_deref(), &subject);
    let decision = &checked.decision;
    let mut mismatches = Vec::new();
    match Verdict::parse(&case.expect) {
        Some(expected) if expected == decision.verdict => {}
        Some(_) => mismatches.push(format!("decision {}", decision.verdict.as_str())),
        None => mismatches.push(format!("`{}` is not {}", case.expect, Verdict::NAMES)),
    }
    if case.rule.is_some() && case.rule != decision.rule {
        mismatches.push(format!("rule {:?}", decision.rule));
    }
    if case.code.is_some_and(|code| code != decision.code) {
        mismatches.push(format!("code {}", decision.code.as_str()));
    }
    if case.constraint.is_some() && case.constraint != decision.constraint {
        mismatches.push(format!("constraint {:?}", decision.constraint));
    }
    if let Some(expected) = &case.delivered {
        let delivered = parse_object(&checked.arguments).map(|o| canonical(&Value::Object(o)));
        if delivered.as_deref() != Ok(canonical(expected).as_str()) {
            mismatches.push(format!("delivered {}", checked.arguments));
        }
    }
    CaseResult {
        name: case.name.clone(),
        expected: case.expect.clone(),
        got: decision.verdict,
        rule: decision.rule.clone(),
        code: decision.code,
        mismatch: (!mismatches.is_empty())
            .then(|| format!("{} ({})", mismatches.join(", "), decision.reason)),
    }
}

/// The results as a table, one line per case.
pub fn table(results: &[CaseResult]) -> String {
    let width = results
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:<22}  {:<22}  {:<24}  result\n",
        "case", "expected", "got", "rule / code"
    );
    for result in results {
        let why = result
            .rule
            .clone()
            .unwrap_or_else(|| result.code.as_str().to_string());
        let verdict = match &result.mismatch {
            None => "ok".to_string(),
            Some(mismatch) => format!("MISMATCH: {mismatch}"),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<22}  {:<22}  {:<24}  {verdict}",
            result.name,
            result.expected,
            result.got.as_str(),
            why
        );
    }
    let failed = results.iter().filter(|r| r.mismatch.is_some()).count();
    let _ = writeln!(
        out,
        "{} cases, {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    out
}
