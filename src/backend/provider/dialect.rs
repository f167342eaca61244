//! What differs between provider APIs: how a request is written and how the streamed
//! answer is read. Everything else (retries, breaker, timeouts) is shared.

use serde_json::Value;

use super::assemble::ToolCallDeltas;
use super::sse::SseEvent;
use crate::chat::{ChatRequest, FinishReason, MalformedToolCall, TokenLogprob, ToolCall, Usage};

/// A piece of answer text as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// Everything known once the upstream's stream has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub finish_reason: FinishReason,
    pub tool_calls: Vec<ToolCall>,
    /// Calls whose pieces could not be put back together (no name, an id that changed).
    pub malformed_tool_calls: Vec<MalformedToolCall>,
    pub usage: Usage,
}

impl Ending {
    /// The end of an answer whose calls are `calls`; `stop_reason` is the upstream's
    /// own word for why it stopped, `length` its word for running out of tokens.
    pub fn new(
        calls: ToolCallDeltas,
        stop_reason: Option<&str>,
        length: &str,
        usage: Usage,
    ) -> Self {
        let assembled = calls.finish();
        let finish_reason = match stop_reason {
            _ if !assembled.calls.is_empty() || !assembled.malformed.is_empty() => {
                FinishReason::ToolCalls
            }
            Some(reason) if reason == length => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        Self {
            finish_reason,
            tool_calls: assembled.calls,
            malformed_tool_calls: assembled.malformed,
            usage,
        }
    }
}

pub trait Dialect: Send + Sync {
    /// Path under the provider's base URL.
    fn path(&self) -> &'static str;

    /// Authentication and version headers.
    fn headers(&self, api_key: Option<&str>) -> Vec<(&'static str, String)>;

    /// The upstream request body, always asking for a stream.
    fn body(&self, request: &ChatRequest, upstream_model: &str, default_max_tokens: u32) -> Value;

    /// A reader for the events of the response to `request`.
    fn decoder(&self, request: &ChatRequest) -> Box<dyn StreamDecoder>;

    /// Whether `body` carries a request's `response_format` (or its equivalent), so the
    /// upstream's answer is JSON when asked.
    fn constrains_json(&self) -> bool {
        false
    }
}

pub trait StreamDecoder: Send {
    /// Reads one event. `Err` is an error the upstream reported in the stream.
    fn event(&mut self, event: &SseEvent) -> Result<Option<Delta>, String>;

    /// True once the upstream said the answer is complete.
    fn complete(&self) -> bool;

    /// The answer's ending; only meaningful once `complete`.
    fn ending(&mut self) -> Ending;
}

/// The message of an error body in OpenAI's or Anthropic's shape (both use
/// `error.message`), or the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}
