//! Constraints of an ALLOW_WITH_CONSTRAINTS rule, enforced on the arguments: hosts a
//! URL may point to, largest values, a timeout (capped, and set when the call names
//! none). A violation names the constraint and turns the decision into DENY.

use serde_json::{Number, Value};

use super::condition::number;
use super::hosts::{target_of, HostPattern};
use super::path::JsonPath;

#[derive(Debug, Clone)]
pub enum Constraint {
    AllowedHosts {
        path: JsonPath,
        hosts: Vec<HostPattern>,
    },
    Max {
        path: JsonPath,
        max: f64,
    },
    Timeout {
        path: JsonPath,
        max_seconds: f64,
    },
}

/// A constraint the arguments broke: which one, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub constraint: String,
    pub detail: String,
}

impl Constraint {
    /// How the constraint is named in decisions: `allowed_hosts.url`, `max.amount`.
    pub fn name(&self) -> String {
        match self {
            Constraint::AllowedHosts { path, .. } => format!("allowed_hosts.{}", path.as_str()),
            Constraint::Max { path, .. } => format!("max.{}", path.as_str()),
            Constraint::Timeout { path, .. } => format!("timeout.{}", path.as_str()),
        }
    }

    /// Checks (and for a timeout, completes) the arguments.
    pub fn apply(&self, arguments: &mut Value) -> Result<(), Violation> {
        let violation = |detail: String| Violation {
            constraint: self.name(),
            detail,
        };
        match self {
            Constraint::AllowedHosts { path, hosts } => {
                for place in path.resolve(arguments) {
                    let text = place.and_then(Value::as_str).ok_or_else(|| {
                        violation(format!("`{}` must be a URL or address", path.as_str()))
                    })?;
                    let target = target_of(text).ok_or_else(|| {
                        violation(format!(
                            "cannot tell safely where `{}` points: `{text}`",
                            path.as_str()
                        ))
                    })?;
                    if !hosts.iter().any(|host| host.matches(&target)) {
                        return Err(violation(format!(
                            "`{}` points to {target}, which is not an allowed host",
                            path.as_str()
                        )));
                    }
                }
                Ok(())
            }
            Constraint::Max { path, max } => {
                for place in path.resolve(arguments) {
                    match place.map(|value| (value, number(value))) {
                        Some((_, Some(n))) if n <= *max => {}
                        Some((value, Some(_))) => {
                            return Err(violation(format!(
                                "`{}` is {value}, above the maximum of {max}",
                                path.as_str()
                            )))
                        }
                        _ => {
                            return Err(violation(format!(
                                "`{}` must be a number of at most {max}",
                                path.as_str()
                            )))
                        }
                    }
                }
                Ok(())
            }
            Constraint::Timeout { path, max_seconds } => {
                let place = path.entry(arguments).ok_or_else(|| {
                    violation(format!("`{}` cannot hold a timeout", path.as_str()))
                })?;
                if place.is_null() {
                    *place = seconds(*max_seconds);
                    return Ok(());
                }
                match number(place) {
                    // Zero means "no timeout" to many HTTP clients.
                    Some(n) if n > 0.0 && n <= *max_seconds => Ok(()),
                    _ => Err(violation(format!(
                        "`{}` is {place}; it must be above 0 and at most {max_seconds} seconds",
                        path.as_str()
                    ))),
                }
            }
        }
    }
}

/// A whole number of seconds is written as an integer, as a schema of `"type":
/// "integer"` expects.
fn seconds(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        Value::Number(Number::from(value as i64))
    } else {
        Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).unwrap()
    }

    #[test]
    fn hosts_and_maxima() {
        let hosts = Constraint::AllowedHosts {
            path: path("url"),
            hosts: vec![HostPattern::parse("api.example.com").unwrap()],
        };
        assert!(hosts
            .apply(&mut json!({"url": "https://api.example.com/x"}))
            .is_ok());
        let violation = hosts
            .apply(&mut json!({"url": "https://evil.com/"}))
            .unwrap_err();
        assert_eq!(violation.constraint, "allowed_hosts.url");
        assert!(hosts.apply(&mut json!({})).is_err());

        let max = Constraint::Max {
            path: path("items[*].qty"),
            max: 10.0,
        };
        assert!(max
            .apply(&mut json!({"items": [{"qty": 3}, {"qty": "10"}]}))
            .is_ok());
        assert!(max
            .apply(&mut json!({"items": [{"qty": 3}, {"qty": 11}]}))
            .is_err());
        assert!(max.apply(&mut json!({"items": [{"qty": "NaN"}]})).is_err());
        assert!(max.apply(&mut json!({"items": [{}]})).is_err());
    }

    #[test]
    fn timeouts_are_capped_and_filled_in() {
        let timeout = Constraint::Timeout {
            path: path("timeout_s"),
            max_seconds: 10.0,
        };
        let mut args = json!({"url": "x"});
        timeout.apply(&mut args).unwrap();
        assert_eq!(args, json!({"url": "x", "timeout_s": 10}));
        assert!(timeout.apply(&mut json!({"timeout_s": 5})).is_ok());
        for bad in [json!(0), json!(-1), json!(60), json!("forever")] {
            assert!(
                timeout.apply(&mut json!({"timeout_s": bad})).is_err(),
                "{bad}"
            );
        }
    }
}
