//! Validation: an OpenAI request becomes a `ChatRequest` or a 400 naming the field.

use super::types::{
    ChatCompletionRequest, FunctionChoice, MessageContent, NamedToolChoice, RequestMessage,
    RequestToolCall, StopSequences, ToolChoiceValue, ToolDefinition,
};
use crate::api::error::ApiError;
use crate::api::extract::parse_json;
use crate::chat::{
    ChatRequest, MaxTokensField, Message, ResponseFormat, Role, Sampling, ToolCall, ToolChoice,
    ToolSpec,
};
use crate::error::GatewayError;
use crate::gateway::{RequestMetadata, AUTO_MODEL};
use crate::governor::UnknownPriority;

/// Far beyond any model's context: a larger figure is a client bug, not a wish.
const MAX_TOKENS_LIMIT: i64 = 1 << 20;
const MAX_STOP_SEQUENCES: usize = 4;
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_TOOL_NAME_LEN: usize = 64;
/// Answers one request may ask for (`n`): each is a generation of its own, in the
/// engine's batch or a call to a provider.
pub const MAX_CHOICES: u32 = 16;

/// OpenAI's own limits on `metadata`.
const MAX_METADATA_ENTRIES: usize = 16;
const MAX_METADATA_KEY_LEN: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 512;

/// How much one request may ask of warden (`server.max_tools`,
/// `server.max_tool_schema_bytes`), checked before the work they bound.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tools: usize,
    pub max_tool_schema_bytes: usize,
}

/// A run id longer than this is not an id (OpenAI's own metadata values stop at 512).
pub const MAX_RUN_ID_BYTES: usize = 256;

/// A validated request and how the client wants it delivered.
#[derive(Debug)]
pub struct ParsedRequest {
    pub chat: ChatRequest,
    pub stream: bool,
    pub include_usage: bool,
    pub metadata: RequestMetadata,
    /// The request offered `functions`, the API before tools: its call goes back as
    /// `function_call`.
    pub legacy_functions: bool,
}

type Invalid = GatewayError;

/// A request body as received: parsed (the offending field named when it does not fit)
/// and validated.
pub fn parse_body(body: &[u8], limits: &Limits, agent: &str) -> Result<ParsedRequest, ApiError> {
    let wire: ChatCompletionRequest = parse_json(body)?;
    Ok(parse(wire, limits, agent)?)
}

/// Validates `wire`, sent by agent `agent` (whose declared schemas it compiles and
/// caches).
pub fn parse(
    wire: ChatCompletionRequest,
    limits: &Limits,
    agent: &str,
) -> Result<ParsedRequest, Invalid> {
    let model = match wire.model.as_deref() {
        Some(model) if model.trim().is_empty() => {
            return Err(GatewayError::invalid("model", "`model` must not be empty"))
        }
        Some(model) => model.to_string(),
        None => AUTO_MODEL.to_string(),
    };
    let choices = match wire.n {
        None => 1,
        Some(n) if (1..=MAX_CHOICES).contains(&n) => n,
        Some(n) => {
            return Err(GatewayError::invalid(
                "n",
                format!("`n` is {n}; it must be between 1 and {MAX_CHOICES}"),
            ))
        }
    };
    if wire
        .logit_bias
        .as_ref()
        .is_some_and(|bias| !bias.is_empty())
    {
        return Err(GatewayError::invalid(
            "logit_bias",
            "`logit_bias` is not supported",
        ));
    }
    if wire.stream_options.is_some() && !wire.stream {
        return Err(GatewayError::invalid(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    let metadata = metadata(wire.metadata.as_ref())?;
    let sampling = sampling(&wire)?;
    let logprobs = logprobs(wire.logprobs, wire.top_logprobs)?;
    let response_format = response_format(wire.response_format, limits, agent)?;
    let legacy_functions = wire.functions.is_some();
    let (definitions, offered, choice) = offered_tools(
        wire.tools,
        wire.tool_choice,
        wire.functions,
        wire.function_call,
    )?;
    let tools = tools(definitions, offered, limits, agent)?;
    let tool_choice = tool_choice(choice, &tools)?;
    let mut wire_messages = wire.messages;
    if wire_messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    legacy_messages(&mut wire_messages);
    let messages = wire_messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| self::message(index, message))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedRequest {
        chat: ChatRequest {
            model,
            messages,
            tools,
            tool_choice,
            parallel_tool_calls: wire.parallel_tool_calls,
            sampling,
            logprobs,
            response_format,
            raw_prompt: false,
            choices,
        },
        stream: wire.stream,
        include_usage: wire.stream_options.is_some_and(|o| o.include_usage),
        metadata,
        legacy_functions,
    })
}

/// A JSON schema as sent, where `param` says: within `server.max_tool_schema_bytes`,
/// parsed only then, an object, and compiled (so a bad one is refused here, naming
/// `param`, not found out later).
fn read_schema(
    raw: &serde_json::value::RawValue,
    param: &str,
    limits: &Limits,
    agent: &str,
) -> Result<serde_json::Value, Invalid> {
    let size = raw.get().len();
    if size > limits.max_tool_schema_bytes {
        return Err(GatewayError::invalid(
            param,
            format!(
                "the schema is {size} bytes; at most {}",
                limits.max_tool_schema_bytes
            ),
        ));
    }
    let schema: serde_json::Value = serde_json::from_str(raw.get()).map_err(|error| {
        GatewayError::invalid(param, format!("the schema is not usable JSON: {error}"))
    })?;
    if !schema.is_object() {
        return Err(GatewayError::invalid(
            param,
            "the schema must be a JSON object",
        ));
    }
    if let Err(error) = crate::schema::admit(agent, &schema) {
        return Err(GatewayError::invalid(
            param,
            format!("not a valid JSON schema: {error}"),
        ));
    }
    Ok(schema)
}

/// `response_format`: text, a JSON object, or JSON matching a schema (read as a
/// tool's parameters are).
fn response_format(
    format: Option<super::types::ResponseFormat>,
    limits: &Limits,
    agent: &str,
) -> Result<ResponseFormat, Invalid> {
    let Some(format) = format else {
        return Ok(ResponseFormat::Text);
    };
    match format.kind.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let spec = format.json_schema.ok_or_else(|| {
                GatewayError::invalid(
                    "response_format.json_schema",
                    "`json_schema` needs its `json_schema` object",
                )
            })?;
            let name = spec.name.filter(|name| !name.is_empty()).ok_or_else(|| {
                GatewayError::invalid(
                    "response_format.json_schema.name",
                    "a json_schema needs a `name`",
                )
            })?;
            let schema = match spec.schema {
                None => serde_json::json!({}),
                Some(raw) => {
                    read_schema(&raw, "response_format.json_schema.schema", limits, agent)?
                }
            };
            Ok(ResponseFormat::JsonSchema {
                name,
                schema,
                strict: spec.strict.unwrap_or(false),
            })
        }
        other => Err(GatewayError::invalid(
            "response_format.type",
            format!("`{other}` is not a response_format; use text, json_object or json_schema"),
        )),
    }
}

/// Which field the tools came in: `tools`, or `functions` (the API before tools).
#[derive(Debug, Clone, Copy)]
enum Offered {
    Tools,
    Functions,
}

impl Offered {
    fn field(self) -> &'static str {
        match self {
            Offered::Tools => "tools",
            Offered::Functions => "functions",
        }
    }

    /// The request parameter at fault: `field` of the tool at `index`, as the client
    /// wrote it (a function is not wrapped in `function` there).
    fn param(self, index: usize, field: &str) -> String {
        let field = match self {
            Offered::Tools => field,
            Offered::Functions => field.strip_prefix("function.").unwrap_or(field),
        };
        format!("{}[{index}].{field}", self.field())
    }
}

/// The tools offered and the choice among them, from `tools` and `tool_choice` or from
/// their older forms `functions` and `function_call` (one pair or the other).
fn offered_tools(
    tools: Option<Vec<ToolDefinition>>,
    tool_choice: Option<ToolChoiceValue>,
    functions: Option<Vec<super::types::FunctionDefinition>>,
    function_call: Option<FunctionChoice>,
) -> Result<(Vec<ToolDefinition>, Offered, Option<ToolChoiceValue>), Invalid> {
    if functions.is_none() && function_call.is_none() {
        return Ok((tools.unwrap_or_default(), Offered::Tools, tool_choice));
    }
    if tools.is_some() || tool_choice.is_some() {
        let param = if functions.is_some() {
            "functions"
        } else {
            "function_call"
        };
        return Err(GatewayError::invalid(
            param,
            "`functions` and `function_call` cannot be mixed with `tools` and `tool_choice`",
        ));
    }
    let definitions = functions
        .unwrap_or_default()
        .into_iter()
        .map(|function| ToolDefinition {
            kind: "function".into(),
            function: Some(function),
        })
        .collect();
    let choice = function_call.map(|choice| match choice {
        FunctionChoice::Mode(mode) => ToolChoiceValue::Mode(mode),
        FunctionChoice::Named(function) => ToolChoiceValue::Named(NamedToolChoice {
            kind: "function".into(),
            function,
        }),
    });
    Ok((definitions, Offered::Functions, choice))
}

/// Messages in the API before tools, rewritten in the tools' form: an assistant's
/// `function_call` becomes its tool call, and a `function` message the result of the
/// call before it, tied to it by an id made up here (that API had none).
fn legacy_messages(messages: &mut [RequestMessage]) {
    let mut last_call = None;
    for (index, message) in messages.iter_mut().enumerate() {
        if let Some(function) = message.function_call.take() {
            let id = format!("call_legacy_{index}");
            message
                .tool_calls
                .get_or_insert_with(Vec::new)
                .push(RequestToolCall {
                    id: id.clone(),
                    kind: Some("function".into()),
                    function,
                });
            last_call = Some(id);
        }
        if message.role == "function" {
            message.role = "tool".into();
            if message.tool_call_id.is_none() {
                message.tool_call_id = last_call.clone();
            }
        }
    }
}

/// `priority` and `run_id` are warden's; every other entry is a label.
fn metadata(
    entries: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<RequestMetadata, Invalid> {
    let mut metadata = RequestMetadata::default();
    let Some(entries) = entries else {
        return Ok(metadata);
    };
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(GatewayError::invalid(
            "metadata",
            format!("at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    for (key, value) in entries {
        let param = format!("metadata.{key}");
        let serde_json::Value::String(value) = value else {
            return Err(GatewayError::invalid(
                param,
                "metadata values must be strings",
            ));
        };
        if key.len() > MAX_METADATA_KEY_LEN || value.len() > MAX_METADATA_VALUE_LEN {
            return Err(GatewayError::invalid(
                param,
                format!("metadata keys are at most {MAX_METADATA_KEY_LEN} characters, values {MAX_METADATA_VALUE_LEN}"),
            ));
        }
        match key.as_str() {
            "priority" => {
                let priority = value.parse().map_err(|error: UnknownPriority| {
                    GatewayError::invalid(param, error.to_string())
                })?;
                metadata.priority = Some(priority);
            }
            "run_id" => metadata.run_id = Some(run_id(&param, value)?),
            _ => {
                metadata.labels.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(metadata)
}

/// A run id as a header or `metadata` gives it: visible text within
/// `MAX_RUN_ID_BYTES`.
pub fn run_id(param: &str, value: &str) -> Result<String, Invalid> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_RUN_ID_BYTES || value.chars().any(char::is_control) {
        return Err(GatewayError::invalid(
            param,
            format!("a run id is 1 to {MAX_RUN_ID_BYTES} bytes of visible text"),
        ));
    }
    Ok(value.to_string())
}

fn in_range(
    param: &str,
    value: Option<f32>,
    min: f32,
    max: f32,
    default: f32,
) -> Result<f32, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(GatewayError::invalid(
            param,
            format!("`{param}` is {v}; it must be between {min} and {max}"),
        )),
    }
}

/// `value`, when the client sent one, within `min..=max`.
fn optional_in_range(
    param: &str,
    value: Option<f32>,
    min: f32,
    max: f32,
) -> Result<Option<f32>, Invalid> {
    value
        .map(|value| in_range(param, Some(value), min, max, value))
        .transpose()
}

fn sampling(wire: &ChatCompletionRequest) -> Result<Sampling, Invalid> {
    let top_p = optional_in_range("top_p", wire.top_p, 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(GatewayError::invalid("top_p", "`top_p` must be above 0"));
    }
    let (field, max_tokens) = match (wire.max_completion_tokens, wire.max_tokens) {
        (Some(n), _) => (MaxTokensField::MaxCompletionTokens, Some(n)),
        (None, n) => (MaxTokensField::MaxTokens, n),
    };
    let param = field.as_str();
    let max_tokens = match max_tokens {
        None => None,
        Some(n) if (1..=MAX_TOKENS_LIMIT).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(GatewayError::invalid(
                param,
                format!("`{param}` is {n}; it must be between 1 and {MAX_TOKENS_LIMIT}"),
            ))
        }
    };
    let stop = match &wire.stop {
        None => Vec::new(),
        Some(StopSequences::One(stop)) => vec![stop.clone()],
        Some(StopSequences::Many(stops)) => stops.clone(),
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(GatewayError::invalid(
            "stop",
            format!("at most {MAX_STOP_SEQUENCES} stop sequences"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(GatewayError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(Sampling {
        temperature: optional_in_range("temperature", wire.temperature, 0.0, 2.0)?,
        top_p,
        // OpenAI takes any integer; its bits make a fine seed.
        seed: wire.seed.map(|seed| seed as u64),
        max_tokens,
        max_tokens_field: field,
        stop,
        presence_penalty: in_range("presence_penalty", wire.presence_penalty, -2.0, 2.0, 0.0)?,
        frequency_penalty: in_range("frequency_penalty", wire.frequency_penalty, -2.0, 2.0, 0.0)?,
    })
}

fn logprobs(logprobs: Option<bool>, top_logprobs: Option<u32>) -> Result<Option<u8>, Invalid> {
    match (logprobs.unwrap_or(false), top_logprobs) {
        (false, Some(_)) => Err(GatewayError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        )),
        (false, None) => Ok(None),
        (true, Some(k)) if k > MAX_TOP_LOGPROBS => Err(GatewayError::invalid(
            "top_logprobs",
            format!("`top_logprobs` is {k}; at most {MAX_TOP_LOGPROBS}"),
        )),
        (true, k) => Ok(Some(k.unwrap_or(0) as u8)),
    }
}

fn tools(
    definitions: Vec<ToolDefinition>,
    offered: Offered,
    limits: &Limits,
    agent: &str,
) -> Result<Vec<ToolSpec>, Invalid> {
    if definitions.len() > limits.max_tools {
        return Err(GatewayError::invalid(
            offered.field(),
            format!(
                "{} tools offered; at most {} per request",
                definitions.len(),
                limits.max_tools
            ),
        ));
    }
    let mut names = std::collections::HashSet::with_capacity(definitions.len());
    let mut tools: Vec<ToolSpec> = Vec::with_capacity(definitions.len());
    for (index, definition) in definitions.into_iter().enumerate() {
        let param = |field: &str| offered.param(index, field);
        if definition.kind != "function" {
            return Err(GatewayError::invalid(
                param("type"),
                format!(
                    "tool type `{}` is not supported; only `function`",
                    definition.kind
                ),
            ));
        }
        let function = definition.function.ok_or_else(|| {
            GatewayError::invalid(param("function"), "a function tool needs `function`")
        })?;
        let name = function.name.ok_or_else(|| {
            GatewayError::invalid(param("function.name"), "a function needs a `name`")
        })?;
        let valid_name = !name.is_empty()
            && name.len() <= MAX_TOOL_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(GatewayError::invalid(
                param("function.name"),
                format!("`{name}` is not a valid function name (1-{MAX_TOOL_NAME_LEN} of a-z, A-Z, 0-9, _ and -)"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(GatewayError::invalid(
                param("function.name"),
                format!("function `{name}` is declared twice"),
            ));
        }
        let parameters = match function.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(raw) => read_schema(&raw, &param("function.parameters"), limits, agent)?,
        };
        if parameters.get("type").is_some_and(|t| t != "object") {
            return Err(GatewayError::invalid(
                param("function.parameters"),
                "function parameters must be an object schema (`\"type\": \"object\"`)",
            ));
        }
        tools.push(ToolSpec {
            name,
            description: function.description,
            parameters,
        });
    }
    Ok(tools)
}

fn tool_choice(choice: Option<ToolChoiceValue>, tools: &[ToolSpec]) -> Result<ToolChoice, Invalid> {
    let choice = match choice {
        None => return Ok(ToolChoice::Auto),
        Some(ToolChoiceValue::Mode(mode)) => match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(GatewayError::invalid(
                    "tool_choice",
                    format!(
                        "`{other}` is not a tool_choice; use none, auto, required or a function"
                    ),
                ))
            }
        },
        Some(ToolChoiceValue::Named(named)) => {
            if named.kind != "function" {
                return Err(GatewayError::invalid(
                    "tool_choice.type",
                    "only `function` can be chosen",
                ));
            }
            if !tools.iter().any(|tool| tool.name == named.function.name) {
                return Err(GatewayError::invalid(
                    "tool_choice.function.name",
                    format!("`{}` is not among the offered tools", named.function.name),
                ));
            }
            ToolChoice::Function(named.function.name)
        }
    };
    if matches!(choice, ToolChoice::Required) && tools.is_empty() {
        return Err(GatewayError::invalid(
            "tool_choice",
            "`required` needs `tools`",
        ));
    }
    Ok(choice)
}

fn message(index: usize, message: RequestMessage) -> Result<Message, Invalid> {
    let param = |field: &str| format!("messages[{index}].{field}");
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(GatewayError::invalid(
                param("role"),
                format!(
                    "unknown role `{other}`; expected system, developer, user, assistant or tool"
                ),
            ))
        }
    };
    let content = match message.content {
        None => None,
        Some(content) => Some(text_of(content, &param("content"))?),
    };
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(at, call)| {
            // Providers that take arguments as objects (Anthropic) need them parsed.
            if !serde_json::from_str::<serde_json::Value>(&call.function.arguments)
                .is_ok_and(|v| v.is_object())
            {
                return Err(GatewayError::invalid(
                    param(&format!("tool_calls[{at}].function.arguments")),
                    "tool call arguments must be a JSON object, written as a string",
                ));
            }
            Ok(ToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !tool_calls.is_empty() && role != Role::Assistant {
        return Err(GatewayError::invalid(
            param("tool_calls"),
            "only assistant messages carry `tool_calls`",
        ));
    }
    let tool_call_id = match role {
        Role::Tool => Some(
            message
                .tool_call_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    GatewayError::invalid(
                        param("tool_call_id"),
                        "a tool message needs the `tool_call_id` it answers",
                    )
                })?,
        ),
        _ => None,
    };
    let content = match (role, content) {
        (Role::Assistant, None) if !tool_calls.is_empty() => String::new(),
        (_, Some(content)) => content,
        (_, None) => {
            return Err(GatewayError::invalid(
                param("content"),
                format!("a {} message needs `content`", role.as_str()),
            ))
        }
    };
    Ok(Message {
        role,
        content,
        tool_calls,
        tool_call_id,
    })
}

fn text_of(content: MessageContent, param: &str) -> Result<String, Invalid> {
    match content {
        MessageContent::Text(text) => Ok(text),
        MessageContent::Parts(parts) => parts
            .into_iter()
            .map(|part| match (part.kind.as_str(), part.text) {
                ("text", Some(text)) => Ok(text),
                ("text", None) => Err(GatewayError::invalid(param, "a text part needs `text`")),
                (other, _) => Err(GatewayError::invalid(
                    param,
                    format!("content part type `{other}` is not supported; only `text`"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_tools: 4,
        max_tool_schema_bytes: 1024,
    };

    fn parse_json(value: serde_json::Value) -> Result<ParsedRequest, GatewayError> {
        parse(serde_json::from_value(value).unwrap(), &LIMITS, "agent-a")
    }

    fn param_of(value: serde_json::Value) -> String {
        match parse_json(value) {
            Err(GatewayError::InvalidRequest {
                param: Some(param), ..
            }) => param,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    fn hi() -> serde_json::Value {
        serde_json::json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let parsed = parse_json(serde_json::json!({"messages": hi()})).unwrap();
        assert_eq!(parsed.chat.model, AUTO_MODEL);
        assert_eq!(parsed.chat.sampling, Sampling::default());
        assert_eq!(parsed.chat.choices, 1);
        assert!(!parsed.stream);
        let several = parse_json(serde_json::json!({"messages": hi(), "n": 3})).unwrap();
        assert_eq!(several.chat.choices, 3);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (serde_json::json!({"messages": []}), "messages"),
            (
                serde_json::json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (serde_json::json!({"messages": hi(), "n": 0}), "n"),
            (serde_json::json!({"messages": hi(), "n": 17}), "n"),
            (
                serde_json::json!({"messages": hi(), "max_tokens": -1}),
                "max_tokens",
            ),
            (
                serde_json::json!({"messages": hi(), "max_completion_tokens": 0}),
                "max_completion_tokens",
            ),
            (
                serde_json::json!({"messages": hi(), "max_tokens": 100_000_000_000i64}),
                "max_tokens",
            ),
            (
                serde_json::json!({"messages": hi(), "temperature": 2.5}),
                "temperature",
            ),
            (serde_json::json!({"messages": hi(), "top_p": 0}), "top_p"),
            (
                serde_json::json!({"messages": hi(), "top_logprobs": 3}),
                "top_logprobs",
            ),
            (
                serde_json::json!({"messages": hi(), "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"parameters": {}}}]}),
                "tools[0].function.name",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
                "tools[0].function.parameters",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}),
                "tools[0].function.parameters",
            ),
            (
                serde_json::json!({"messages": hi(), "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                serde_json::json!({"messages": [{"role": "tool", "content": "18C"}]}),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                serde_json::json!({"messages": hi(), "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (
                serde_json::json!({"messages": hi(), "response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (
                serde_json::json!({"messages": hi(), "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                "response_format.json_schema.name",
            ),
            (
                serde_json::json!({"messages": hi(), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}}),
                "response_format.json_schema.schema",
            ),
            (
                serde_json::json!({"messages": hi(), "metadata": {"priority": "urgent"}}),
                "metadata.priority",
            ),
            (
                serde_json::json!({"messages": hi(), "metadata": {"run_id": "r".repeat(300)}}),
                "metadata.run_id",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": (0..5).map(|i| serde_json::json!({"type": "function", "function": {"name": format!("f{i}")}})).collect::<Vec<_>>()}),
                "tools",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "description": "x".repeat(2000)}}}]}),
                "tools[0].function.parameters",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
                "tools[1].function.name",
            ),
        ];
        for (request, param) in cases {
            assert_eq!(param_of(request.clone()), param, "{request}");
        }
    }

    #[test]
    fn tools_and_choice_convert() {
        let parsed = parse_json(serde_json::json!({
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "logprobs": true, "top_logprobs": 2, "stop": "END", "seed": -1,
            "metadata": {"priority": "P1", "run_id": "run-7", "env": "prod"}
        }))
        .unwrap();
        assert_eq!(
            parsed.metadata.priority,
            Some(crate::governor::Priority::P1)
        );
        assert_eq!(parsed.metadata.run_id.as_deref(), Some("run-7"));
        assert_eq!(
            parsed.metadata.labels.get("env").map(String::as_str),
            Some("prod")
        );
        let chat = parsed.chat;
        assert_eq!(chat.messages[0].role, Role::System);
        assert_eq!(chat.messages[0].content, "Be brief");
        assert_eq!(chat.messages[1].tool_calls[0].name, "f");
        assert_eq!(chat.tools[0].parameters["type"], "object");
        assert_eq!(chat.tool_choice, ToolChoice::Function("f".into()));
        assert_eq!(chat.logprobs, Some(2));
        assert_eq!(chat.sampling.stop, vec!["END".to_string()]);
        assert_eq!(chat.sampling.seed, Some(u64::MAX));
    }

    #[test]
    fn legacy_functions_convert_to_tools_and_name_their_own_fields() {
        let parsed = parse_json(serde_json::json!({
            "messages": [
                {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "ok"}
            ],
            "functions": [{"name": "f"}],
            "function_call": "auto"
        }))
        .unwrap();
        assert!(parsed.legacy_functions);
        let chat = parsed.chat;
        assert_eq!(chat.tools[0].name, "f");
        assert_eq!(chat.tool_choice, ToolChoice::Auto);
        let call = &chat.messages[0].tool_calls[0];
        assert_eq!(chat.messages[1].role, Role::Tool);
        assert_eq!(chat.messages[1].tool_call_id.as_ref(), Some(&call.id));

        let hi = || serde_json::json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (
                serde_json::json!({"messages": hi(), "functions": [{"name": "bad name"}]}),
                "functions[0].name",
            ),
            (
                serde_json::json!({"messages": hi(), "functions": [{"name": "f"}], "tool_choice": "auto"}),
                "functions",
            ),
            (
                serde_json::json!({"messages": hi(), "tools": [{"type": "function", "function": {"name": "f"}}], "function_call": "auto"}),
                "function_call",
            ),
            (
                serde_json::json!({"messages": [{"role": "function", "name": "f", "content": "ok"}], "functions": [{"name": "f"}]}),
                "messages[0].tool_call_id",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body), param);
        }
    }
}
