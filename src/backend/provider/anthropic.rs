//! Anthropic's Messages API, behind OpenAI's shape: system prompts move to `system`,
//! tool calls become `tool_use` blocks and tool results `tool_result` blocks in a user
//! turn, a JSON answer (`response_format`) is asked for as a forced tool's input, and
//! the streamed content-block events are read back into deltas and calls.

use serde::Deserialize;
use serde_json::{json, Value};

use super::assemble::ToolCallDeltas;
use super::dialect::{Delta, Dialect, Ending, StreamDecoder};
use super::sse::SseEvent;
use crate::chat::{ChatRequest, Message, Role, ToolChoice, Usage};

pub const API_VERSION: &str = "2023-06-01";
/// Anthropic's temperature runs from 0 to 1 where OpenAI's runs to 2.
const MAX_TEMPERATURE: f32 = 1.0;

/// The tool a JSON answer is written through: the API has no `response_format`, but
/// the input of a tool it is made to call is held to the tool's schema.
const ANSWER_TOOL: &str = "json_answer";

pub struct Anthropic;

impl Dialect for Anthropic {
    fn path(&self) -> &'static str {
        "/messages"
    }

    fn headers(&self, api_key: Option<&str>) -> Vec<(&'static str, String)> {
        let mut headers = vec![("anthropic-version", API_VERSION.to_string())];
        if let Some(key) = api_key {
            headers.push(("x-api-key", key.to_string()));
        }
        headers
    }

    fn body(&self, request: &ChatRequest, upstream_model: &str, default_max_tokens: u32) -> Value {
        let sampling = &request.sampling;
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut body = json!({
            "model": upstream_model,
            "max_tokens": sampling.max_tokens.unwrap_or(default_max_tokens),
            "messages": turns(&request.messages),
            "stream": true,
        });
        if let Some(temperature) = sampling.temperature {
            body["temperature"] = json!(temperature.min(MAX_TEMPERATURE));
        }
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(top_p) = sampling.top_p.filter(|&top_p| top_p < 1.0) {
            body["top_p"] = json!(top_p);
        }
        if !sampling.stop.is_empty() {
            body["stop_sequences"] = json!(sampling.stop);
        }
        let mut tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| json!({"name": tool.name, "description": tool.description, "input_schema": tool.parameters}))
            .collect();
        let mut tool_choice = match &request.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
        };
        if let Some(schema) = answer_schema(request) {
            tools.push(json!({"name": ANSWER_TOOL, "description": "Give the answer in this shape.", "input_schema": schema}));
            // Where the model may answer or call, the answer is one more tool to call.
            tool_choice = if request.callable_tools().is_empty() {
                json!({"type": "tool", "name": ANSWER_TOOL})
            } else {
                json!({"type": "any"})
            };
        }
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
            if request.parallel_tool_calls == Some(false) && tool_choice["type"] != "none" {
                tool_choice["disable_parallel_tool_use"] = json!(true);
            }
            body["tool_choice"] = tool_choice;
        }
        body
    }

    fn decoder(&self, request: &ChatRequest) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            answer_tool: answer_schema(request).is_some(),
            ..Decoder::default()
        })
    }

    fn constrains_json(&self) -> bool {
        true
    }
}

/// The schema of the JSON answer `request` asks for, when the answer may be text
/// (not when it must be a call of the client's own tools).
fn answer_schema(request: &ChatRequest) -> Option<Value> {
    if request.demands_call() {
        return None;
    }
    request.response_format.schema()
}

/// Anthropic wants strictly alternating user and assistant turns of content blocks;
/// tool results travel in the user turn that follows the call.
fn turns(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System => continue,
            Role::User => (
                "user",
                vec![json!({"type": "text", "text": message.content})],
            ),
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": message.content,
                })],
            ),
            Role::Assistant => {
                let text = (!message.content.is_empty())
                    .then(|| json!({"type": "text", "text": message.content}));
                let calls = message.tool_calls.iter().map(|call| {
                    // Arguments were checked to be JSON when the request was validated.
                    let input: Value =
                        serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
                });
                ("assistant", text.into_iter().chain(calls).collect())
            }
        };
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

// ---- the streamed answer ----

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamedEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop,
    MessageDelta {
        delta: MessageChange,
        usage: Option<OutputUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorDetail,
    },
}

#[derive(Deserialize)]
struct StartedMessage {
    usage: Option<InputUsage>,
}

#[derive(Deserialize)]
struct InputUsage {
    /// Not counting the cached part of the prompt: a cache hit is reported apart, a
    /// cache write too.
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    cache_read_input_tokens: u32,
    #[serde(default)]
    cache_creation_input_tokens: u32,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageChange {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct OutputUsage {
    #[serde(default)]
    output_tokens: u32,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

#[derive(Default)]
struct Decoder {
    /// The request asked for a JSON answer through `ANSWER_TOOL`.
    answer_tool: bool,
    /// The content block holding that answer, read back as text.
    answer_block: Option<usize>,
    calls: ToolCallDeltas,
    stop_reason: Option<String>,
    usage: Usage,
    done: bool,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: &SseEvent) -> Result<Option<Delta>, String> {
        let parsed: StreamedEvent = match serde_json::from_str(&event.data) {
            Ok(parsed) => parsed,
            // Event types added after this adapter was written are skipped, as the API
            // asks of clients.
            Err(_) if !event.data.contains("\"error\"") => return Ok(None),
            Err(e) => return Err(format!("unreadable event: {e}")),
        };
        match parsed {
            StreamedEvent::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.usage.prompt_tokens = usage.input_tokens
                        + usage.cache_read_input_tokens
                        + usage.cache_creation_input_tokens;
                    self.usage.cached_prompt_tokens = usage.cache_read_input_tokens;
                }
            }
            StreamedEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                if let Block::ToolUse { id, name } = content_block {
                    if self.answer_tool && name == ANSWER_TOOL {
                        self.answer_block = Some(index);
                    } else {
                        self.calls.push(index, Some(&id), Some(&name), None);
                    }
                }
            }
            StreamedEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => {
                    return Ok(Some(Delta {
                        text,
                        logprobs: Vec::new(),
                    }))
                }
                BlockDelta::InputJsonDelta { partial_json } if self.answer_block == Some(index) => {
                    return Ok(Some(Delta {
                        text: partial_json,
                        logprobs: Vec::new(),
                    }))
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    self.calls.push(index, None, None, Some(&partial_json));
                }
                BlockDelta::Other => {}
            },
            StreamedEvent::MessageDelta { delta, usage } => {
                self.stop_reason = delta.stop_reason.or(self.stop_reason.take());
                if let Some(usage) = usage {
                    self.usage.completion_tokens = usage.output_tokens;
                }
            }
            StreamedEvent::MessageStop => self.done = true,
            StreamedEvent::ContentBlockStop | StreamedEvent::Ping => {}
            StreamedEvent::Error { error } => return Err(error.message),
        }
        Ok(None)
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn ending(&mut self) -> Ending {
        let calls = std::mem::take(&mut self.calls);
        Ending::new(calls, self.stop_reason.as_deref(), "max_tokens", self.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FinishReason, ResponseFormat, Sampling, ToolCall, ToolSpec};

    fn event(name: &str, data: Value) -> SseEvent {
        SseEvent {
            name: Some(name.into()),
            data: data.to_string(),
        }
    }

    #[test]
    fn request_moves_system_and_turns_calls_into_blocks() {
        let mut assistant = Message::text(Role::Assistant, "Checking.");
        assistant.tool_calls.push(ToolCall {
            id: "toolu_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        let mut first_result = Message::text(Role::Tool, "18C");
        first_result.tool_call_id = Some("toolu_1".into());
        let request = ChatRequest {
            model: "claude-x".into(),
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, "Weather in Paris?"),
                assistant,
                first_result,
                Message::text(Role::User, "Thanks, and tomorrow?"),
            ],
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: Some("Weather".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            tool_choice: ToolChoice::Function("get_weather".into()),
            sampling: Sampling {
                temperature: Some(1.7),
                ..Sampling::default()
            },
            logprobs: None,
            response_format: Default::default(),
            raw_prompt: false,
            choices: 1,
            parallel_tool_calls: None,
        };
        let body = Anthropic.body(&request, "claude-upstream", 1024);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["temperature"], 1.0);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[1]["content"][1]["type"], "tool_use");
        assert_eq!(messages[1]["content"][1]["input"]["city"], "Paris");
        // The tool result and the next question share one user turn.
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "toolu_1");
        assert_eq!(messages[2]["content"][1]["text"], "Thanks, and tomorrow?");
        assert_eq!(
            body["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "get_weather"})
        );
    }

    #[test]
    fn streamed_text_and_tool_use_are_read_back() {
        let mut decoder = Anthropic.decoder(&ChatRequest::new("m", Vec::new()));
        let events = [
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {}}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
            ),
            event("ping", json!({"type": "ping"})),
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 31}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ];
        let text: String = events
            .iter()
            .filter_map(|e| decoder.event(e).unwrap())
            .map(|delta| delta.text)
            .collect();
        assert_eq!(text, "Let me check.");
        assert!(decoder.complete());
        let ending = decoder.ending();
        assert_eq!(ending.finish_reason, FinishReason::ToolCalls);
        assert_eq!(ending.tool_calls[0].id, "toolu_7");
        assert_eq!(ending.tool_calls[0].arguments, r#"{"city": "Paris"}"#);
        assert_eq!(
            ending.usage,
            Usage {
                prompt_tokens: 125,
                completion_tokens: 31,
                cached_prompt_tokens: 100,
            }
        );
    }

    #[test]
    fn a_json_answer_is_asked_for_as_a_forced_tool_and_read_back_as_text() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut request = ChatRequest::new("m", vec![Message::text(Role::User, "Where?")]);
        request.response_format = ResponseFormat::JsonSchema {
            name: "place".into(),
            schema: schema.clone(),
            strict: true,
        };
        let body = Anthropic.body(&request, "claude-x", 100);
        assert_eq!(body["tools"][0]["name"], ANSWER_TOOL);
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": ANSWER_TOOL})
        );
        let mut decoder = Anthropic.decoder(&request);
        let events = [
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": ANSWER_TOOL, "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        ];
        let text: String = events
            .iter()
            .filter_map(|e| decoder.event(&event("e", e.clone())).unwrap())
            .map(|delta| delta.text)
            .collect();
        assert_eq!(text, r#"{"city": "Paris"}"#);
        let ending = decoder.ending();
        assert_eq!(ending.finish_reason, FinishReason::Stop);
        assert!(ending.tool_calls.is_empty());

        // With the client's own tools on offer, the answer is one more tool to call; a
        // call of one of them stays a call.
        request.tools = vec![ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object"}),
        }];
        let body = Anthropic.body(&request, "claude-x", 100);
        assert_eq!(body["tools"].as_array().unwrap().len(), 2);
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        request.tool_choice = ToolChoice::Required;
        request.parallel_tool_calls = Some(false);
        let body = Anthropic.body(&request, "claude-x", 100);
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(body["tool_choice"]["disable_parallel_tool_use"], true);
        let mut decoder = Anthropic.decoder(&request);
        decoder
            .event(&event("e", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_2", "name": ANSWER_TOOL, "input": {}}})))
            .unwrap();
        assert_eq!(decoder.ending().finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn error_events_surface() {
        let mut decoder = Anthropic.decoder(&ChatRequest::new("m", Vec::new()));
        let error = decoder
            .event(&event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})))
            .unwrap_err();
        assert_eq!(error, "Overloaded");
    }
}
