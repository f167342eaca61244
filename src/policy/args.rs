//! Tool-call arguments as policy sees them: parsed strictly (one JSON object, no
//! duplicate keys at any depth, finite numbers), written back canonically, and hashed.
//! What the agent receives is the canonical text, so the call it executes is exactly
//! the one that was decided and hashed, whatever its own JSON parser does with
//! duplicate keys or odd number forms.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::audit::chain::digest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentsError {
    #[error("the arguments are not valid JSON: {0}")]
    NotJson(String),
    #[error("the arguments repeat the key `{0}`")]
    DuplicateKey(String),
    #[error("the arguments are {0}, not a JSON object")]
    NotAnObject(&'static str),
}

/// Parses a call's arguments text into a JSON object.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, ArgumentsError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = StrictSeed {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    if let Some(mut path) = duplicate.into_inner() {
        path.reverse();
        let path = path.concat();
        let path = path.strip_prefix('.').unwrap_or(&path);
        return Err(ArgumentsError::DuplicateKey(path.to_string()));
    }
    match parsed.map_err(|error| ArgumentsError::NotJson(error.to_string()))? {
        Value::Object(object) => Ok(object),
        other => Err(ArgumentsError::NotAnObject(kind_of(&other))),
    }
}

pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Builds a `Value` like serde_json does, but refuses a key seen twice in one object
/// (serde_json keeps the last one silently; other parsers keep the first). The path
/// to a duplicate is collected innermost first as the error unwinds, so a clean parse
/// builds no paths at all.
struct StrictSeed<'a> {
    duplicate: &'a RefCell<Option<Vec<String>>>,
}

impl StrictSeed<'_> {
    /// Adds the step to the parent on the way out of a duplicate found below.
    fn unwinding<T, E>(&self, result: Result<T, E>, step: impl FnOnce() -> String) -> Result<T, E> {
        if result.is_err() {
            if let Some(path) = self.duplicate.borrow_mut().as_mut() {
                path.push(step());
            }
        }
        result
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let next = seq.next_element_seed(StrictSeed {
                duplicate: self.duplicate,
            });
            match self.unwinding(next, || format!("[{}]", items.len()))? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(vec![format!(".{key}")]);
                return Err(serde::de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(StrictSeed {
                duplicate: self.duplicate,
            });
            let value = self.unwinding(value, || format!(".{key}"))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// JSON with object keys sorted and no whitespace: one text for one value.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        Value::Number(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn write_string(text: &str, out: &mut String) {
    // serde_json's escaping of one string cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// The identity of a call: the folded tool name and the canonical arguments text.
/// Call ids are left out: they are fresh for every generation of the same call.
pub fn call_hash(tool: &str, canonical_arguments: &str) -> String {
    let mut text = String::new();
    write_string(tool, &mut text);
    text.push(':');
    text.push_str(canonical_arguments);
    digest(text.as_bytes())
}

/// The identity of a call whose arguments could not be parsed: its raw text.
pub fn raw_call_hash(tool: &str, arguments: &str) -> String {
    let mut text = String::new();
    write_string(tool, &mut text);
    text.push_str(":raw:");
    text.push_str(arguments);
    digest(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert_eq!(
            parse_object(r#"{"to": "a@x.com", "to": "b@y.com"}"#),
            Err(ArgumentsError::DuplicateKey("to".into()))
        );
        assert_eq!(
            parse_object(r#"{"a": [{"b": 1, "b": 2}]}"#),
            Err(ArgumentsError::DuplicateKey("a[0].b".into()))
        );
        // An escaped spelling is the same key once decoded.
        assert_eq!(
            parse_object(r#"{"to": 1, "t\u006f": 2}"#),
            Err(ArgumentsError::DuplicateKey("to".into()))
        );
    }

    #[test]
    fn only_objects_of_finite_numbers_pass() {
        assert_eq!(
            parse_object("[1]"),
            Err(ArgumentsError::NotAnObject("an array"))
        );
        assert_eq!(
            parse_object("\"{}\""),
            Err(ArgumentsError::NotAnObject("a string"))
        );
        for bad in [
            "{\"a\": NaN}",
            "{\"a\": Infinity}",
            "{\"a\": 1e999}",
            "{\"a\": 1} x",
            "",
        ] {
            assert!(
                matches!(parse_object(bad), Err(ArgumentsError::NotJson(_))),
                "{bad}"
            );
        }
        assert!(parse_object("{\"a\": -1.5e3}").is_ok());
    }

    #[test]
    fn canonical_text_sorts_keys_and_hash_ignores_layout() {
        let a = parse_object(r#"{ "b": [1, {"y": 2, "x": 1}], "a": "é" }"#).unwrap();
        assert_eq!(
            canonical(&Value::Object(a.clone())),
            r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#
        );
        let b = parse_object(r#"{"a":"\u00e9","b":[1,{"x":1,"y":2}]}"#).unwrap();
        let hash = |tool: &str, object: &Map<String, Value>| {
            call_hash(tool, &canonical(&Value::Object(object.clone())))
        };
        assert_eq!(hash("t", &a), hash("t", &b));
        assert_ne!(hash("t", &a), hash("u", &a));
        let c = json!({"a": "é", "b": [1, {"x": 1, "y": 3}]});
        assert_ne!(hash("t", &a), hash("t", c.as_object().unwrap()));
    }
}
