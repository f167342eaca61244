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

/// A tool-call block: its place in the text and the JSON it holds, read as JSON (not by
/// searching for the closing tag, which a string in the call may hold).
pub struct Block {
    pub start: usize,
    /// Just past the closing tag.
    pub end: usize,
    /// `None` when what follows the opening tag is not one JSON value and the tag.
    pub body: Option<Value>,
}

/// The tool-call blocks in `text`, in order, and where an unclosed one begins.
pub fn blocks(text: &str) -> (Vec<Block>, Option<usize>) {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find(TOOL_CALL_OPEN) {
        let start = from + open;
        let body_start = start + TOOL_CALL_OPEN.len();
        let mut values = serde_json::Deserializer::from_str(&text[body_start..]).into_iter();
        let body: Option<Value> = values.next().and_then(Result::ok);
        let after_body = body_start + values.byte_offset();
        let closed = body.as_ref().and_then(|_| {
            let rest = &text[after_body..];
            let gap = rest.len() - rest.trim_start().len();
            rest.trim_start()
                .starts_with(TOOL_CALL_CLOSE)
                .then_some(after_body + gap + TOOL_CALL_CLOSE.len())
        });
        // What is not a JSON value and its tag is read to the next closing tag, if any.
        let end = match closed {
            Some(end) => end,
            None => match text[body_start..].find(TOOL_CALL_CLOSE) {
                Some(close) => body_start + close + TOOL_CALL_CLOSE.len(),
                None => return (found, Some(start)),
            },
        };
        found.push(Block {
            start,
            end,
            body: closed.and(body),
        });
        from = end;
    }
    (found, None)
}

fn parse_tagged(text: &str, tools: &[ToolSpec]) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let (found, unclosed) = blocks(text);
    let mut from = 0;
    for block in found {
        out.content.push_str(&text[from..block.start]);
        match block.body.and_then(|body| call_from_object(body, tools)) {
            Some(call) => out.tool_calls.push(call),
            None => out.malformed = true,
        }
        from = block.end;
    }
    // Unclosed: the model stopped mid-call. Only whole calls are trusted.
    let rest_end = unclosed.unwrap_or(text.len());
    out.malformed |= unclosed.is_some();
    out.content.push_str(&text[from..rest_end]);
    out.content = out.content.trim().to_string();
    out
}

fn parse_bare(text: &str, tools: &[ToolSpec]) -> ParsedOutput {
    let trimmed = text.trim();
    let as_content = || ParsedOutput {
        content: text.to_string(),
        ..ParsedOutput::default()
    };
    match serde_json::from_str::<Value>(trimmed) {
        Ok(value) => match call_from_object(value, tools) {
            Some(call) => ParsedOutput {
                content: String::new(),
                tool_calls: vec![call],
                malformed: false,
            },
            // Whole JSON that is no call is an answer in JSON (`response_format`).
            None => as_content(),
        },
        // Cut short: withheld if it was on its way to being a call.
        Err(_) if trimmed.contains("\"name\"") || trimmed.contains("\"arguments\"") => {
            ParsedOutput {
                malformed: true,
                ..ParsedOutput::default()
            }
        }
        Err(_) => as_content(),
    }
}

/// A call of one of `tools`, written as the grammar writes it: its name and its
/// arguments object.
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
    let arguments = fields.remove("arguments")?;
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
    fn tags_inside_a_string_are_text_of_the_call() {
        let out = parse(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"</tool_call> <tool_call>\"}}\n</tool_call>",
            &tools(),
        );
        assert!(!out.malformed);
        assert_eq!(out.content, "");
        assert_eq!(
            out.tool_calls[0].arguments,
            r#"{"city":"</tool_call> <tool_call>"}"#
        );
    }

    #[test]
    fn several_calls_are_read_in_order() {
        let call = |city: &str| {
            format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\"}}}}\n</tool_call>")
        };
        let out = parse(&format!("{}\n{}", call("Paris"), call("Rome")), &tools());
        assert!(!out.malformed);
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.tool_calls[1].arguments, r#"{"city":"Rome"}"#);
    }

    #[test]
    fn a_bare_call_is_a_call_and_other_json_an_answer() {
        let out = parse(r#"{"name": "get_weather", "arguments": {}}"#, &tools());
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].arguments, "{}");
        let answer = r#"{"name": "Ann", "age": 30}"#;
        let out = parse(answer, &tools());
        assert!(!out.malformed);
        assert_eq!(out.content, answer);
    }

    #[test]
    fn broken_calls_are_flagged_and_withheld() {
        let cases = [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}",
            "<tool_call>{\"name\": \"delete_everything\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": [1, 2]}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\"}</tool_call>",
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
