//! OpenAI's Responses API on warden's one request path. A `POST /v1/responses` body is
//! rewritten as the chat-completions request it means, so the same rules validate it
//! and the same gateway serves it; an error names the Responses field the client
//! wrote. The gateway's answer becomes a response object, or its typed stream events.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::request::{self, Limits, ParsedRequest};
use super::types::{
    ChatCompletionRequest, ContentPart, FunctionCall, FunctionDefinition, JsonSchemaFormat,
    MessageContent, NamedFunction, NamedToolChoice, RequestMessage, RequestToolCall,
    ResponseFormat, ToolChoiceValue, ToolDefinition,
};
use crate::api::error::ApiError;
use crate::api::extract::parse_json;
use crate::chat::{FinishReason, MaxTokensField, Message, Role, TokenLogprob, ToolCall};
use crate::error::GatewayError;
use crate::gateway::Recorded;

/// The `include` entry that asks for the tokens' log-probabilities.
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

#[derive(Debug, Deserialize)]
pub struct CreateResponse {
    pub model: Option<String>,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_output_tokens: Option<i64>,
    pub text: Option<TextConfig>,
    #[serde(default)]
    pub stream: bool,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub top_logprobs: Option<u32>,
    pub include: Option<Vec<String>>,
    pub user: Option<String>,
    /// Features warden does not serve: each refused by name rather than ignored.
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<InputItem>),
}

/// One input item. Every kind's fields in one struct, told apart by `type` (which a
/// plain message may leave out), so a wrong field is reported against its item.
#[derive(Debug, Deserialize)]
pub struct InputItem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub role: Option<String>,
    pub content: Option<ItemContent>,
    pub call_id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<ItemContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ItemContent {
    Text(String),
    Parts(Vec<ItemPart>),
}

#[derive(Debug, Deserialize)]
pub struct ItemPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub refusal: Option<String>,
}

/// A tool as the Responses API offers it: a function's fields at the top level.
#[derive(Debug, Deserialize, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Typed {
        #[serde(rename = "type")]
        kind: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

#[derive(Debug, Deserialize, Serialize)]
pub struct TextConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<TextFormat>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// What answering a Responses request needs besides the chat request it means.
#[derive(Debug)]
pub struct ResponseParts {
    pub previous_response_id: Option<String>,
    pub store: bool,
    /// Where the stored conversation goes among the messages: after the instructions.
    pub history_at: usize,
    pub echo: RequestEcho,
    pub logprobs: bool,
    /// Where each message came from, for naming the field of a later refusal.
    pub origins: Vec<String>,
}

/// What a response object repeats of the request that made it, as OpenAI's does.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEcho {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub metadata: Map<String, Value>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    /// As sent: where the client left them out, the model's defaults apply.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Value,
    pub truncation: &'static str,
    pub user: Option<String>,
}

/// A request body as received, parsed and validated: the chat request it means, and
/// the rest of what its answer needs.
pub fn parse_body(
    body: &[u8],
    limits: &Limits,
    agent: &str,
) -> Result<(ParsedRequest, ResponseParts), ApiError> {
    let wire: CreateResponse = parse_json(body)?;
    Ok(parse(wire, limits, agent)?)
}

pub fn parse(
    wire: CreateResponse,
    limits: &Limits,
    agent: &str,
) -> Result<(ParsedRequest, ResponseParts), GatewayError> {
    refuse_unserved(&wire)?;
    let echo = RequestEcho {
        instructions: wire.instructions.clone(),
        max_output_tokens: wire.max_output_tokens,
        metadata: wire.metadata.clone().unwrap_or_default(),
        parallel_tool_calls: wire.parallel_tool_calls.unwrap_or(true),
        previous_response_id: wire.previous_response_id.clone(),
        store: wire.store.unwrap_or(true),
        temperature: wire.temperature,
        top_p: wire.top_p,
        text: echoed(&wire.text).unwrap_or_else(|| json!({"format": {"type": "text"}})),
        tool_choice: echoed(&wire.tool_choice).unwrap_or_else(|| json!("auto")),
        tools: echoed(&wire.tools).unwrap_or_else(|| json!([])),
        truncation: "disabled",
        user: wire.user.clone(),
    };
    let logprobs = wire
        .include
        .iter()
        .flatten()
        .any(|entry| entry == INCLUDE_LOGPROBS);
    let (messages, origins) = messages(wire.instructions, wire.input)?;
    let history_at = usize::from(origins.first().is_some_and(|o| o == "instructions"));
    let chat = ChatCompletionRequest {
        model: wire.model,
        messages,
        temperature: wire.temperature,
        top_p: wire.top_p,
        n: None,
        seed: None,
        max_tokens: None,
        max_completion_tokens: wire.max_output_tokens,
        stop: None,
        presence_penalty: None,
        frequency_penalty: None,
        logprobs: Some(logprobs),
        top_logprobs: logprobs.then_some(wire.top_logprobs.unwrap_or(0)),
        logit_bias: None,
        stream: wire.stream,
        stream_options: None,
        tools: wire.tools.map(tools).transpose()?,
        tool_choice: wire.tool_choice.map(tool_choice).transpose()?,
        parallel_tool_calls: wire.parallel_tool_calls,
        functions: None,
        function_call: None,
        response_format: wire.text.and_then(|text| text.format).map(format),
        user: wire.user,
        metadata: wire.metadata,
    };
    let mut request =
        request::parse(chat, limits, agent).map_err(|error| in_responses_terms(error, &origins))?;
    request.chat.sampling.max_tokens_field = MaxTokensField::MaxOutputTokens;
    let parts = ResponseParts {
        previous_response_id: wire.previous_response_id,
        store: echo.store,
        history_at,
        echo,
        logprobs,
        origins,
    };
    Ok((request, parts))
}

fn echoed(value: &impl Serialize) -> Option<Value> {
    serde_json::to_value(value)
        .ok()
        .filter(|value| !value.is_null())
}

/// Parts of the API warden does not serve, refused by name: answering without them
/// would quietly be a different request.
fn refuse_unserved(wire: &CreateResponse) -> Result<(), GatewayError> {
    if wire.background == Some(true) {
        return Err(GatewayError::invalid(
            "background",
            "background responses are not served; stream the response instead",
        ));
    }
    if wire.conversation.is_some() {
        return Err(GatewayError::invalid(
            "conversation",
            "conversations are not served; chain responses with `previous_response_id`",
        ));
    }
    if wire.prompt.is_some() {
        return Err(GatewayError::invalid(
            "prompt",
            "stored prompt templates are not served; send `instructions` and `input`",
        ));
    }
    if let Some(entry) = wire
        .include
        .iter()
        .flatten()
        .find(|entry| *entry != INCLUDE_LOGPROBS)
    {
        return Err(GatewayError::invalid(
            "include",
            format!("`{entry}` cannot be included; only `{INCLUDE_LOGPROBS}`"),
        ));
    }
    Ok(())
}

/// The chat messages `instructions` and `input` mean, each with the Responses
/// parameter it came from (for errors).
fn messages(
    instructions: Option<String>,
    input: Option<Input>,
) -> Result<(Vec<RequestMessage>, Vec<String>), GatewayError> {
    let mut messages = Vec::new();
    let mut origins = Vec::new();
    if let Some(instructions) = instructions {
        messages.push(text_message("system", MessageContent::Text(instructions)));
        origins.push("instructions".to_string());
    }
    match input {
        None => return Err(GatewayError::invalid("input", "`input` is required")),
        Some(Input::Text(text)) => {
            messages.push(text_message("user", MessageContent::Text(text)));
            origins.push("input".to_string());
        }
        Some(Input::Items(items)) => {
            for (index, item) in items.into_iter().enumerate() {
                let origin = format!("input[{index}]");
                if let Some(message) = item_message(item, &origin, messages.last_mut())? {
                    messages.push(message);
                    origins.push(origin);
                }
            }
        }
    }
    Ok((messages, origins))
}

fn text_message(role: &str, content: MessageContent) -> RequestMessage {
    RequestMessage {
        role: role.to_string(),
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        function_call: None,
    }
}

/// The message one input item adds; `None` when it joins `last` (a function call
/// after an assistant message is that message's call) or carries nothing a model
/// reads.
fn item_message(
    item: InputItem,
    origin: &str,
    last: Option<&mut RequestMessage>,
) -> Result<Option<RequestMessage>, GatewayError> {
    let needs = |field: &str, value: Option<String>| {
        value.ok_or_else(|| {
            GatewayError::invalid(
                format!("{origin}.{field}"),
                format!("this item needs `{field}`"),
            )
        })
    };
    match item.kind.as_deref().unwrap_or("message") {
        "message" => {
            let role = needs("role", item.role)?;
            let content = item.content.ok_or_else(|| {
                GatewayError::invalid(format!("{origin}.content"), "a message needs `content`")
            })?;
            Ok(Some(text_message(
                &role,
                content_text(content, &format!("{origin}.content"))?,
            )))
        }
        "function_call" => {
            let call = RequestToolCall {
                id: needs("call_id", item.call_id)?,
                kind: Some("function".into()),
                function: FunctionCall {
                    name: needs("name", item.name)?,
                    arguments: needs("arguments", item.arguments)?,
                },
            };
            match last {
                Some(last) if last.role == "assistant" => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                    Ok(None)
                }
                _ => Ok(Some(RequestMessage {
                    role: "assistant".into(),
                    content: None,
                    name: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    function_call: None,
                })),
            }
        }
        "function_call_output" => {
            let output = item.output.ok_or_else(|| {
                GatewayError::invalid(format!("{origin}.output"), "this item needs `output`")
            })?;
            let mut message = text_message(
                "tool",
                content_text(output, &format!("{origin}.output"))?,
            );
            message.tool_call_id = Some(needs("call_id", item.call_id)?);
            Ok(Some(message))
        }
        // Another model's reasoning, handed back with its output: nothing the local
        // model or a chat provider can read.
        "reasoning" => Ok(None),
        other => Err(GatewayError::invalid(
            format!("{origin}.type"),
            format!(
                "input items of type `{other}` are not served; use message, function_call or function_call_output"
            ),
        )),
    }
}

/// A message's or an output's content as chat text parts: the text of input and output
/// text, and of a refusal.
fn content_text(content: ItemContent, param: &str) -> Result<MessageContent, GatewayError> {
    let parts = match content {
        ItemContent::Text(text) => return Ok(MessageContent::Text(text)),
        ItemContent::Parts(parts) => parts,
    };
    parts
        .into_iter()
        .map(|part| {
            let text = match part.kind.as_str() {
                "input_text" | "output_text" => part.text,
                "refusal" => part.refusal,
                other => {
                    return Err(GatewayError::invalid(
                        param,
                        format!(
                            "content of type `{other}` is not served; only input_text, output_text and refusal"
                        ),
                    ))
                }
            };
            let text = text.ok_or_else(|| {
                GatewayError::invalid(param, format!("a `{}` part needs its text", part.kind))
            })?;
            Ok(ContentPart {
                kind: "text".into(),
                text: Some(text),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(MessageContent::Parts)
}

fn tools(tools: Vec<Tool>) -> Result<Vec<ToolDefinition>, GatewayError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(index, tool)| {
            if tool.kind != "function" {
                return Err(GatewayError::invalid(
                    format!("tools[{index}].type"),
                    format!(
                        "`{}` tools are not served; only function tools, which the agent runs",
                        tool.kind
                    ),
                ));
            }
            Ok(ToolDefinition {
                kind: tool.kind,
                function: Some(FunctionDefinition {
                    name: tool.name,
                    description: tool.description,
                    parameters: tool.parameters,
                    strict: tool.strict,
                }),
            })
        })
        .collect()
}

fn tool_choice(choice: ToolChoice) -> Result<ToolChoiceValue, GatewayError> {
    match choice {
        ToolChoice::Mode(mode) => Ok(ToolChoiceValue::Mode(mode)),
        ToolChoice::Typed {
            kind,
            name: Some(name),
        } if kind == "function" => Ok(ToolChoiceValue::Named(NamedToolChoice {
            kind,
            function: NamedFunction { name },
        })),
        ToolChoice::Typed { kind, .. } if kind == "function" => Err(GatewayError::invalid(
            "tool_choice.name",
            "a function tool choice needs the function's `name`",
        )),
        ToolChoice::Typed { kind, .. } => Err(GatewayError::invalid(
            "tool_choice.type",
            format!("`{kind}` is not a tool choice warden serves; use none, auto, required or a function"),
        )),
    }
}

fn format(format: TextFormat) -> ResponseFormat {
    let schema = JsonSchemaFormat {
        name: format.name,
        schema: format.schema,
        strict: format.strict,
    };
    ResponseFormat {
        json_schema: (format.kind == "json_schema").then_some(schema),
        kind: format.kind,
    }
}

/// `error` from validating the chat request a Responses request was rewritten as,
/// naming the Responses field the client wrote: `origins[i]` is where message `i` came
/// from.
pub fn in_responses_terms(error: GatewayError, origins: &[String]) -> GatewayError {
    match error {
        GatewayError::InvalidRequest {
            message,
            param: Some(param),
        } => GatewayError::InvalidRequest {
            message,
            param: Some(responses_param(&param, origins)),
        },
        other => other.with_prompt_named("input"),
    }
}

fn responses_param(param: &str, origins: &[String]) -> String {
    if let Some(rest) = param.strip_prefix("messages[") {
        let index = rest
            .split(']')
            .next()
            .and_then(|index| index.parse::<usize>().ok());
        return index
            .and_then(|index| origins.get(index).cloned())
            .unwrap_or_else(|| "input".into());
    }
    if param == "messages" {
        return "input".into();
    }
    if let Some(rest) = param.strip_prefix("response_format") {
        let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
        return format!("text.format{rest}");
    }
    if param.starts_with("tools[") {
        return param
            .replacen(".function.", ".", 1)
            .replacen(".function", "", 1);
    }
    if param.starts_with("tool_choice") {
        return param.replacen(".function", "", 1);
    }
    match param {
        "max_completion_tokens" => "max_output_tokens".into(),
        "logprobs" => "top_logprobs".into(),
        other => other.into(),
    }
}

// ---- the answer ----

/// What names a response and its parts, and what it echoes of its request.
pub struct ResponseIdentity {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: RequestEcho,
    pub logprobs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub status: &'static str,
    pub error: Option<Value>,
    pub incomplete_details: Option<Value>,
    #[serde(flatten)]
    pub echo: RequestEcho,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub usage: Option<Value>,
    /// The report as the audit log recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warden: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<TokenLogprob>,
}

impl OutputText {
    fn new(text: String, logprobs: Vec<TokenLogprob>) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
            logprobs,
        }
    }
}

impl ResponseIdentity {
    /// The message item's id: one message per response, so the response's id tells it.
    pub fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    /// The response object before any output: what a stream opens with.
    pub fn in_progress(&self) -> ResponseObject {
        self.object("in_progress", None, Vec::new(), None, None)
    }

    fn object(
        &self,
        status: &'static str,
        incomplete_details: Option<Value>,
        output: Vec<OutputItem>,
        usage: Option<Value>,
        warden: Option<Box<RawValue>>,
    ) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            error: None,
            incomplete_details,
            echo: self.echo.clone(),
            model: self.model.clone(),
            output,
            usage,
            warden,
        }
    }

    /// The whole response: the text (when there is some, or no call), then each call
    /// the gateway let through.
    pub fn completed(
        &self,
        text: String,
        logprobs: Vec<TokenLogprob>,
        completed: &Recorded,
    ) -> ResponseObject {
        // This API has no `n`: its answer is the one choice.
        let (finish_reason, calls) = match completed.choices.first() {
            Some(choice) => (choice.finish_reason, choice.tool_calls.as_slice()),
            None => (FinishReason::Stop, &[][..]),
        };
        let incomplete = matches!(finish_reason, FinishReason::Length | FinishReason::Deadline);
        let status = if incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let mut output = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            output.push(OutputItem::Message {
                id: self.message_id(),
                status,
                role: "assistant",
                content: vec![OutputText::new(
                    text,
                    if self.logprobs { logprobs } else { Vec::new() },
                )],
            });
        }
        output.extend(calls.iter().map(function_call_item));
        let usage = completed.usage;
        let usage = json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens(),
        });
        self.object(
            status,
            incomplete.then(|| json!({"reason": "max_output_tokens"})),
            output,
            Some(usage),
            Some(completed.report_json.clone()),
        )
    }

    /// The response as it ends in a stream that failed, with the error's OpenAI body.
    pub fn failed(&self, error: &Value) -> ResponseObject {
        let mut failed = self.object("failed", None, Vec::new(), None, None);
        failed.error = Some(json!({
            "code": error["code"],
            "message": error["message"],
        }));
        failed
    }
}

fn function_call_item(call: &ToolCall) -> OutputItem {
    OutputItem::FunctionCall {
        id: format!("fc_{}", call.id.trim_start_matches("call_")),
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        status: "completed",
    }
}

/// The conversation a stored response continues: its messages (without its
/// instructions, which a follow-up does not inherit) and its output.
pub fn continued_conversation(
    mut messages: Vec<Message>,
    history_at: usize,
    response: &ResponseObject,
) -> Vec<Message> {
    messages.drain(..history_at);
    let mut answer = Message::text(Role::Assistant, String::new());
    for item in &response.output {
        match item {
            OutputItem::Message { content, .. } => {
                answer.content = content.iter().map(|part| part.text.as_str()).collect();
            }
            OutputItem::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => answer.tool_calls.push(ToolCall {
                id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
        }
    }
    messages.push(answer);
    messages
}

/// The events of one streamed response, numbered in order. The message item opens at
/// the first text, so an answer that is only calls has none.
pub struct ResponseEvents {
    identity: ResponseIdentity,
    sequence: u64,
    text: String,
    logprobs: Vec<TokenLogprob>,
    message_open: bool,
}

/// One event: its type (the SSE event name) and its data.
pub type StreamFrame = (&'static str, Value);

impl ResponseEvents {
    pub fn new(identity: ResponseIdentity) -> Self {
        Self {
            identity,
            sequence: 0,
            text: String::new(),
            logprobs: Vec::new(),
            message_open: false,
        }
    }

    fn frame(&mut self, kind: &'static str, mut data: Value) -> StreamFrame {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (kind, data)
    }

    pub fn opening(&mut self) -> Vec<StreamFrame> {
        let response = json!(self.identity.in_progress());
        vec![
            self.frame("response.created", json!({"response": response})),
            self.frame("response.in_progress", json!({"response": response})),
        ]
    }

    fn open_message(&mut self, frames: &mut Vec<StreamFrame>) {
        if self.message_open {
            return;
        }
        self.message_open = true;
        let item_id = self.identity.message_id();
        let item = json!({
            "id": item_id, "type": "message", "status": "in_progress",
            "role": "assistant", "content": [],
        });
        frames.push(self.frame(
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ));
        let part = OutputText::new(String::new(), Vec::new());
        frames.push(self.frame(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        ));
    }

    pub fn content(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Vec<StreamFrame> {
        let mut frames = Vec::new();
        self.open_message(&mut frames);
        let delta_logprobs = if self.identity.logprobs {
            logprobs.clone()
        } else {
            Vec::new()
        };
        frames.push(self.frame(
            "response.output_text.delta",
            json!({
                "item_id": self.identity.message_id(), "output_index": 0, "content_index": 0,
                "delta": text, "logprobs": delta_logprobs,
            }),
        ));
        self.text.push_str(&text);
        self.logprobs.extend(logprobs);
        frames
    }

    /// The closing events: the message's and each call's, then the whole response.
    /// Returns the response too, for the store.
    pub fn finish(&mut self, completed: &Recorded) -> (Vec<StreamFrame>, ResponseObject) {
        let text = std::mem::take(&mut self.text);
        let logprobs = std::mem::take(&mut self.logprobs);
        let response = self.identity.completed(text, logprobs, completed);
        let mut frames = Vec::new();
        for (output_index, item) in response.output.iter().enumerate() {
            match item {
                OutputItem::Message { id, content, .. } => {
                    self.open_message(&mut frames);
                    let part = &content[0];
                    frames.push(self.frame(
                        "response.output_text.done",
                        json!({
                            "item_id": id, "output_index": output_index, "content_index": 0,
                            "text": part.text, "logprobs": part.logprobs,
                        }),
                    ));
                    frames.push(self.frame(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
                    ));
                }
                OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    ..
                } => {
                    let added = json!({
                        "id": id, "type": "function_call", "status": "in_progress",
                        "call_id": call_id, "name": name, "arguments": "",
                    });
                    frames.push(self.frame(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": added}),
                    ));
                    frames.push(self.frame(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": output_index, "delta": arguments}),
                    ));
                    frames.push(self.frame(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": output_index, "name": name, "arguments": arguments}),
                    ));
                }
            }
            frames.push(self.frame(
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            ));
        }
        let last = if response.status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        frames.push(self.frame(last, json!({"response": response})));
        (frames, response)
    }

    /// A stream that failed after it began: the error event OpenAI's clients read, then
    /// the response as failed. `error` is the error's OpenAI body.
    pub fn failure(&mut self, error: &Value) -> Vec<StreamFrame> {
        let detail = &error["error"];
        let failed = json!(self.identity.failed(detail));
        vec![
            self.frame(
                "error",
                json!({"code": detail["code"], "message": detail["message"], "param": detail["param"]}),
            ),
            self.frame("response.failed", json!({"response": failed})),
        ]
    }
}
