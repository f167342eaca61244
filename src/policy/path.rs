//! Paths into a call's arguments: `amount`, `customer.email`, `items[0].price`,
//! `items[*].qty` (every element), `["odd key"]`. A path resolves to one branch per
//! place it reaches; a branch that runs into a missing key or a wrong type is
//! `None`, so a condition can treat "absent" apart from "false".

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    Every,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        let body = text
            .strip_prefix("$.")
            .or_else(|| text.strip_prefix('$'))
            .unwrap_or(text);
        let mut rest = body;
        let mut first = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let close = after
                    .find(']')
                    .ok_or_else(|| format!("`{text}`: `[` without `]`"))?;
                let inner = &after[..close];
                let step = if inner == "*" {
                    Step::Every
                } else if let Some(quoted) = inner
                    .strip_prefix('"')
                    .and_then(|inner| inner.strip_suffix('"'))
                {
                    Step::Key(quoted.to_string())
                } else {
                    Step::Index(inner.parse().map_err(|_| {
                        format!("`{text}`: `[{inner}]` is not an index, `*` or a quoted key")
                    })?)
                };
                steps.push(step);
                rest = &after[close + 1..];
            } else {
                let rest_key = if first {
                    rest
                } else {
                    rest.strip_prefix('.')
                        .ok_or_else(|| format!("`{text}`: expected `.` or `[` before `{rest}`"))?
                };
                let end = rest_key.find(['.', '[']).unwrap_or(rest_key.len());
                let key = &rest_key[..end];
                if key.is_empty() || key.contains([']', '"']) {
                    return Err(format!(
                        "`{text}`: `{key}` is not a key (quote odd keys: `[\"...\"]`)"
                    ));
                }
                steps.push(Step::Key(key.to_string()));
                rest = &rest_key[end..];
            }
            first = false;
        }
        if steps.is_empty() {
            return Err("a path must name at least one key".into());
        }
        Ok(Self {
            text: text.to_string(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn has_wildcard(&self) -> bool {
        self.steps.contains(&Step::Every)
    }

    /// Every place the path reaches in `root`; `None` where it runs out.
    pub fn resolve<'v>(&self, root: &'v Value) -> Vec<Option<&'v Value>> {
        let mut branches = vec![Some(root)];
        for step in &self.steps {
            branches = branches
                .into_iter()
                .flat_map(|branch| -> Vec<Option<&'v Value>> {
                    match (branch, step) {
                        (None, _) => vec![None],
                        (Some(Value::Object(map)), Step::Key(key)) => vec![map.get(key)],
                        (Some(Value::Array(items)), Step::Index(index)) => vec![items.get(*index)],
                        (Some(Value::Array(items)), Step::Every) => {
                            items.iter().map(Some).collect()
                        }
                        (Some(_), _) => vec![None],
                    }
                })
                .collect();
        }
        branches
    }

    /// The place this path names in `root`, created if absent (for values a constraint
    /// writes). `None` when the way there is not made of objects.
    pub fn entry<'v>(&self, root: &'v mut Value) -> Option<&'v mut Value> {
        let mut here = root;
        for step in &self.steps {
            here = match (here, step) {
                (Value::Object(map), Step::Key(key)) => {
                    map.entry(key.clone()).or_insert(Value::Null)
                }
                (Value::Array(items), Step::Index(index)) => items.get_mut(*index)?,
                _ => return None,
            };
        }
        Some(here)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse_and_resolve() {
        let args = json!({"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "odd key": true});
        let path = |text: &str| JsonPath::parse(text).unwrap();
        assert_eq!(path("a.b[1].c").resolve(&args), vec![Some(&json!(2))]);
        assert_eq!(path("$.a.b[0].c").resolve(&args), vec![Some(&json!(1))]);
        assert_eq!(
            path("a.b[*].c").resolve(&args),
            vec![Some(&json!(1)), Some(&json!(2)), None]
        );
        assert_eq!(
            path("[\"odd key\"]").resolve(&args),
            vec![Some(&json!(true))]
        );
        assert_eq!(path("a.b[9].c").resolve(&args), vec![None]);
        assert_eq!(path("a.b.c").resolve(&args), vec![None]);
        assert!(path("x[*]").resolve(&json!({"x": []})).is_empty());
        for bad in ["", "a..b", "a[", "a[x]", "a]b"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_creates_missing_keys() {
        let mut args = json!({"a": {}});
        *JsonPath::parse("a.timeout")
            .unwrap()
            .entry(&mut args)
            .unwrap() = json!(5);
        assert_eq!(args, json!({"a": {"timeout": 5}}));
        assert!(JsonPath::parse("a.timeout.x")
            .unwrap()
            .entry(&mut args)
            .is_none());
    }
}
