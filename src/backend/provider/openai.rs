//! The OpenAI chat-completions dialect, spoken by OpenAI and most self-hosted servers
//! (vLLM, Ollama, llama.cpp, OpenRouter...).

use serde::Deserialize;
use serde_json::{json, Value};

use super::assemble::ToolCallDeltas;
use super::dialect::{Delta, Dialect, Ending, StreamDecoder};
use super::sse::SseEvent;
use crate::chat::{ChatRequest, Message, ResponseFormat, Role, TokenLogprob, ToolChoice, Usage};

pub struct OpenAi;

impl Dialect for OpenAi {
    fn path(&self) -> &'static str {
        "/chat/completions"
    }

    fn headers(&self, api_key: Option<&str>) -> Vec<(&'static str, String)> {
        api_key
            .map(|key| ("authorization", format!("Bearer {key}")))
            .into_iter()
            .collect()
    }

    fn body(&self, request: &ChatRequest, upstream_model: &str, _default_max_tokens: u32) -> Value {
        let sampling = &request.sampling;
        let mut body = json!({
            "model": upstream_model,
            "messages": request.messages.iter().map(message).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let fields = [
            ("temperature", sampling.temperature.map(|t| json!(t))),
            ("top_p", sampling.top_p.map(|p| json!(p))),
            ("seed", sampling.seed.map(|seed| json!(seed as i64))),
            ("max_tokens", sampling.max_tokens.map(|n| json!(n))),
            (
                "stop",
                (!sampling.stop.is_empty()).then(|| json!(sampling.stop)),
            ),
            (
                "presence_penalty",
                (sampling.presence_penalty != 0.0).then(|| json!(sampling.presence_penalty)),
            ),
            (
                "frequency_penalty",
                (sampling.frequency_penalty != 0.0).then(|| json!(sampling.frequency_penalty)),
            ),
            ("logprobs", request.logprobs.map(|_| json!(true))),
            (
                "top_logprobs",
                request.logprobs.filter(|&k| k > 0).map(|k| json!(k)),
            ),
            ("tools", (!request.tools.is_empty()).then(|| tools(request))),
            ("response_format", response_format(&request.response_format)),
            (
                "tool_choice",
                (!request.tools.is_empty()).then(|| tool_choice(&request.tool_choice)),
            ),
            (
                "parallel_tool_calls",
                request
                    .parallel_tool_calls
                    .filter(|_| !request.tools.is_empty())
                    .map(|parallel| json!(parallel)),
            ),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                body[name] = value;
            }
        }
        body
    }

    fn decoder(&self, _request: &ChatRequest) -> Box<dyn StreamDecoder> {
        Box::<Decoder>::default()
    }

    fn constrains_json(&self) -> bool {
        true
    }
}

fn response_format(format: &ResponseFormat) -> Option<Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "json_object"})),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => Some(json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        })),
    }
}

fn message(message: &Message) -> Value {
    match message.role {
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": message.content,
        }),
        Role::Assistant if !message.tool_calls.is_empty() => json!({
            "role": "assistant",
            "content": (!message.content.is_empty()).then_some(&message.content),
            "tool_calls": message.tool_calls.iter().map(|call| json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })).collect::<Vec<_>>(),
        }),
        role => json!({"role": role.as_str(), "content": message.content}),
    }
}

fn tools(request: &ChatRequest) -> Value {
    request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            })
        })
        .collect()
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

// ---- the streamed answer ----

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<ChunkUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    logprobs: Option<ChunkLogprobs>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ChunkLogprobs {
    #[serde(default)]
    content: Vec<WireLogprob>,
}

#[derive(Deserialize)]
struct WireLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTopLogprob>,
}

#[derive(Deserialize)]
struct WireTopLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u32,
}

#[derive(Default)]
struct Decoder {
    calls: ToolCallDeltas,
    finish_reason: Option<String>,
    usage: Usage,
    done: bool,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: &SseEvent) -> Result<Option<Delta>, String> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Chunk =
            serde_json::from_str(&event.data).map_err(|e| format!("unreadable chunk: {e}"))?;
        if let Some(error) = chunk.error {
            return Err(error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error")
                .to_string());
        }
        if let Some(usage) = chunk.usage {
            self.usage = Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_prompt_tokens: usage
                    .prompt_tokens_details
                    .map_or(0, |details| details.cached_tokens),
            };
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(None);
        };
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        for call in choice.delta.tool_calls {
            let function = call.function.as_ref();
            self.calls.push(
                call.index,
                call.id.as_deref(),
                function.and_then(|f| f.name.as_deref()),
                function.and_then(|f| f.arguments.as_deref()),
            );
        }
        let logprobs: Vec<TokenLogprob> = choice
            .logprobs
            .map(|l| l.content.into_iter().map(token_logprob).collect())
            .unwrap_or_default();
        let text = choice.delta.content.unwrap_or_default();
        Ok((!text.is_empty() || !logprobs.is_empty()).then_some(Delta { text, logprobs }))
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn ending(&mut self) -> Ending {
        let calls = std::mem::take(&mut self.calls);
        Ending::new(calls, self.finish_reason.as_deref(), "length", self.usage)
    }
}

fn token_logprob(wire: WireLogprob) -> TokenLogprob {
    TokenLogprob {
        bytes: wire.bytes.unwrap_or_else(|| wire.token.as_bytes().to_vec()),
        token: wire.token,
        logprob: wire.logprob,
        top_logprobs: wire
            .top_logprobs
            .into_iter()
            .map(|top| crate::chat::TopLogprob {
                bytes: top.bytes.unwrap_or_else(|| top.token.as_bytes().to_vec()),
                token: top.token,
                logprob: top.logprob,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FinishReason, Sampling, ToolCall, ToolSpec};

    fn data(text: &str) -> SseEvent {
        SseEvent {
            name: None,
            data: text.into(),
        }
    }

    #[test]
    fn request_carries_history_tools_and_sampling() {
        let mut assistant = Message::text(Role::Assistant, "");
        assistant.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        });
        let mut tool = Message::text(Role::Tool, "42");
        tool.tool_call_id = Some("call_1".into());
        let mut request = ChatRequest {
            model: "gpt-x".into(),
            messages: vec![Message::text(Role::User, "hi"), assistant, tool],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Required,
            sampling: Sampling {
                max_tokens: Some(5),
                stop: vec!["END".into()],
                ..Sampling::default()
            },
            logprobs: Some(2),
            response_format: Default::default(),
            raw_prompt: false,
            choices: 1,
            parallel_tool_calls: None,
        };
        let body = OpenAi.body(&request, "upstream-x", 0);
        assert_eq!(body["model"], "upstream-x");
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(body["messages"][2]["tool_call_id"], "call_1");
        assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(body["tool_choice"], "required");
        assert!(body.get("parallel_tool_calls").is_none(), "unsaid, unsent");
        request.parallel_tool_calls = Some(false);
        let body = OpenAi.body(&request, "upstream-x", 0);
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["top_logprobs"], 2);
        assert!(body.get("seed").is_none());
    }

    #[test]
    fn stream_with_split_tool_call_and_usage() {
        let mut decoder = OpenAi.decoder(&ChatRequest::new("m", Vec::new()));
        let delta = decoder
            .event(&data(r#"{"choices":[{"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#))
            .unwrap();
        assert_eq!(delta.unwrap().text, "Hi");
        for piece in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":8}}}"#,
        ] {
            assert_eq!(decoder.event(&data(piece)).unwrap(), None);
        }
        assert!(!decoder.complete());
        decoder.event(&data("[DONE]")).unwrap();
        assert!(decoder.complete());
        let ending = decoder.ending();
        assert_eq!(ending.finish_reason, FinishReason::ToolCalls);
        assert_eq!(ending.tool_calls[0].id, "call_9");
        assert_eq!(ending.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(ending.usage.completion_tokens, 7);
        assert_eq!(ending.usage.cached_prompt_tokens, 8);
        assert!(ending.malformed_tool_calls.is_empty());
    }

    #[test]
    fn arguments_that_are_not_json_go_on_as_written_for_policy_to_refuse() {
        let mut decoder = OpenAi.decoder(&ChatRequest::new("m", Vec::new()));
        decoder
            .event(&data(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":"tool_calls"}]}"#))
            .unwrap();
        let ending = decoder.ending();
        assert_eq!(ending.tool_calls[0].arguments, r#"{"a":"#);
        assert!(ending.malformed_tool_calls.is_empty());
        assert_eq!(ending.finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn calls_whose_pieces_contradict_each_other_are_passed_on_as_malformed() {
        let mut decoder = OpenAi.decoder(&ChatRequest::new("m", Vec::new()));
        for piece in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"b","function":{"arguments":"x"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c","function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":500,"id":"d","function":{"name":"g"}}]}}]}"#,
        ] {
            decoder.event(&data(piece)).unwrap();
        }
        let ending = decoder.ending();
        assert!(ending.tool_calls.is_empty());
        let malformed: Vec<(&str, &str, &str)> = ending
            .malformed_tool_calls
            .iter()
            .map(|call| (call.id.as_str(), call.name.as_str(), call.problem.as_str()))
            .collect();
        assert_eq!(
            malformed[0],
            ("a", "f", "tool call 0: its id changed from `a` to `b`")
        );
        assert_eq!(malformed[1], ("c", "", "tool call 1 has no name"));
        assert_eq!(
            malformed[2].2,
            "tool call index 500 is out of range (at most 128 calls)"
        );
        assert_eq!(ending.finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn in_stream_errors_surface() {
        let mut decoder = OpenAi.decoder(&ChatRequest::new("m", Vec::new()));
        let error = decoder
            .event(&data(r#"{"error":{"message":"overloaded"}}"#))
            .unwrap_err();
        assert_eq!(error, "overloaded");
    }
}
