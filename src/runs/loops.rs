//! The identity of a tool call for loop detection: its name and its arguments as JSON
//! values, so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same call.

use serde_json::{json, Map, Value};

use crate::audit::chain::digest;
use crate::chat::ToolCall;

/// Hex SHA-256 of the call's name and canonical arguments (arguments that are not JSON
/// count as the text they are).
pub fn call_hash(call: &ToolCall) -> String {
    let arguments = serde_json::from_str::<Value>(&call.arguments)
        .map(canonical)
        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
    let identity = json!({"name": call.name, "arguments": arguments});
    digest(identity.to_string().as_bytes())
}

/// Objects with their keys sorted, at every depth, whatever order the map type keeps.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, canonical(value)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn the_same_call_written_differently_has_one_hash() {
        let a = call_hash(&call("f", r#"{"a":1,"b":{"y":[1,2],"x":null}}"#));
        let b = call_hash(&call("f", r#"{ "b": {"x": null, "y": [1, 2]}, "a": 1 }"#));
        assert_eq!(a, b);
        assert_ne!(
            a,
            call_hash(&call("g", r#"{"a":1,"b":{"y":[1,2],"x":null}}"#))
        );
        assert_ne!(
            a,
            call_hash(&call("f", r#"{"a":2,"b":{"y":[1,2],"x":null}}"#))
        );
        assert_ne!(
            call_hash(&call("f", r#"{"y":[1,2]}"#)),
            call_hash(&call("f", r#"{"y":[2,1]}"#))
        );
        assert_eq!(
            call_hash(&call("f", "not json")),
            call_hash(&call("f", "not json"))
        );
    }
}
