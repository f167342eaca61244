//! The `request` record (what the gateway writes about one chat request) and the
//! `outcome` record (what an agent reported a run achieved), as written and as readers
//! read them back (`read`). Prompts and completions are kept as SHA-256 and size,
//! their text only when configured.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{AuditError, Entry};
use crate::chat::ChatRequest;

pub const REQUEST_KIND: &str = "request";
pub const OUTCOME_KIND: &str = "outcome";

/// Whether a run achieved what it was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeStatus {
    Success,
    Failure,
}

/// The `outcome` record: what an agent reported a run achieved (`POST /v1/outcomes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessOutcome {
    pub run_id: String,
    /// What the run was for, e.g. `ticket_closed`: the group of a per-outcome report.
    pub outcome: String,
    pub status: OutcomeStatus,
    /// What the outcome was worth, in the business's own terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Decimal>,
    pub agent: String,
    pub tenant: String,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Answered; the record was written before the answer was acknowledged.
    Completed,
    /// Turned away before generating (budget, validation against the model, capacity).
    Refused,
    /// Broke off while generating.
    Failed,
    /// The client left before the end.
    Cancelled,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 4] = [
        RequestStatus::Completed,
        RequestStatus::Refused,
        RequestStatus::Failed,
        RequestStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Completed => "completed",
            RequestStatus::Refused => "refused",
            RequestStatus::Failed => "failed",
            RequestStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedError {
    /// A stable reason such as `run_budget_exceeded` or `model_not_found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// A text as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextDigest {
    pub sha256: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl TextDigest {
    /// The prompt: the messages and offered tools, as JSON.
    pub fn of_prompt(request: &ChatRequest, keep_text: bool) -> Self {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|message| {
                json!({
                    "role": message.role.as_str(),
                    "content": message.content,
                    "tool_calls": message.tool_calls,
                    "tool_call_id": message.tool_call_id,
                })
            })
            .collect();
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| json!({"name": tool.name, "description": tool.description, "parameters": tool.parameters}))
            .collect();
        let prompt = json!({"messages": messages, "tools": tools}).to_string();
        let mut hasher = TextHasher::new(keep_text);
        hasher.push(&prompt);
        hasher.finish()
    }
}

impl TextDigest {
    /// Bytes that may not be text at all (a body that failed to parse), digest only.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            sha256: super::chain::digest(bytes),
            bytes: bytes.len() as u64,
            text: None,
        }
    }
}

/// Digests a text that arrives in pieces (a streamed completion).
#[derive(Debug, Clone)]
pub struct TextHasher {
    hasher: Sha256,
    bytes: u64,
    text: Option<String>,
}

impl TextHasher {
    pub fn new(keep_text: bool) -> Self {
        Self {
            hasher: Sha256::new(),
            bytes: 0,
            text: keep_text.then(String::new),
        }
    }

    pub fn push(&mut self, piece: &str) {
        self.hasher.update(piece.as_bytes());
        self.bytes += piece.len() as u64;
        if let Some(text) = &mut self.text {
            text.push_str(piece);
        }
    }

    pub fn finish(self) -> TextDigest {
        TextDigest {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
            text: self.text,
        }
    }
}

/// A tool call a backend proposed, well formed or not, and the tool-call gate's
/// decision on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedToolCall {
    pub id: String,
    /// The name as the backend wrote it.
    pub name: String,
    /// The call's identity as policy hashes it (normalised name and canonical
    /// arguments): what approvals bind to and loop detection counts.
    pub sha256: String,
    /// Whether the agent received it.
    pub returned: bool,
    /// The verdict: `ALLOW`, `ALLOW_WITH_CONSTRAINTS`, `REQUIRE_APPROVAL` or `DENY`.
    #[serde(default)]
    pub decision: String,
    /// Its reason code (`rule`, `default`, `malformed_arguments`, `loop_detected`…).
    #[serde(default)]
    pub reason: String,
    /// The choice that proposed it, when the request asked for several (`n`).
    #[serde(default, skip_serializing_if = "crate::chat::is_first_choice")]
    pub choice: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// `R` is the report as read back (a JSON value), or as the gateway writes it (the
/// response's own serialised bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord<R = Value> {
    pub request_id: String,
    pub agent: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub status: RequestStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordedError>,
    pub received_at: DateTime<Utc>,
    pub latency_ms: f64,
    pub model_requested: String,
    pub prompt: TextDigest,
    /// What the agent was sent (for a failed or cancelled request, up to the break).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<TextDigest>,
    /// Choices 1 to n-1 of a request that asked for n answers, as `completion` holds
    /// choice 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later_choices: Vec<TextDigest>,
    /// The answering generation's tokens (every attempt's are in `report.attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Tokens>,
    #[serde(default)]
    pub tool_calls: Vec<RecordedToolCall>,
    /// Every backend tried for a request that got no answer (each as in the report's
    /// `attempts`); an answered request's attempts are in its `report`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Value>,
    /// The response's `warden` object, whole (completed requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<R>,
}

impl<R: Serialize> RequestRecord<R> {
    pub fn entry(&self) -> Result<Entry, AuditError> {
        Entry::of_struct(REQUEST_KIND, self)
    }
}

impl RequestRecord {
    /// The request's cost over all its attempts, from its report.
    pub fn cost_usd(&self) -> Option<Decimal> {
        decimal_field(self.report.as_ref()?, "cost_usd")
    }
}

/// A decimal written as a JSON string (how warden writes money) or number.
pub fn decimal_field(object: &Value, field: &str) -> Option<Decimal> {
    match &object[field] {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.to_string().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, Role, Sampling, ToolChoice};

    #[test]
    fn prompt_digest_hashes_and_sizes_and_keeps_text_only_when_asked() {
        let request = ChatRequest {
            model: "auto".into(),
            messages: vec![Message::text(Role::User, "secret plan")],
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            sampling: Sampling::default(),
            logprobs: None,
            response_format: Default::default(),
            raw_prompt: false,
            parallel_tool_calls: None,
            choices: 1,
        };
        let hidden = TextDigest::of_prompt(&request, false);
        assert_eq!(hidden.sha256.len(), 64);
        assert!(hidden.bytes > "secret plan".len() as u64);
        assert!(hidden.text.is_none());
        let kept = TextDigest::of_prompt(&request, true);
        assert_eq!(kept.sha256, hidden.sha256);
        assert!(kept.text.unwrap().contains("secret plan"));
    }

    #[test]
    fn a_request_record_names_each_member_once_and_no_chain_field() {
        // What lets `entry` skip the check `Entry::new` makes: every optional field set.
        let digest = TextHasher::new(true).finish();
        let record = RequestRecord {
            request_id: "r".into(),
            agent: "a".into(),
            tenant: "t".into(),
            run_id: Some("run".into()),
            status: RequestStatus::Failed,
            error: Some(RecordedError {
                kind: "k".into(),
                message: "m".into(),
            }),
            received_at: Utc::now(),
            latency_ms: 1.0,
            model_requested: "auto".into(),
            prompt: digest.clone(),
            completion: Some(digest.clone()),
            later_choices: vec![digest],
            usage: Some(Tokens {
                prompt_tokens: 1,
                completion_tokens: 2,
            }),
            tool_calls: vec![RecordedToolCall {
                id: "c".into(),
                name: "n".into(),
                sha256: "s".into(),
                returned: false,
                decision: "DENY".into(),
                reason: "loop_detected".into(),
                choice: 1,
            }],
            attempts: vec![json!({"backend": "b"})],
            report: Some(json!({"route": "local"})),
        };
        assert!(Entry::new(REQUEST_KIND, &record).is_ok());
        assert_eq!(record.entry().unwrap().kind(), REQUEST_KIND);
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let mut pieces = TextHasher::new(false);
        pieces.push("Hello, ");
        pieces.push("world");
        let mut whole = TextHasher::new(true);
        whole.push("Hello, world");
        let (pieces, whole) = (pieces.finish(), whole.finish());
        assert_eq!(pieces.sha256, whole.sha256);
        assert_eq!(pieces.bytes, 12);
        assert_eq!(whole.text.as_deref(), Some("Hello, world"));
    }
}
