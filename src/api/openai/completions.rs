//! OpenAI's legacy text-completions format (`/v1/completions`): a raw prompt the local
//! model continues as written. A body is rewritten as the chat request it means (one
//! user message, marked raw) and validated by the same rules, so limits, sampling and
//! refusals cannot drift apart; what only this API has is checked here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::request::{self, Limits, ParsedRequest};
use super::types::{
    ChatCompletionRequest, MessageContent, RequestMessage, StopSequences, StreamOptions, UsageBody,
};
use crate::api::error::ApiError;
use crate::api::extract::parse_json;
use crate::chat::TokenLogprob;
use crate::error::GatewayError;
use crate::gateway::{Recorded, Response};

/// OpenAI's own bound on `logprobs` in this API.
const MAX_LOGPROBS: u32 = 5;
/// OpenAI's default length of a text completion: short, since the caller is expected
/// to say how much continuation it wants.
const DEFAULT_MAX_TOKENS: u32 = 16;

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub suffix: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub stop: Option<StopSequences>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    /// Not in OpenAI's API for this endpoint; accepted as on chat, so an agent's
    /// `priority` and `run_id` reach the governor the same way.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// What the endpoint keeps from the body to write its answer.
#[derive(Debug, Clone)]
pub struct CompletionParts {
    /// The prompt, when the client asked for it to lead the text (`echo`).
    pub echo: Option<String>,
    /// The answer carries token log-probabilities.
    pub logprobs: bool,
}

pub fn parse_body(
    body: &[u8],
    limits: &Limits,
    agent: &str,
) -> Result<(ParsedRequest, CompletionParts), ApiError> {
    let wire: CompletionRequest = parse_json(body)?;
    Ok(parse(wire, limits, agent)?)
}

pub fn parse(
    wire: CompletionRequest,
    limits: &Limits,
    agent: &str,
) -> Result<(ParsedRequest, CompletionParts), GatewayError> {
    let prompt = prompt(wire.prompt)?;
    let echo = wire.echo.unwrap_or(false).then(|| prompt.clone());
    if wire
        .suffix
        .as_deref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(GatewayError::invalid(
            "suffix",
            "`suffix` (insertion) is not supported: the local model only continues a prompt",
        ));
    }
    if let Some(best_of) = wire.best_of.filter(|&best_of| best_of != 1) {
        return Err(GatewayError::invalid(
            "best_of",
            format!("best_of={best_of} is not supported; only 1"),
        ));
    }
    if let Some(logprobs) = wire.logprobs.filter(|&k| k > MAX_LOGPROBS) {
        return Err(GatewayError::invalid(
            "logprobs",
            format!("`logprobs` must be at most {MAX_LOGPROBS}, got {logprobs}"),
        ));
    }
    if echo.is_some() && wire.logprobs.is_some() {
        return Err(GatewayError::invalid(
            "echo",
            "`echo` with `logprobs` is not supported: the prompt's own tokens are not scored",
        ));
    }
    let chat = ChatCompletionRequest {
        model: wire.model,
        messages: vec![RequestMessage {
            role: "user".into(),
            content: Some(MessageContent::Text(prompt)),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            function_call: None,
        }],
        temperature: wire.temperature,
        top_p: wire.top_p,
        n: wire.n,
        seed: wire.seed,
        max_tokens: wire.max_tokens,
        max_completion_tokens: None,
        stop: wire.stop,
        presence_penalty: wire.presence_penalty,
        frequency_penalty: wire.frequency_penalty,
        logprobs: Some(wire.logprobs.is_some()),
        top_logprobs: wire.logprobs,
        logit_bias: wire.logit_bias,
        stream: wire.stream,
        stream_options: wire.stream_options,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        functions: None,
        function_call: None,
        response_format: None,
        user: wire.user,
        metadata: wire.metadata,
    };
    let mut parsed = request::parse(chat, limits, agent).map_err(in_completion_terms)?;
    parsed.chat.raw_prompt = true;
    let sampling = &mut parsed.chat.sampling;
    sampling.max_tokens = Some(sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    let parts = CompletionParts {
        echo,
        logprobs: wire.logprobs.is_some(),
    };
    Ok((parsed, parts))
}

/// The one prompt, as text: a string, or a list holding one string.
fn prompt(prompt: Option<Value>) -> Result<String, GatewayError> {
    let invalid = |message: &str| GatewayError::invalid("prompt", message);
    let text = match prompt {
        None => return Err(invalid("`prompt` is required")),
        Some(Value::String(text)) => text,
        Some(Value::Array(mut items)) => match (items.len(), items.pop()) {
            (1, Some(Value::String(text))) => text,
            (1, Some(_)) | (_, Some(Value::Number(_))) => {
                return Err(invalid(
                    "`prompt` as token ids is not supported; send the prompt as text",
                ))
            }
            (0, _) => return Err(invalid("`prompt` must not be an empty list")),
            _ => {
                return Err(invalid(
                    "one prompt per request: send each prompt of a list as its own request",
                ))
            }
        },
        Some(_) => return Err(invalid("`prompt` must be a string")),
    };
    if text.is_empty() {
        return Err(invalid("`prompt` must not be empty"));
    }
    Ok(text)
}

/// A refusal raised on the chat form, renamed to the field the client wrote.
pub fn in_completion_terms(error: GatewayError) -> GatewayError {
    match error {
        GatewayError::InvalidRequest {
            message,
            param: Some(param),
        } => {
            let param = if param == "messages" || param.starts_with("messages[") {
                "prompt".to_string()
            } else if param == "top_logprobs" {
                "logprobs".to_string()
            } else {
                param
            };
            GatewayError::InvalidRequest {
                message,
                param: Some(param),
            }
        }
        other => other.with_prompt_named("prompt"),
    }
}

#[derive(Debug, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    /// On the whole answer, and on a stream's extra last chunk when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
    /// The report as the audit log recorded it: on the whole answer and on a stream's
    /// closing chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warden: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize)]
pub struct TextChoice {
    pub text: String,
    pub index: u32,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// This API's log-probabilities: parallel lists, one entry per token, and each
/// token's position in the text.
#[derive(Debug, Default, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Each token's best alternatives, token to log-probability.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// Identity shared by every chunk (and the whole answer) of one completion, and where
/// the text has reached, for the token offsets.
pub struct TextCompletionWriter {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    /// Characters of each choice's generated text scored so far: its next token's
    /// offset. (An echoed prompt is never scored: `echo` with `logprobs` is refused.)
    written: Vec<usize>,
}

impl TextCompletionWriter {
    /// The writer of an answer of `choices` choices.
    pub fn new(id: String, created: u64, model: String, logprobs: bool, choices: u32) -> Self {
        Self {
            id,
            created,
            model,
            logprobs,
            written: vec![0; choices.max(1) as usize],
        }
    }

    /// The whole answer, each choice led by `echo` when the client asked for it.
    pub fn completion(&mut self, echo: Option<&str>, response: Response) -> TextCompletion {
        let finished = response.finished;
        let choices = response
            .texts
            .into_iter()
            .zip(&finished.choices)
            .zip(0u32..)
            .map(|((answer, summary), index)| {
                let mut text = echo.unwrap_or_default().to_string();
                text.push_str(&answer.content);
                let reason = super::response::finish_reason(summary.finish_reason);
                self.choice(index, text, &answer.logprobs, Some(reason))
            })
            .collect();
        TextCompletion {
            usage: Some(finished.usage.into()),
            warden: Some(finished.report_json),
            ..self.chunk(choices)
        }
    }

    /// A piece of choice `index`'s streamed text.
    pub fn text_chunk(
        &mut self,
        index: u32,
        text: String,
        logprobs: &[TokenLogprob],
    ) -> TextCompletion {
        let choice = self.choice(index, text, logprobs, None);
        self.chunk(vec![choice])
    }

    /// The closing chunks: each choice's finish reason, the last with warden's report,
    /// then usage when the client asked for it.
    pub fn final_chunks(
        &mut self,
        finished: &Recorded,
        include_usage: bool,
    ) -> Vec<TextCompletion> {
        let mut chunks: Vec<TextCompletion> = finished
            .choices
            .iter()
            .zip(0u32..)
            .map(|(summary, index)| {
                let reason = super::response::finish_reason(summary.finish_reason);
                let choice = self.choice(index, String::new(), &[], Some(reason));
                self.chunk(vec![choice])
            })
            .collect();
        if let Some(last) = chunks.last_mut() {
            last.warden = Some(finished.report_json.clone());
        }
        if include_usage {
            chunks.push(TextCompletion {
                usage: Some(finished.usage.into()),
                ..self.chunk(Vec::new())
            });
        }
        chunks
    }

    fn chunk(&self, choices: Vec<TextChoice>) -> TextCompletion {
        TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: None,
            warden: None,
        }
    }

    /// A choice carrying `text`, with the log-probabilities of its generated tokens.
    fn choice(
        &mut self,
        index: u32,
        text: String,
        logprobs: &[TokenLogprob],
        finish_reason: Option<&'static str>,
    ) -> TextChoice {
        let logprobs = self.logprobs.then(|| {
            let mut body = TextLogprobs::default();
            for token in logprobs {
                body.tokens.push(token.token.clone());
                body.token_logprobs.push(token.logprob);
                body.top_logprobs.push(
                    token
                        .top_logprobs
                        .iter()
                        .map(|top| (top.token.clone(), top.logprob))
                        .collect(),
                );
                if let Some(written) = self.written.get_mut(index as usize) {
                    body.text_offset.push(*written);
                    *written += token.token.chars().count();
                }
            }
            body
        });
        TextChoice {
            text,
            index,
            logprobs,
            finish_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_tools: 8,
            max_tool_schema_bytes: 1 << 16,
        }
    }

    fn parse_json(value: Value) -> Result<(ParsedRequest, CompletionParts), GatewayError> {
        parse(serde_json::from_value(value).unwrap(), &limits(), "a")
    }

    fn param_of(value: Value) -> String {
        match parse_json(value).unwrap_err() {
            GatewayError::InvalidRequest { param, .. } => param.unwrap(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn a_prompt_becomes_one_raw_message_with_this_apis_defaults() {
        let (parsed, parts) =
            parse_json(serde_json::json!({"model": "m", "prompt": ["Once upon"], "echo": true}))
                .unwrap();
        assert!(parsed.chat.raw_prompt);
        assert_eq!(parsed.chat.messages.len(), 1);
        assert_eq!(parsed.chat.messages[0].content, "Once upon");
        assert_eq!(parsed.chat.sampling.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(parts.echo.as_deref(), Some("Once upon"));
        assert!(!parts.logprobs);
        let (parsed, parts) =
            parse_json(serde_json::json!({"prompt": "x", "logprobs": 2, "max_tokens": 40}))
                .unwrap();
        assert_eq!(parsed.chat.logprobs, Some(2));
        assert_eq!(parsed.chat.sampling.max_tokens, Some(40));
        assert!(parts.logprobs && parts.echo.is_none());
    }

    #[test]
    fn each_bad_field_is_named_as_this_api_spells_it() {
        for (body, param) in [
            (serde_json::json!({}), "prompt"),
            (serde_json::json!({"prompt": ""}), "prompt"),
            (serde_json::json!({"prompt": 3}), "prompt"),
            (serde_json::json!({"prompt": []}), "prompt"),
            (serde_json::json!({"prompt": [1, 2]}), "prompt"),
            (serde_json::json!({"prompt": ["a", "b"]}), "prompt"),
            (serde_json::json!({"prompt": [[1, 2]]}), "prompt"),
            (serde_json::json!({"prompt": "a", "suffix": "b"}), "suffix"),
            (serde_json::json!({"prompt": "a", "best_of": 3}), "best_of"),
            (
                serde_json::json!({"prompt": "a", "logprobs": 6}),
                "logprobs",
            ),
            (
                serde_json::json!({"prompt": "a", "echo": true, "logprobs": 1}),
                "echo",
            ),
            (serde_json::json!({"prompt": "a", "n": 17}), "n"),
            (
                serde_json::json!({"prompt": "a", "temperature": 3}),
                "temperature",
            ),
            (
                serde_json::json!({"prompt": "a", "max_tokens": 0}),
                "max_tokens",
            ),
            (
                serde_json::json!({"prompt": "a", "stream_options": {}}),
                "stream_options",
            ),
        ] {
            assert_eq!(param_of(body.clone()), param, "{body}");
        }
    }
}
