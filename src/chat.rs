//! The domain's view of a chat completion: a validated request, and what a backend
//! produces for it. Wire formats (OpenAI, Anthropic) convert to and from these types.

use std::borrow::Cow;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

/// Who wrote a message. `developer` on the wire is folded into `System`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// Text content; empty for an assistant turn that only carries tool calls.
    pub content: String,
    /// Tool calls an earlier assistant turn made (assistant messages only).
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers (tool messages only).
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A function the client offers the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments; always an object schema after validation.
    pub parameters: serde_json::Value,
}

/// A call the model made; `arguments` is the JSON text of an object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Something a backend proposed as a tool call that cannot be read as one (its stream
/// contradicts itself, it names no tool, the model's call block never closes). It is
/// never delivered: the tool-call gate refuses it like any other call, with `problem`
/// as the reason, so the agent is told and the audit record keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct MalformedToolCall {
    pub id: String,
    /// As much of the name as arrived; may be empty.
    pub name: String,
    /// As much of the arguments as arrived, as written.
    pub arguments: String,
    pub problem: String,
}

impl ToolCall {
    /// A fresh id in OpenAI's style, for calls whose backend gave none.
    pub fn new_id() -> String {
        format!("call_{}", &random_uuid().simple().to_string()[..24])
    }
}

/// A version-4 UUID from the thread's generator: `Uuid::new_v4` asks the kernel for
/// its bytes, a system call per request id.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are offered).
    #[default]
    Auto,
    /// Tools are offered but must not be called.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Function(String),
}

/// How tokens are drawn. Ranges are checked at the wire boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy; `None` leaves it to the backend (see [`SamplingDefaults`]).
    pub temperature: Option<f32>,
    /// `None` leaves it to the backend.
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// `None` lets the backend choose its default.
    pub max_tokens: Option<u32>,
    /// The field the client set `max_tokens` with, so an error about it names that one.
    pub max_tokens_field: MaxTokensField,
    pub stop: Vec<String>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

/// OpenAI's two names for the completion's length limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
    /// The Responses API's name for it.
    MaxOutputTokens,
}

impl MaxTokensField {
    pub fn as_str(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            MaxTokensField::MaxOutputTokens => "max_output_tokens",
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: None,
            top_p: None,
            seed: None,
            max_tokens: None,
            max_tokens_field: MaxTokensField::default(),
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// The temperature and top-p a backend draws with where the request does not say:
/// OpenAI's (1 and 1) unless the model's authors recommend others, as small models'
/// authors do (at 1, a 135M model rambles).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
        }
    }
}

impl SamplingDefaults {
    /// What `sampling` draws with: its own figures, these where it has none.
    pub fn applied_to(self, sampling: &Sampling) -> Self {
        Self {
            temperature: sampling.temperature.unwrap_or(self.temperature),
            top_p: sampling.top_p.unwrap_or(self.top_p),
        }
    }
}

/// A request that passed validation: the only shape a backend accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model the client named (`auto` lets warden choose).
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// Whether the model may call several tools in one answer; `None` when the client
    /// did not say (OpenAI's default is yes).
    pub parallel_tool_calls: Option<bool>,
    pub sampling: Sampling,
    /// `Some(k)`: return each token's log-probability and its `k` best alternatives.
    pub logprobs: Option<u8>,
    pub response_format: ResponseFormat,
    /// The one user message is the whole prompt, continued by the model as written,
    /// without the chat template (`/v1/completions`). Only the local model takes one:
    /// a provider's chat model would read it as a question.
    pub raw_prompt: bool,
    /// How many answers to draw for the one prompt (OpenAI's `n`), each a choice of its
    /// own, screened and gated on its own.
    pub choices: u32,
}

/// The shape the answer must take.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Any text.
    #[default]
    Text,
    /// A JSON object.
    JsonObject,
    /// JSON valid against `schema` (`strict`: exactly, extra keys refused).
    JsonSchema {
        name: String,
        schema: serde_json::Value,
        strict: bool,
    },
}

impl ResponseFormat {
    /// The JSON schema the answer must follow: any object for `json_object`, none for
    /// text.
    pub fn schema(&self) -> Option<serde_json::Value> {
        match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(serde_json::json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
        }
    }
}

impl ChatRequest {
    /// `messages` for `model`, with no tools and the default sampling.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            tools: Vec::new(),
            tool_choice: ToolChoice::default(),
            parallel_tool_calls: None,
            sampling: Sampling::default(),
            logprobs: None,
            response_format: ResponseFormat::default(),
            raw_prompt: false,
            choices: 1,
        }
    }

    /// Choice `index` of this request as a request of its own: one answer, drawn with
    /// the seed moved by `index`, so the choices differ and a seeded request still
    /// gives the same choices every time.
    pub fn choice(&self, index: u32) -> Self {
        let mut one = self.clone();
        one.choices = 1;
        one.sampling.seed = self
            .sampling
            .seed
            .map(|seed| seed.wrapping_add(u64::from(index)));
        one
    }

    /// Whether the answer must be JSON, which only a backend that constrains its output
    /// to it can promise.
    pub fn wants_json(&self) -> bool {
        self.response_format != ResponseFormat::Text
    }

    /// `tool_choice` demands a call of one of the offered tools.
    pub fn demands_call(&self) -> bool {
        !self.tools.is_empty()
            && matches!(
                self.tool_choice,
                ToolChoice::Required | ToolChoice::Function(_)
            )
    }

    /// The tools the model may call under the request's `tool_choice`.
    pub fn callable_tools(&self) -> &[ToolSpec] {
        match self.tool_choice {
            ToolChoice::None => &[],
            _ => &self.tools,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One generated token's log-probability, as OpenAI reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    /// Stopped by the server's generation deadline (`local.max_generation_ms`): clients
    /// read it as `length`, warden's report says `generation_deadline`.
    Deadline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Of `prompt_tokens`, those a provider served from its prompt cache (billed at its
    /// cached-input rate). Absent from records written before it existed.
    #[serde(default)]
    pub cached_prompt_tokens: u32,
}

impl Usage {
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Whether a choice index is the first: records leave it out then, as records written
/// before `n` existed do.
pub fn is_first_choice(choice: &u32) -> bool {
    *choice == 0
}

/// How sure the model was of what it wrote, from the log-probabilities of the sampled
/// tokens. Absent when nothing was generated or the backend cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    pub mean_logprob: f32,
    pub min_logprob: f32,
}

impl Confidence {
    pub fn from_logprobs(logprobs: impl IntoIterator<Item = f32>) -> Option<Self> {
        let (count, sum, min) = logprobs
            .into_iter()
            .fold((0u32, 0f64, f32::INFINITY), |(n, sum, min), lp| {
                (n + 1, sum + f64::from(lp), min.min(lp))
            });
        (count > 0).then(|| Confidence {
            mean_logprob: (sum / f64::from(count)) as f32,
            min_logprob: min,
        })
    }
}

/// Where the time of one generation went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Timings {
    /// Waiting for an engine slot.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// From the request reaching the backend to its first generated token.
    pub first_token_ms: f64,
}

/// Everything known once a generation has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSummary {
    pub backend: String,
    pub model: String,
    pub finish_reason: FinishReason,
    pub tool_calls: Vec<ToolCall>,
    /// What the backend proposed as calls but could not be read as such: routing may
    /// escalate for them, and the tool-call gate refuses them.
    pub malformed_tool_calls: Vec<MalformedToolCall>,
    pub usage: Usage,
    pub confidence: Option<Confidence>,
    pub timings: Timings,
}

impl GenerationSummary {
    /// The account of the choices drawn for one request, as routing and the report
    /// read it: every choice's tokens (each choice computed or paid for its prompt), the
    /// least sure choice's confidence, the slowest choice's times, every proposed call,
    /// and a deadline if any choice met one. Each choice keeps its own finish reason and
    /// calls for the client. One choice is its own account, borrowed; `None` for no
    /// choices.
    pub fn of_choices<'a>(
        choices: impl IntoIterator<Item = &'a GenerationSummary>,
    ) -> Option<Cow<'a, GenerationSummary>> {
        let mut choices = choices.into_iter().peekable();
        let first = choices.next()?;
        if choices.peek().is_none() {
            return Some(Cow::Borrowed(first));
        }
        let mut combined = first.clone();
        for choice in choices {
            combined.usage.prompt_tokens += choice.usage.prompt_tokens;
            combined.usage.completion_tokens += choice.usage.completion_tokens;
            combined.usage.cached_prompt_tokens += choice.usage.cached_prompt_tokens;
            combined.confidence = match (combined.confidence, choice.confidence) {
                (Some(a), Some(b)) => Some(Confidence {
                    mean_logprob: a.mean_logprob.min(b.mean_logprob),
                    min_logprob: a.min_logprob.min(b.min_logprob),
                }),
                (known, None) | (None, known) => known,
            };
            let (slowest, timings) = (&mut combined.timings, choice.timings);
            slowest.queue_ms = slowest.queue_ms.max(timings.queue_ms);
            slowest.prefill_ms = slowest.prefill_ms.max(timings.prefill_ms);
            slowest.decode_ms = slowest.decode_ms.max(timings.decode_ms);
            slowest.first_token_ms = slowest.first_token_ms.max(timings.first_token_ms);
            combined
                .tool_calls
                .extend(choice.tool_calls.iter().cloned());
            combined
                .malformed_tool_calls
                .extend(choice.malformed_tool_calls.iter().cloned());
            if choice.finish_reason == FinishReason::Deadline {
                combined.finish_reason = FinishReason::Deadline;
            }
        }
        Some(Cow::Owned(combined))
    }
}

/// What a generation emits, in order: any number of `Content` deltas, then exactly one
/// `Finished` carrying `F` (a backend's summary, or the gateway's completed response).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent<F> {
    Content {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished(Box<F>),
}

pub type GenerationEvent = StreamEvent<GenerationSummary>;

/// One input of an embeddings request: a text, or token ids the client counted with
/// the model's own tokenizer. Written back as it came (a string or a list of ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// A whole, non-streamed generation or response.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected<F> {
    pub content: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finished: F,
}

pub type Generation = Collected<GenerationSummary>;

/// Drains a stream of events into the whole; `ended_early` is the error for a stream
/// that stops before its `Finished` event.
pub async fn collect<F, E>(
    mut events: impl Stream<Item = Result<StreamEvent<F>, E>> + Unpin,
    ended_early: impl FnOnce() -> E,
) -> Result<Collected<F>, E> {
    let mut content = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = events.next().await {
        match event? {
            StreamEvent::Content {
                text,
                logprobs: token_logprobs,
            } => {
                content.push_str(&text);
                logprobs.extend(token_logprobs);
            }
            StreamEvent::Finished(finished) => {
                return Ok(Collected {
                    content,
                    logprobs,
                    finished: *finished,
                })
            }
        }
    }
    Err(ended_early())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(
        finish_reason: FinishReason,
        usage: (u32, u32, u32),
        confidence: (f32, f32),
        decode_ms: f64,
    ) -> GenerationSummary {
        GenerationSummary {
            backend: "local".into(),
            model: "m".into(),
            finish_reason,
            tool_calls: Vec::new(),
            malformed_tool_calls: Vec::new(),
            usage: Usage {
                prompt_tokens: usage.0,
                completion_tokens: usage.1,
                cached_prompt_tokens: usage.2,
            },
            confidence: Some(Confidence {
                mean_logprob: confidence.0,
                min_logprob: confidence.1,
            }),
            timings: Timings {
                decode_ms,
                ..Timings::default()
            },
        }
    }

    #[test]
    fn choices_are_accounted_by_their_sum_their_least_sure_and_their_slowest() {
        let choices = [
            summary(FinishReason::Stop, (10, 4, 0), (-0.2, -1.0), 30.0),
            summary(FinishReason::Deadline, (10, 7, 9), (-0.5, -0.8), 50.0),
            summary(FinishReason::Length, (10, 2, 9), (-0.1, -2.0), 20.0),
        ];
        let combined = GenerationSummary::of_choices(&choices).unwrap();
        assert_eq!(
            combined.usage,
            Usage {
                prompt_tokens: 30,
                completion_tokens: 13,
                cached_prompt_tokens: 18,
            }
        );
        assert_eq!(
            combined.confidence,
            Some(Confidence {
                mean_logprob: -0.5,
                min_logprob: -2.0,
            })
        );
        assert_eq!(combined.timings.decode_ms, 50.0);
        assert_eq!(combined.finish_reason, FinishReason::Deadline);
        assert!(matches!(
            GenerationSummary::of_choices(&choices[..1]),
            Some(Cow::Borrowed(only)) if *only == choices[0]
        ));
        assert!(GenerationSummary::of_choices(&[]).is_none());
    }
}
