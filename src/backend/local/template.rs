//! Renders a conversation into the prompt text a local model was trained on, including
//! how offered tools are described to it and how it should answer with a call.

use crate::chat::{ChatRequest, Message, ResponseFormat, Role, ToolSpec};

/// Marks the start and end of a tool call in the model's output.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Marks a function's result, given back to the model.
const TOOL_RESPONSE_OPEN: &str = "<tool_response>";
const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// `<|im_start|>role\n…<|im_end|>`: SmolLM2, Qwen, Hermes and many others.
    Chatml,
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub kind: TemplateKind,
    /// Used when the conversation has no system message of its own.
    pub default_system_prompt: Option<String>,
}

impl ChatTemplate {
    /// The prompt text, up to where the model's answer begins.
    pub fn render(&self, request: &ChatRequest) -> String {
        if request.raw_prompt {
            return request
                .messages
                .iter()
                .map(|message| message.content.as_str())
                .collect();
        }
        match self.kind {
            TemplateKind::Chatml => self.render_chatml(request),
        }
    }

    /// The token that ends the model's turn.
    pub fn end_of_turn(&self) -> &'static str {
        match self.kind {
            TemplateKind::Chatml => "<|im_end|>",
        }
    }

    fn render_chatml(&self, request: &ChatRequest) -> String {
        let tools = request.callable_tools();
        let mut text = String::new();
        let (system, rest) = match request.messages.split_first() {
            Some((first, rest)) if first.role == Role::System => {
                (Some(first.content.as_str()), rest)
            }
            _ => (
                self.default_system_prompt.as_deref(),
                request.messages.as_slice(),
            ),
        };
        let mut system = with_tool_instructions(system, tools);
        append_paragraph(&mut system, &format_instructions(&request.response_format));
        if !system.is_empty() {
            push_turn(&mut text, Role::System, &system);
        }
        for message in rest {
            // A tool's result comes back as the user's turn, wrapped so the model can
            // tell it from a question: small chat models have no tool role, and shown
            // one they call the same function again rather than read its result.
            let role = match message.role {
                Role::Tool => Role::User,
                role => role,
            };
            push_turn(&mut text, role, &message_body(message));
        }
        text.push_str("<|im_start|>assistant\n");
        text
    }
}

fn push_turn(text: &mut String, role: Role, body: &str) {
    text.push_str("<|im_start|>");
    text.push_str(role.as_str());
    text.push('\n');
    text.push_str(body);
    text.push_str("<|im_end|>\n");
}

/// An assistant turn that called tools is shown to the model the way it would have
/// written the calls itself, so a multi-turn conversation stays in one format.
fn message_body(message: &Message) -> String {
    if message.role == Role::Tool {
        return format!(
            "{TOOL_RESPONSE_OPEN}\n{}\n{TOOL_RESPONSE_CLOSE}",
            message.content
        );
    }
    let mut body = message.content.clone();
    for call in &message.tool_calls {
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(&format!(
            "{TOOL_CALL_OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{TOOL_CALL_CLOSE}",
            serde_json::Value::String(call.name.clone()),
            call.arguments
        ));
    }
    body
}

/// Adds `paragraph` to `text`, a blank line apart.
fn append_paragraph(text: &mut String, paragraph: &str) {
    if paragraph.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(paragraph);
}

/// The grammar holds the answer to the schema whatever the model meant to say; told
/// the schema, the model fills it with what its keys ask for.
fn format_instructions(format: &ResponseFormat) -> String {
    match format {
        ResponseFormat::Text => String::new(),
        ResponseFormat::JsonObject => "Reply with only a JSON object.".into(),
        ResponseFormat::JsonSchema { schema, .. } => {
            format!("Reply with only a JSON object that follows this JSON schema:\n{schema}")
        }
    }
}

fn with_tool_instructions(system: Option<&str>, tools: &[ToolSpec]) -> String {
    let mut text = system.unwrap_or_default().to_string();
    let Some(example) = tools.first() else {
        return text;
    };
    append_paragraph(&mut text, "You can call these functions:\n<tools>\n");
    for tool in tools {
        let description = serde_json::json!({
            "name": tool.name,
            "description": tool.description.clone().unwrap_or_default(),
            "parameters": tool.parameters,
        });
        text.push_str(&description.to_string());
        text.push('\n');
    }
    // A concrete call in the model's own format works far better with small models
    // than an abstract description of one.
    text.push_str(&format!(
        "</tools>\nTo call a function, reply with only the call, for example:\n{TOOL_CALL_OPEN}\n\
         {{\"name\": {}, \"arguments\": {}}}\n{TOOL_CALL_CLOSE}\n\
         A function's result comes back in {TOOL_RESPONSE_OPEN}; answer the user from it.",
        serde_json::Value::String(example.name.clone()),
        example_arguments(example)
    ));
    text
}

/// `{"city": "<string>"}`-style placeholder arguments from a tool's schema.
fn example_arguments(tool: &ToolSpec) -> serde_json::Value {
    let placeholders = tool
        .parameters
        .get("properties")
        .and_then(serde_json::Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, schema)| {
                    let kind = schema
                        .get("type")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("value");
                    (name.clone(), serde_json::Value::String(format!("<{kind}>")))
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::Value::Object(placeholders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Sampling, ToolChoice};

    fn request(
        messages: Vec<Message>,
        tools: Vec<ToolSpec>,
        tool_choice: ToolChoice,
    ) -> ChatRequest {
        ChatRequest {
            model: "auto".into(),
            messages,
            tools,
            tool_choice,
            sampling: Sampling::default(),
            logprobs: None,
            response_format: Default::default(),
            raw_prompt: false,
            choices: 1,
            parallel_tool_calls: None,
        }
    }

    fn template() -> ChatTemplate {
        ChatTemplate {
            kind: TemplateKind::Chatml,
            default_system_prompt: Some("You are a helpful assistant.".into()),
        }
    }

    fn weather_tool() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn default_system_prompt_fills_in_when_absent() {
        let rendered = template().render(&request(
            vec![Message::text(Role::User, "Hi")],
            vec![],
            ToolChoice::Auto,
        ));
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_raw_prompt_is_the_model_input_as_written() {
        let mut raw = request(
            vec![Message::text(Role::User, "The capital of France is")],
            vec![weather_tool()],
            ToolChoice::Auto,
        );
        raw.raw_prompt = true;
        assert_eq!(template().render(&raw), "The capital of France is");
    }

    #[test]
    fn own_system_prompt_replaces_default() {
        let rendered = template().render(&request(
            vec![
                Message::text(Role::System, "Be terse."),
                Message::text(Role::User, "Hi"),
            ],
            vec![],
            ToolChoice::Auto,
        ));
        assert!(rendered.starts_with("<|im_start|>system\nBe terse.<|im_end|>\n"));
        assert!(!rendered.contains("helpful"));
    }

    #[test]
    fn tools_are_described_and_prior_calls_replayed() {
        let mut assistant = Message::text(Role::Assistant, "");
        assistant.tool_calls.push(crate::chat::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        let mut tool = Message::text(Role::Tool, "18C");
        tool.tool_call_id = Some("call_1".into());
        let rendered = template().render(&request(
            vec![Message::text(Role::User, "Weather?"), assistant, tool],
            vec![weather_tool()],
            ToolChoice::Auto,
        ));
        assert!(rendered
            .contains("<tools>\n{\"name\":\"get_weather\",\"description\":\"Current weather\""));
        assert!(rendered
            .contains("{\"name\": \"get_weather\", \"arguments\": {\"city\":\"<string>\"}}"));
        assert!(rendered.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>"
        ));
        assert!(
            rendered.contains("<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>")
        );
    }

    #[test]
    fn a_json_schema_answer_is_described_after_the_system_prompt() {
        let mut asked = request(
            vec![
                Message::text(Role::System, "Be terse."),
                Message::text(Role::User, "Where?"),
            ],
            vec![],
            ToolChoice::Auto,
        );
        asked.response_format = ResponseFormat::JsonSchema {
            name: "place".into(),
            schema: serde_json::json!({"type": "object"}),
            strict: true,
        };
        assert!(template().render(&asked).starts_with(
            "<|im_start|>system\nBe terse.\n\nReply with only a JSON object that follows this JSON schema:\n{\"type\":\"object\"}<|im_end|>\n"
        ));
    }

    #[test]
    fn tool_choice_none_hides_tools() {
        let rendered = template().render(&request(
            vec![Message::text(Role::User, "Hi")],
            vec![weather_tool()],
            ToolChoice::None,
        ));
        assert!(!rendered.contains("<tools>"));
    }
}
