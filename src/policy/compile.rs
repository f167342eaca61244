//! From the policy file as written to a `Policy`: every name, pattern, operator,
//! schema and regex checked, errors naming the file and the key. A policy that does
//! not compile is never loaded, so a bad edit cannot replace a good policy.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::RegexBuilder;
use serde_json::Value;

use super::args::canonical;
use super::condition::{Condition, Hosts, Op, Operand};
use super::constraint::Constraint;
use super::decide::{CatalogTool, Policy, Rule, Verdict};
use super::file::{OneOrMany, RawCondition, RawConstraints, RawPolicy, RawRule};
use super::hosts::HostPattern;
use super::names::{fold, NamePattern};
use super::output::{Actions, Detector, Detectors, OutputAction, OutputPolicy};
use super::path::JsonPath;
use super::risk::RiskSignals;
use crate::audit::chain::digest;

/// What output safety does with a detector the policy file does not mention: redact.
/// Failing closed means an empty, cut-short or forgotten `output` section can only hide
/// more, never let a card number or a key out; passing one through takes an explicit
/// `allow`.
pub const BUILT_IN_OUTPUT_ACTION: OutputAction = OutputAction::Redact;

/// Regexes in conditions are compiled within this size, so a policy cannot make
/// matching slow.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {error}")]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
    /// A file read for a reload that cannot be what its operator meant (empty, cut short).
    #[error("{file}: {message}")]
    Incomplete { file: PathBuf, message: String },
}

type Invalid = (String, String);

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.to_path_buf(),
        error: source,
    })
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        Self::from_yaml(&read(path)?, path)
    }

    /// The file read again at run time: as `load`, but an empty or cut-short file is
    /// refused rather than read as the empty policy (which would also reset output
    /// safety and the catalog).
    pub fn reload(path: &Path) -> Result<Self, PolicyError> {
        let text = read(path)?;
        crate::reload::check_reloaded_text(&text).map_err(|message| PolicyError::Incomplete {
            file: path.to_path_buf(),
            message,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses `text` as if read from `path`. An empty text is the empty policy: no
    /// tools, no rules, every call denied.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |(key, message): Invalid| PolicyError::Invalid {
            file: path.to_path_buf(),
            key,
            message,
        };
        let text = if text.trim().is_empty() { "{}" } else { text };
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let raw: RawPolicy = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            invalid((key, error.into_inner().to_string()))
        })?;
        compile(raw).map_err(invalid)
    }
}

fn compile(raw: RawPolicy) -> Result<Policy, Invalid> {
    let snapshot = serde_json::to_value(&raw)
        .map(|value| digest(canonical(&value).as_bytes()))
        .map_err(|error| ("".to_string(), error.to_string()))?;
    let default = match Verdict::parse(&raw.default) {
        Some(Verdict::AllowWithConstraints) => {
            return Err((
                "default".into(),
                "the default cannot carry constraints; use ALLOW, DENY or REQUIRE_APPROVAL".into(),
            ))
        }
        Some(verdict) => verdict,
        None => {
            return Err((
                "default".into(),
                format!("`{}` is not {}", raw.default, Verdict::NAMES),
            ))
        }
    };

    let mut tools: HashMap<String, CatalogTool> = HashMap::new();
    for (name, tool) in raw.tools {
        let key = format!("tools.{name}");
        let folded = fold(&name);
        if folded.is_empty() {
            return Err((key, "a tool needs a name".into()));
        }
        if tool.tier > 3 {
            return Err((
                format!("{key}.tier"),
                "tiers are 0 (read-only) to 3 (irreversible)".into(),
            ));
        }
        let schema = match tool.schema {
            None => None,
            Some(schema) => Some(Arc::new(jsonschema::validator_for(&schema).map_err(
                |error| {
                    (
                        format!("{key}.schema"),
                        format!("not a usable JSON schema: {error}"),
                    )
                },
            )?)),
        };
        if let Some(other) = tools.get(&folded) {
            return Err((
                key,
                format!(
                    "`{name}` and `{}` are the same tool once normalised",
                    other.name
                ),
            ));
        }
        tools.insert(
            folded,
            CatalogTool {
                name,
                tier: tool.tier,
                tags: tool.tags,
                schema,
            },
        );
    }

    let mut tenants = HashMap::new();
    for (tenant, facts) in raw.tenants {
        let domains = facts
            .domains
            .iter()
            .enumerate()
            .map(|(i, domain)| {
                HostPattern::parse(domain)
                    .map_err(|m| (format!("tenants.{tenant}.domains[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tenants.insert(tenant, domains);
    }

    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (index, rule) in raw.rules.into_iter().enumerate() {
        let rule = compile_rule(index, rule)?;
        if rules.iter().any(|other| other.id == rule.id) {
            return Err((
                format!("rules[{index}].id"),
                format!("`{}` is used by an earlier rule", rule.id),
            ));
        }
        rules.push(rule);
    }

    let mut names: Vec<String> = tools.keys().cloned().collect();
    for rule in &rules {
        names.extend(
            rule.tools
                .iter()
                .flatten()
                .filter_map(|p| p.exact().map(str::to_string)),
        );
    }
    let index = names
        .into_iter()
        .map(|name| {
            let candidates = (0..rules.len())
                .filter(|&i| {
                    rules[i]
                        .tools
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| p.matches(&name)))
                })
                .collect();
            (name, candidates)
        })
        .collect();
    let unindexed = (0..rules.len())
        .filter(|&i| {
            rules[i]
                .tools
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p.exact().is_none()))
        })
        .collect();

    // A year: past that a figure is a typo, and an expiry that far out overflows clocks.
    const MAX_APPROVAL_TTL_SECONDS: u64 = 366 * 24 * 3600;
    if raw.approvals.ttl_seconds == 0 || raw.approvals.ttl_seconds > MAX_APPROVAL_TTL_SECONDS {
        return Err((
            "approvals.ttl_seconds".into(),
            format!("must be between 1 and {MAX_APPROVAL_TTL_SECONDS} (a year)"),
        ));
    }
    let risk = RiskSignals::new().map_err(|error| ("risk".to_string(), error.to_string()))?;
    let detectors = Detectors::new().map_err(|error| ("output".to_string(), error.to_string()))?;
    let defaults = actions(
        &raw.output.detectors,
        [BUILT_IN_OUTPUT_ACTION; Detector::ALL.len()],
        "output.detectors",
    )?;
    let agents = raw
        .output
        .agents
        .iter()
        .map(|(agent, overrides)| {
            actions(overrides, defaults, &format!("output.agents.{agent}"))
                .map(|a| (agent.clone(), a))
        })
        .collect::<Result<_, _>>()?;

    Ok(Policy {
        snapshot,
        default,
        tools,
        rules,
        index,
        unindexed,
        tenants,
        approval_ttl: Duration::from_secs(raw.approvals.ttl_seconds),
        output: OutputPolicy {
            detectors: Arc::new(detectors),
            defaults,
            agents,
        },
        risk,
    })
}

fn actions(
    entries: &BTreeMap<String, String>,
    base: Actions,
    key: &str,
) -> Result<Actions, Invalid> {
    let mut actions = base;
    for (name, action) in entries {
        let detector = Detector::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Detector::ALL.iter().map(|d| d.as_str()).collect();
            (
                format!("{key}.{name}"),
                format!("unknown detector; known: {}", known.join(", ")),
            )
        })?;
        actions[detector.index()] = OutputAction::parse(action).ok_or_else(|| {
            (
                format!("{key}.{name}"),
                format!("`{action}` is not allow, redact or quarantine"),
            )
        })?;
    }
    Ok(actions)
}

fn patterns(
    list: Option<OneOrMany<String>>,
    fold_case: bool,
    key: &str,
) -> Result<Option<Vec<NamePattern>>, Invalid> {
    let Some(list) = list else { return Ok(None) };
    let list = list.into_vec();
    if list.is_empty() || list.iter().any(|entry| entry.trim().is_empty()) {
        return Err((key.into(), "needs at least one non-empty name".into()));
    }
    Ok(Some(
        list.iter()
            .map(|entry| NamePattern::new(entry, fold_case))
            .collect(),
    ))
}

fn compile_rule(index: usize, rule: RawRule) -> Result<Rule, Invalid> {
    let key = |field: &str| format!("rules[{index}].{field}");
    if rule.id.trim().is_empty() {
        return Err((key("id"), "must not be empty".into()));
    }
    let verdict = Verdict::parse(&rule.decision).ok_or_else(|| {
        (
            key("decision"),
            format!("`{}` is not {}", rule.decision, Verdict::NAMES),
        )
    })?;
    if rule.reason.trim().is_empty() {
        return Err((
            key("reason"),
            "say why: agents and operators read it".into(),
        ));
    }
    let matches = rule.matches;
    let tools = patterns(matches.tool, true, &key("match.tool"))?;
    if rule.break_glass {
        let exact = tools
            .as_ref()
            .is_some_and(|ps| ps.iter().all(|p| p.exact().is_some()));
        if !exact {
            return Err((
                key("break_glass"),
                "a break-glass rule must name its tools exactly (no globs)".into(),
            ));
        }
        if verdict == Verdict::Deny {
            return Err((
                key("break_glass"),
                "a break-glass rule lets calls through; DENY needs none".into(),
            ));
        }
    }
    let tiers = match matches.tier {
        None => None,
        Some(tiers) => {
            let tiers = tiers.into_vec();
            if tiers.is_empty() || tiers.iter().any(|&t| t > 3) {
                return Err((key("match.tier"), "tiers are 0 to 3".into()));
            }
            Some(tiers)
        }
    };
    let conditions = matches
        .args
        .into_iter()
        .enumerate()
        .map(|(i, condition)| {
            compile_condition(condition).map_err(|m| (key(&format!("match.args[{i}]")), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let constraints = match (verdict, rule.constraints) {
        (Verdict::AllowWithConstraints, Some(constraints)) => {
            let constraints = compile_constraints(constraints)
                .map_err(|(field, m)| (key(&format!("constraints.{field}")), m))?;
            if constraints.is_empty() {
                return Err((
                    key("constraints"),
                    "ALLOW_WITH_CONSTRAINTS needs at least one constraint".into(),
                ));
            }
            constraints
        }
        (Verdict::AllowWithConstraints, None) => {
            return Err((
                key("constraints"),
                "ALLOW_WITH_CONSTRAINTS needs `constraints`".into(),
            ))
        }
        (_, Some(_)) => {
            return Err((
                key("constraints"),
                "only ALLOW_WITH_CONSTRAINTS rules carry constraints".into(),
            ))
        }
        (_, None) => Vec::new(),
    };
    Ok(Rule {
        id: rule.id,
        tools,
        agents: patterns(matches.agent, false, &key("match.agent"))?,
        roles: patterns(matches.role, false, &key("match.role"))?,
        tenants: patterns(matches.tenant, false, &key("match.tenant"))?,
        labels: matches
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect(),
        tiers,
        tags: matches.tags.map(OneOrMany::into_vec),
        conditions,
        verdict,
        reason: rule.reason,
        constraints,
        break_glass: rule.break_glass,
    })
}

fn compile_condition(raw: RawCondition) -> Result<Condition, String> {
    let path = JsonPath::parse(&raw.path)?;
    let text = format!(
        "{} {}{}",
        raw.path,
        raw.op,
        raw.value
            .as_ref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    let value = raw.value;
    let needed =
        |value: Option<Value>| value.ok_or_else(|| format!("`{}` needs a `value`", raw.op));
    let op = match raw.op.as_str() {
        "==" => Op::Eq(operand(needed(value)?)?),
        "!=" => Op::Ne(operand(needed(value)?)?),
        "<" | "<=" | ">" | ">=" => {
            let bound = needed(value)?
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("`{}` compares with a number", raw.op))?;
            let ordering = if raw.op.starts_with('<') { Ordering::Less } else { Ordering::Greater };
            Op::Compare(ordering, raw.op.ends_with('='), bound)
        }
        "in" | "not_in" => {
            let list = match needed(value)? {
                Value::Array(items) if !items.is_empty() => items.into_iter().map(operand).collect::<Result<Vec<_>, _>>()?,
                _ => return Err(format!("`{}` takes a non-empty list", raw.op)),
            };
            if raw.op == "in" { Op::In(list) } else { Op::NotIn(list) }
        }
        "matches" => {
            let pattern = needed(value)?
                .as_str()
                .map(str::to_string)
                .ok_or("`matches` takes a regular expression")?;
            let regex = RegexBuilder::new(&pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|error| format!("not a regular expression: {error}"))?;
            Op::Matches(regex)
        }
        "exists" => match value {
            None => Op::Exists(true),
            Some(Value::Bool(expected)) => Op::Exists(expected),
            Some(_) => return Err("`exists` takes true or false".into()),
        },
        "host_in" => match needed(value)? {
            Value::String(reference) if reference == "$tenant.domains" => Op::HostIn(Hosts::TenantDomains),
            Value::Array(items) if !items.is_empty() => Op::HostIn(Hosts::Listed(
                items
                    .iter()
                    .map(|item| item.as_str().ok_or("hosts are strings".to_string()).and_then(HostPattern::parse))
                    .collect::<Result<_, _>>()?,
            )),
            _ => return Err("`host_in` takes a list of hosts or `$tenant.domains`".into()),
        },
        other => {
            return Err(format!(
                "unknown operator `{other}`; use ==, !=, <, <=, >, >=, in, not_in, matches, exists or host_in"
            ))
        }
    };
    Ok(Condition { path, op, text })
}

fn operand(value: Value) -> Result<Operand, String> {
    match value.as_str() {
        Some("$agent") => Ok(Operand::Agent),
        Some("$tenant") => Ok(Operand::Tenant),
        Some(reference) if reference.starts_with('$') => Err(format!(
            "unknown reference `{reference}`; known: $agent, $tenant (and $tenant.domains for host_in)"
        )),
        _ => Ok(Operand::Literal(value)),
    }
}

fn compile_constraints(raw: RawConstraints) -> Result<Vec<Constraint>, Invalid> {
    let mut constraints = Vec::new();
    for (path, hosts) in raw.allowed_hosts {
        let key = format!("allowed_hosts.{path}");
        let hosts = hosts
            .iter()
            .map(|host| HostPattern::parse(host))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| (key.clone(), m))?;
        if hosts.is_empty() {
            return Err((key, "list at least one host".into()));
        }
        constraints.push(Constraint::AllowedHosts {
            path: JsonPath::parse(&path).map_err(|m| (key, m))?,
            hosts,
        });
    }
    for (path, max) in raw.max {
        let key = format!("max.{path}");
        if !max.is_finite() {
            return Err((key, "must be a finite number".into()));
        }
        constraints.push(Constraint::Max {
            path: JsonPath::parse(&path).map_err(|m| (key, m))?,
            max,
        });
    }
    if let Some(timeout) = raw.timeout {
        let path = JsonPath::parse(&timeout.path).map_err(|m| ("timeout.path".to_string(), m))?;
        if path.has_wildcard() {
            return Err((
                "timeout.path".into(),
                "a timeout is one value: no `[*]`".into(),
            ));
        }
        if !(timeout.max_seconds > 0.0 && timeout.max_seconds.is_finite()) {
            return Err(("timeout.max_seconds".into(), "must be above 0".into()));
        }
        constraints.push(Constraint::Timeout {
            path,
            max_seconds: timeout.max_seconds,
        });
    }
    Ok(constraints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolCall;
    use crate::policy::{AutonomyMode, Subject};

    fn invalid_key(text: &str) -> String {
        match Policy::from_yaml(text, Path::new("routing/policy.yaml")) {
            Err(PolicyError::Invalid { key, file, .. }) => {
                assert_eq!(file, Path::new("routing/policy.yaml"));
                key
            }
            Err(other) => panic!("expected an invalid key, got {other}"),
            Ok(_) => panic!("expected an invalid key for {text}"),
        }
    }

    #[test]
    fn mistakes_name_their_key() {
        let rule = |body: &str| format!("rules:\n  - {{id: r, reason: why, {body}}}\n");
        let cases = [
            ("defualt: DENY\n".to_string(), "defualt"),
            ("default: MAYBE\n".to_string(), "default"),
            ("default: ALLOW_WITH_CONSTRAINTS\n".to_string(), "default"),
            ("tools: {a: {tier: 4}}\n".to_string(), "tools.a.tier"),
            ("tools: {a: {tier: 0}, A: {tier: 1}}\n".to_string(), "tools.a"),
            ("tools: {a: {tier: 0, schema: {type: 12}}}\n".to_string(), "tools.a.schema"),
            ("tenants: {t: {domains: [\"bad host\"]}}\n".to_string(), "tenants.t.domains[0]"),
            (rule("decision: ALLOW, match: {tool: []}"), "rules[0].match.tool"),
            (rule("decision: ALLOW, match: {tier: 7}"), "rules[0].match.tier"),
            (rule("decision: ALLOW, match: {args: [{path: a, op: \">\", value: x}]}"), "rules[0].match.args[0]"),
            (rule("decision: ALLOW, match: {args: [{path: a, op: matches, value: \"(\"}]}"), "rules[0].match.args[0]"),
            (rule("decision: ALLOW, match: {args: [{path: \"a[\", op: exists}]}"), "rules[0].match.args[0]"),
            (rule("decision: ALLOW, match: {args: [{path: a, op: ==, value: $nobody}]}"), "rules[0].match.args[0]"),
            (rule("decision: ALLOW_WITH_CONSTRAINTS"), "rules[0].constraints"),
            (rule("decision: ALLOW, constraints: {max: {a: 1}}"), "rules[0].constraints"),
            (rule("decision: ALLOW_WITH_CONSTRAINTS, constraints: {timeout: {path: \"a[*]\", max_seconds: 1}}"), "rules[0].constraints.timeout.path"),
            (rule("decision: ALLOW, break_glass: true, match: {tool: \"db_*\"}"), "rules[0].break_glass"),
            ("rules:\n  - {id: r, reason: why, decision: ALLOW}\n  - {id: r, reason: why, decision: DENY}\n".to_string(), "rules[1].id"),
            ("approvals: {ttl_seconds: 0}\n".to_string(), "approvals.ttl_seconds"),
            ("output: {detectors: {ssn: redact}}\n".to_string(), "output.detectors.ssn"),
            ("output: {agents: {a: {email: hide}}}\n".to_string(), "output.agents.a.email"),
        ];
        for (text, key) in cases {
            assert_eq!(invalid_key(&text), key, "{text}");
        }
    }

    #[test]
    fn output_safety_redacts_every_detector_the_file_does_not_allow() {
        use crate::policy::output::Detector;
        let path = Path::new("p.yaml");
        let text = "card 4111 1111 1111 1111, mail bob@example.com";
        for empty in ["", "# nothing\n", "tools: {a: {tier: 0}}\n", "output: {}\n"] {
            let policy = Policy::from_yaml(empty, path).unwrap();
            let found = policy.output().scanner("any").scan(text);
            assert_eq!(found.len(), 2, "{empty:?}: {found:?}");
            assert!(found.iter().all(|f| f.action == BUILT_IN_OUTPUT_ACTION));
        }
        let allowing = Policy::from_yaml("output: {detectors: {email: allow}}\n", path).unwrap();
        let found = allowing.output().scanner("any").scan(text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::Card);
    }

    #[test]
    fn the_snapshot_follows_meaning_not_layout() {
        let path = Path::new("p.yaml");
        let a =
            Policy::from_yaml("# a comment\ntools: {x: {tier: 0}, y: {tier: 1}}\n", path).unwrap();
        let b = Policy::from_yaml(
            "tools:\n  y: {tier: 1}\n  x:\n    tier: 0\ndefault: DENY\n",
            path,
        )
        .unwrap();
        let c = Policy::from_yaml("tools: {x: {tier: 0}, y: {tier: 2}}\n", path).unwrap();
        assert_eq!(a.snapshot(), b.snapshot());
        assert_ne!(a.snapshot(), c.snapshot());
        assert_eq!(a.snapshot().len(), 64);
    }

    #[test]
    fn a_tool_the_policy_never_names_meets_only_globs_and_tool_less_rules_in_order() {
        let policy = Policy::from_yaml(
            "default: DENY\n\
             rules:\n\
             \x20 - {id: exact, match: {tool: mystery_tool}, decision: DENY, reason: r}\n\
             \x20 - {id: other, match: {tool: [known, \"x_*\"]}, decision: DENY, reason: r}\n\
             \x20 - {id: glob, match: {tool: \"myst*\", args: [{path: n, op: \">\", value: 5}]}, decision: REQUIRE_APPROVAL, reason: r}\n\
             \x20 - {id: anything, decision: ALLOW, reason: r}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let labels = BTreeMap::new();
        let subject = Subject {
            agent: "a",
            tenant: "t",
            role: None,
            labels: &labels,
            autonomy: AutonomyMode::AutoLow,
        };
        let decide = |name: &str, arguments: &str| {
            let call = ToolCall {
                id: "call_1".into(),
                name: name.into(),
                arguments: arguments.into(),
            };
            policy.check(&call, None, &subject).decision.rule
        };
        assert_eq!(decide("Mystery_Tool", "{}").as_deref(), Some("exact"));
        assert_eq!(decide("mystic", r#"{"n": 9}"#).as_deref(), Some("glob"));
        assert_eq!(decide("mystic", r#"{"n": 1}"#).as_deref(), Some("anything"));
        assert_eq!(decide("x_ray", "{}").as_deref(), Some("other"));
    }

    #[test]
    fn the_shipped_policy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing/policy.yaml");
        let policy = Policy::load(&path).unwrap();
        assert!(policy.rules().len() >= 5);
        assert_eq!(policy.tier_of("Delete_Account"), 3);
        assert_eq!(policy.tier_of("not_in_the_catalog"), 3);
    }
}
