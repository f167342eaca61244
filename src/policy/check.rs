//! `warden policy check`: what a policy file says beyond "it is valid": rules that
//! can never match because an earlier rule matches everything they do, and catalog
//! tools that no rule names (they only ever get generic rules or the default).

use std::collections::BTreeSet;

use super::decide::{Policy, Rule, Verdict};
use super::names::NamePattern;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub rule: String,
    pub shadowed_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    pub unreachable: Vec<Unreachable>,
    /// Catalog tools no rule names by name or glob.
    pub unmentioned: Vec<String>,
    pub default: Verdict,
}

pub fn analyse(policy: &Policy) -> Findings {
    let rules = policy.rules();
    let unreachable = rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            rules[..index]
                .iter()
                .find(|earlier| covers(earlier, rule))
                .map(|earlier| Unreachable {
                    rule: rule.id.clone(),
                    shadowed_by: earlier.id.clone(),
                })
        })
        .collect();
    let unmentioned: BTreeSet<String> = policy
        .catalog()
        .filter(|tool| {
            let folded = super::names::fold(&tool.name);
            !rules.iter().any(|rule| {
                rule.tools
                    .as_ref()
                    .is_some_and(|patterns| patterns.iter().any(|p| p.matches(&folded)))
            })
        })
        .map(|tool| tool.name.clone())
        .collect();
    Findings {
        unreachable,
        unmentioned: unmentioned.into_iter().collect(),
        default: policy.default,
    }
}

/// Whether `earlier` matches every call `later` matches; `false` when unsure, so only
/// certain shadowing is reported.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    patterns_cover(&earlier.tools, &later.tools)
        && patterns_cover(&earlier.agents, &later.agents)
        && patterns_cover(&earlier.roles, &later.roles)
        && patterns_cover(&earlier.tenants, &later.tenants)
        && earlier.labels.iter().all(|(key, values)| {
            later
                .labels
                .iter()
                .any(|(k, vs)| k == key && vs.iter().all(|v| values.contains(v)))
        })
        && subset(&earlier.tiers, &later.tiers)
        && subset(&earlier.tags, &later.tags)
        && (earlier.conditions.is_empty()
            || (earlier.verdict.permissive() == later.verdict.permissive()
                && earlier
                    .conditions
                    .iter()
                    .all(|c| later.conditions.iter().any(|l| l.text == c.text))))
}

fn patterns_cover(earlier: &Option<Vec<NamePattern>>, later: &Option<Vec<NamePattern>>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|t| mine.iter().any(|m| m.covers(t))),
    }
}

fn subset<T: PartialEq>(earlier: &Option<Vec<T>>, later: &Option<Vec<T>>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|t| mine.contains(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn shadowed_rules_and_unnamed_tools_are_reported() {
        let policy = Policy::from_yaml(
            r#"
tools:
  refund: {tier: 2}
  get_weather: {tier: 0}
  delete_account: {tier: 3}
rules:
  - {id: all-refunds, match: {tool: "refund*"}, decision: REQUIRE_APPROVAL, reason: r}
  - {id: small-refunds, match: {tool: refund, args: [{path: amount, op: "<", value: 10}]}, decision: ALLOW, reason: r}
  - {id: prod, match: {labels: {env: prod}}, decision: DENY, reason: r}
  - {id: prod-weather, match: {tool: get_weather, labels: {env: [prod]}}, decision: ALLOW, reason: r}
  - {id: weather-for-a, match: {tool: get_weather, agent: a}, decision: ALLOW, reason: r}
  - {id: read-only, match: {tier: 0}, decision: ALLOW, reason: r}
"#,
            Path::new("p.yaml"),
        )
        .unwrap();
        let findings = analyse(&policy);
        let pairs: Vec<(&str, &str)> = findings
            .unreachable
            .iter()
            .map(|u| (u.rule.as_str(), u.shadowed_by.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("small-refunds", "all-refunds"), ("prod-weather", "prod")]
        );
        assert_eq!(findings.unmentioned, ["delete_account"]);
    }
}
