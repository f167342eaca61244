//! Reads tool calls out of a local model's text. A call that cannot be used (bad
//! JSON, unknown tool, arguments that are not an object, an unclosed block) is dropped
//! and flagged, never passed on half-formed.

use serde_json::Value;

use super::template::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use crate::chat::{ToolCall, ToolSpec};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedOutput {
    /// The text outside any tool-call block.
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub malformed: bool,
}

/// Whether `text` (so far) could be the start of a bare JSON tool call, the other way
/// small models answer when tools are offered.
pub fn starts_like_json_call(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{' | '['))
}

pub fn parse(text: &str, tools: &[ToolSpec]) -> ParsedOutput {
    if tools.is_empty() {
        return ParsedOutput {
            content: text.to_string(),
            ..ParsedOutput::default()
        };
    }
    if text.contains(TOOL_CALL_OPEN) {
        return parse_tagged(text, tools);
    }
    if starts_like_json_call(text) {
        return parse_bare(text, tools);
    }
    ParsedOutput {
        content: text.to_string(),
        ..ParsedOutput::default()
    }
}

fn parse_tagged(text: &str, tools: &[ToolSpec]) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let mut rest = text;
    while let Some(open) = rest.find(TOOL_CALL_OPEN) {
        out.content.push_str(&rest[..open]);
        let body_start = open + TOOL_CALL_OPEN.len();
        let (body, after) = match rest[body_start..].find(TOOL_CALL_CLOSE) {
            Some(close) => (
                &rest[body_start..body_start + close],
                &rest[body_start + close + TOOL_CALL_CLOSE.len()..],
            ),
            // Unclosed: the model stopped mid-call. Only whole calls are trusted.
            None => {
                out.malformed = true;
                rest = "";
                break;
            }
        };
        match calls_from_json(body, tools) {
            Some(calls) => out.tool_calls.extend(calls),
            None => out.malformed = true,
        }
        rest = after;
    }
    out.content.push_str(rest);
    out.content = out.content.trim().to_string();
    out
}

fn parse_bare(text: &str, tools: &[ToolSpec]) -> ParsedOutput {
    let trimmed = text.trim();
    match calls_from_json(trimmed, tools) {
        Some(calls) => ParsedOutput {
            content: String::new(),
            tool_calls: calls,
            malformed: false,
        },
        None => {
            // JSON that never tried to be a call is just an answer in JSON.
            let looks_like_call = trimmed.contains("\"name\"") || trimmed.contains("\"arguments\"");
            if looks_like_call {
                ParsedOutput {
                    content: String::new(),
                    tool_calls: Vec::new(),
                    malformed: true,
                }
            } else {
                ParsedOutput {
                    content: text.to_string(),
                    ..ParsedOutput::default()
                }
            }
        }
    }
}

/// One call object or an array of them; `None` when any of them is unusable.
fn calls_from_json(body: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let objects = match value {
        Value::Array(items) if !items.is_empty() => items,
        object @ Value::Object(_) => vec![object],
        _ => return None,
    };
    objects
        .into_iter()
        .map(|object| call_from_object(object, tools))
        .collect()
}

fn call_from_object(object: Value, tools: &[ToolSpec]) -> Option<ToolCall> {
    let Value::Object(mut fields) = object else {
        return None;
    };
    let name = match fields.remove("name")? {
        Value::String(name) => name,
        _ => return None,
    };
    if !tools.iter().any(|tool| tool.name == name) {
        return None;
    }
    let arguments = match fields
        .remove("arguments")
        .or_else(|| fields.remove("parameters"))
    {
        None => Value::Object(Default::default()),
        // Some models quote the arguments object.
        Some(Value::String(text)) => serde_json::from_str(&text).ok()?,
        Some(value) => value,
    };
    if !arguments.is_object() {
        return None;
    }
    Some(ToolCall {
        id: ToolCall::new_id(),
        name,
        arguments: arguments.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        }]
    }

    #[test]
    fn tagged_call_is_extracted() {
        let out = parse(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            &tools(),
        );
        assert!(!out.malformed);
        assert_eq!(out.content, "Let me check.");
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].name, "get_weather");
        assert_eq!(out.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert!(out.tool_calls[0].id.starts_with("call_"));
    }

    #[test]
    fn recorded_smollm_output_with_quoted_arguments_parses() {
        // Seen from SmolLM2-135M when the call was begun for it.
        let out = parse(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}\n</tool_call>",
            &tools(),
        );
        assert_eq!(out.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn bare_json_call_and_arrays_are_accepted() {
        let out = parse(
            r#"[{"name": "get_weather", "arguments": {}}, {"name": "get_weather"}]"#,
            &tools(),
        );
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.tool_calls[1].arguments, "{}");
        assert!(!out.malformed);
    }

    #[test]
    fn broken_calls_are_flagged_and_withheld() {
        let cases = [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}",
            "<tool_call>{\"name\": \"delete_everything\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": [1, 2]}</tool_call>",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": ",
        ];
        for case in cases {
            let out = parse(case, &tools());
            assert!(out.malformed, "{case}");
            assert!(out.tool_calls.is_empty(), "{case}");
            assert!(!out.content.contains("tool_call"), "{case}");
        }
    }

    #[test]
    fn plain_json_answers_stay_content() {
        let out = parse(r#"{"answer": 42}"#, &tools());
        assert!(!out.malformed);
        assert_eq!(out.content, r#"{"answer": 42}"#);
    }

    #[test]
    fn without_tools_nothing_is_parsed() {
        let out = parse("<tool_call>{}</tool_call>", &[]);
        assert_eq!(out.content, "<tool_call>{}</tool_call>");
        assert!(out.tool_calls.is_empty());
    }
}
