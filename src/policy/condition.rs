//! Argument conditions (`amount > 500`, `to host_in $tenant.domains`...) and how they
//! are judged. Each place a path reaches is true, false or unknown (absent, of the
//! wrong type, not a number, a URL parsers disagree on). Unknown never helps a call:
//! a rule that would let it through (ALLOW, ALLOW_WITH_CONSTRAINTS) needs every place
//! true, and a rule that would hold it back (DENY, REQUIRE_APPROVAL) matches when any
//! place is true or unknown.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::Value;

use super::hosts::{target_of, HostPattern};
use super::path::JsonPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(value: bool) -> Self {
        if value {
            Truth::True
        } else {
            Truth::False
        }
    }

    fn not(self) -> Self {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// Who is asking, for operands that name the caller.
pub struct Caller<'a> {
    pub agent: &'a str,
    pub tenant: &'a str,
    /// The tenant's own domains (`$tenant.domains`).
    pub domains: &'a [HostPattern],
}

#[derive(Debug, Clone)]
pub enum Operand {
    Literal(Value),
    /// `$agent`: the calling agent's id.
    Agent,
    /// `$tenant`: the calling tenant's id.
    Tenant,
}

impl Operand {
    fn resolve(&self, caller: &Caller) -> Value {
        match self {
            Operand::Literal(value) => value.clone(),
            Operand::Agent => Value::String(caller.agent.to_string()),
            Operand::Tenant => Value::String(caller.tenant.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Hosts {
    Listed(Vec<HostPattern>),
    /// `$tenant.domains`.
    TenantDomains,
}

#[derive(Debug, Clone)]
pub enum Op {
    Eq(Operand),
    Ne(Operand),
    Compare(Ordering, bool, f64),
    In(Vec<Operand>),
    NotIn(Vec<Operand>),
    Matches(Regex),
    Exists(bool),
    HostIn(Hosts),
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub path: JsonPath,
    pub op: Op,
    /// As written, for messages and `policy check`.
    pub text: String,
}

impl Condition {
    /// Whether the condition holds for a rule that lets calls through (`permissive`)
    /// or one that holds them back.
    pub fn holds(&self, arguments: &Value, caller: &Caller, permissive: bool) -> bool {
        let branches = self.path.resolve(arguments);
        let mut truths = branches.iter().map(|place| self.judge(*place, caller));
        if permissive {
            truths.all(|truth| truth == Truth::True)
        } else {
            truths.any(|truth| truth != Truth::False)
        }
    }

    fn judge(&self, place: Option<&Value>, caller: &Caller) -> Truth {
        if let Op::Exists(expected) = self.op {
            return Truth::from_bool(place.is_some_and(|v| !v.is_null()) == expected);
        }
        let Some(value) = place else {
            return Truth::Unknown;
        };
        match &self.op {
            Op::Eq(operand) => equal(value, &operand.resolve(caller)),
            Op::Ne(operand) => equal(value, &operand.resolve(caller)).not(),
            Op::Compare(ordering, or_equal, bound) => match number(value) {
                Some(n) => {
                    let got = n.partial_cmp(bound);
                    Truth::from_bool(
                        got == Some(*ordering) || (*or_equal && got == Some(Ordering::Equal)),
                    )
                }
                None => Truth::Unknown,
            },
            Op::In(list) => member(value, list, caller),
            Op::NotIn(list) => member(value, list, caller).not(),
            Op::Matches(regex) => match value {
                Value::String(text) => Truth::from_bool(regex.is_match(text)),
                _ => Truth::Unknown,
            },
            Op::HostIn(hosts) => {
                let patterns = match hosts {
                    Hosts::Listed(patterns) => patterns.as_slice(),
                    Hosts::TenantDomains => caller.domains,
                };
                match value.as_str().and_then(target_of) {
                    Some(target) => Truth::from_bool(patterns.iter().any(|p| p.matches(&target))),
                    None => Truth::Unknown,
                }
            }
            Op::Exists(_) => Truth::Unknown,
        }
    }
}

/// A number, or a string that a lenient reader would take for one (`"600"`,
/// `" 6e2 "`); `NaN`, infinities and anything else are not numbers.
pub fn number(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(text) => text.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// Equality across the forms a value can arrive in: a number operand equals a numeric
/// string; other type mismatches are unknown.
fn equal(value: &Value, operand: &Value) -> Truth {
    match (value, operand) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Truth::from_bool(a == b),
            _ => Truth::from_bool(a.as_f64() == b.as_f64()),
        },
        (Value::String(_), Value::Number(b)) => match (number(value), b.as_f64()) {
            (Some(a), Some(b)) => Truth::from_bool(a == b),
            _ => Truth::Unknown,
        },
        (Value::String(a), Value::String(b)) => Truth::from_bool(a == b),
        (Value::Bool(a), Value::Bool(b)) => Truth::from_bool(a == b),
        (Value::Null, Value::Null) => Truth::True,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            Truth::from_bool(value == operand)
        }
        _ => Truth::Unknown,
    }
}

fn member(value: &Value, list: &[Operand], caller: &Caller) -> Truth {
    let mut result = Truth::False;
    for operand in list {
        match equal(value, &operand.resolve(caller)) {
            Truth::True => return Truth::True,
            Truth::Unknown => result = Truth::Unknown,
            Truth::False => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn condition(path: &str, op: Op) -> Condition {
        Condition {
            path: JsonPath::parse(path).unwrap(),
            op,
            text: path.into(),
        }
    }

    fn caller() -> Caller<'static> {
        Caller {
            agent: "a",
            tenant: "acme",
            domains: &[],
        }
    }

    #[test]
    fn numbers_compare_in_every_form() {
        let over = condition("amount", Op::Compare(Ordering::Greater, false, 500.0));
        for (args, expected) in [
            (json!({"amount": 600}), Truth::True),
            (json!({"amount": "600"}), Truth::True),
            (json!({"amount": " 6e2 "}), Truth::True),
            (json!({"amount": 6e2}), Truth::True),
            (json!({"amount": 1e300}), Truth::True),
            (json!({"amount": -600}), Truth::False),
            (json!({"amount": 500}), Truth::False),
            (json!({"amount": "NaN"}), Truth::Unknown),
            (json!({"amount": "inf"}), Truth::Unknown),
            (json!({"amount": "600 EUR"}), Truth::Unknown),
            (json!({"amount": [600]}), Truth::Unknown),
            (json!({}), Truth::Unknown),
        ] {
            let place = over.path.resolve(&args)[0];
            assert_eq!(over.judge(place, &caller()), expected, "{args}");
        }
    }

    #[test]
    fn unknown_never_lets_a_call_through() {
        let over = condition("amount", Op::Compare(Ordering::Greater, false, 500.0));
        let args = json!({"amount": "lots"});
        assert!(!over.holds(&args, &caller(), true));
        assert!(over.holds(&args, &caller(), false));
    }

    #[test]
    fn wildcards_quantify_by_rule_kind() {
        let small = condition("items[*].qty", Op::Compare(Ordering::Less, true, 10.0));
        let mixed = json!({"items": [{"qty": 1}, {"qty": 50}]});
        let fine = json!({"items": [{"qty": 1}, {"qty": 2}]});
        let missing = json!({"items": [{"qty": 1}, {"count": 2}]});
        assert!(!small.holds(&mixed, &caller(), true));
        assert!(small.holds(&fine, &caller(), true));
        assert!(!small.holds(&missing, &caller(), true));
        let big = condition("items[*].qty", Op::Compare(Ordering::Greater, false, 10.0));
        assert!(big.holds(&mixed, &caller(), false));
        assert!(!big.holds(&fine, &caller(), false));
        assert!(big.holds(&missing, &caller(), false));
    }

    #[test]
    fn equality_membership_and_existence() {
        let eq = condition("n", Op::Eq(Operand::Literal(json!(5))));
        assert_eq!(eq.judge(Some(&json!("5")), &caller()), Truth::True);
        assert_eq!(eq.judge(Some(&json!(5.0)), &caller()), Truth::True);
        assert_eq!(eq.judge(Some(&json!(true)), &caller()), Truth::Unknown);
        let tenant = condition("t", Op::Eq(Operand::Tenant));
        assert_eq!(tenant.judge(Some(&json!("acme")), &caller()), Truth::True);
        let not_in = condition(
            "env",
            Op::NotIn(vec![
                Operand::Literal(json!("prod")),
                Operand::Literal(json!(1)),
            ]),
        );
        assert_eq!(not_in.judge(Some(&json!("dev")), &caller()), Truth::Unknown);
        assert_eq!(not_in.judge(Some(&json!("prod")), &caller()), Truth::False);
        let exists = condition("x", Op::Exists(true));
        assert!(!exists.holds(&json!({"x": null}), &caller(), true));
        assert!(exists.holds(&json!({"x": 0}), &caller(), true));
        let absent = condition("x", Op::Exists(false));
        assert!(absent.holds(&json!({}), &caller(), true));
    }
}
