//! OpenAI's embeddings format (`/v1/embeddings`): validated here; the vectors come
//! from a provider's embedding model as it wrote them, or from the local model, written
//! here as the client asked (floats, or base64 of little-endian f32s).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::request::{Limits, ParsedRequest};
use super::types::UsageBody;
use crate::api::error::ApiError;
use crate::api::extract::parse_json;
use base64::Engine as _;

use crate::chat::{ChatRequest, EmbeddingInput, Message, Role};
use crate::error::GatewayError;
use crate::gateway::{RequestMetadata, Vectors};

/// OpenAI's own bound on the inputs of one request.
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

/// What the endpoint keeps from the body for the backend.
#[derive(Debug, Clone)]
pub struct EmbeddingParts {
    /// Each text or list of token ids.
    pub inputs: Vec<EmbeddingInput>,
    /// `encoding_format`, `dimensions` and `user`, when sent, for a provider.
    pub options: Map<String, Value>,
    /// Whether the client asked for base64 rather than lists of floats.
    pub base64: bool,
}

pub fn parse_body(
    body: &[u8],
    _limits: &Limits,
    _agent: &str,
) -> Result<(ParsedRequest, EmbeddingParts), ApiError> {
    let wire: EmbeddingRequest = parse_json(body)?;
    Ok(parse(wire)?)
}

pub fn parse(wire: EmbeddingRequest) -> Result<(ParsedRequest, EmbeddingParts), GatewayError> {
    let model = match wire.model {
        Some(model) if !model.trim().is_empty() => model,
        _ => {
            return Err(GatewayError::invalid(
                "model",
                "`model` must name an embedding model",
            ))
        }
    };
    let input = wire
        .input
        .ok_or_else(|| GatewayError::invalid("input", "`input` is required"))?;
    let inputs = inputs(&input)?;
    let mut options = Map::new();
    match wire.encoding_format.as_deref() {
        None => {}
        Some(format @ ("float" | "base64")) => {
            options.insert("encoding_format".into(), format.into());
        }
        Some(other) => {
            return Err(GatewayError::invalid(
                "encoding_format",
                format!("`encoding_format` must be `float` or `base64`, got `{other}`"),
            ))
        }
    }
    if let Some(dimensions) = wire.dimensions {
        if dimensions == 0 {
            return Err(GatewayError::invalid(
                "dimensions",
                "`dimensions` must be at least 1",
            ));
        }
        options.insert("dimensions".into(), dimensions.into());
    }
    if let Some(user) = wire.user {
        options.insert("user".into(), user.into());
    }
    let base64 = options
        .get("encoding_format")
        .is_some_and(|f| f == "base64");
    // The record's digest and the policy's screen read each input as text; token ids
    // are written out as numbers.
    let messages = inputs
        .iter()
        .map(|input| {
            let text = match input {
                EmbeddingInput::Text(text) => text.clone(),
                EmbeddingInput::Tokens(ids) => serde_json::to_string(ids).unwrap_or_default(),
            };
            Message::text(Role::User, text)
        })
        .collect();
    let parsed = ParsedRequest {
        chat: ChatRequest::new(model, messages),
        stream: false,
        include_usage: false,
        metadata: RequestMetadata::default(),
        legacy_functions: false,
    };
    let parts = EmbeddingParts {
        inputs,
        options,
        base64,
    };
    Ok((parsed, parts))
}

/// The input's texts and lists of token ids. Empty input is refused, as OpenAI does.
fn inputs(input: &Value) -> Result<Vec<EmbeddingInput>, GatewayError> {
    let invalid = |message: String| GatewayError::invalid("input", message);
    let items = match input {
        Value::String(_) => std::slice::from_ref(input),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            std::slice::from_ref(input)
        }
        Value::Array(items) => items.as_slice(),
        _ => {
            return Err(invalid(
                "`input` must be a string, a list of strings, or token ids".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(invalid("`input` must not be empty".into()));
    }
    if items.len() > MAX_INPUTS {
        return Err(invalid(format!(
            "at most {MAX_INPUTS} inputs per request, got {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let token_ids = match item {
                Value::String(text) if !text.is_empty() => {
                    return Ok(EmbeddingInput::Text(text.clone()))
                }
                Value::Array(ids) if !ids.is_empty() => ids
                    .iter()
                    .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                    .collect::<Option<Vec<u32>>>(),
                _ => None,
            };
            token_ids.map(EmbeddingInput::Tokens).ok_or_else(|| {
                GatewayError::invalid(
                    format!("input[{index}]"),
                    "each input must be a non-empty string or a non-empty list of token ids",
                )
            })
        })
        .collect()
}

/// One item of the answer's `data`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingItem {
    /// A provider's, as it wrote it.
    AsWritten(Value),
    Computed {
        object: &'static str,
        index: usize,
        embedding: EmbeddingValue,
    },
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    /// Written as f32s, in their shortest form, not widened to f64's digits.
    Floats(Vec<f32>),
    /// The little-endian bytes of the f32s.
    Base64(String),
}

/// The answer's `data`: a provider's items as it wrote them; the local model's
/// vectors as the client asked for them.
pub fn data(vectors: Vectors, base64: bool) -> Vec<EmbeddingItem> {
    match vectors {
        Vectors::AsWritten(items) => items.into_iter().map(EmbeddingItem::AsWritten).collect(),
        Vectors::Computed(vectors) => vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                    EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    EmbeddingValue::Floats(vector)
                };
                EmbeddingItem::Computed {
                    object: "embedding",
                    index,
                    embedding,
                }
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingUsage,
    /// The report as the audit log recorded it.
    pub warden: Box<RawValue>,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

impl From<UsageBody> for EmbeddingUsage {
    fn from(usage: UsageBody) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(value: Value) -> String {
        match parse(serde_json::from_value(value).unwrap()).unwrap_err() {
            GatewayError::InvalidRequest { param, .. } => param.unwrap(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn inputs_become_texts_and_options_pass_on() {
        for (input, texts) in [
            (serde_json::json!("a cat"), vec!["a cat"]),
            (serde_json::json!(["a", "b"]), vec!["a", "b"]),
            (serde_json::json!([1, 2]), vec!["[1,2]"]),
            (serde_json::json!([[1], [2, 3]]), vec!["[1]", "[2,3]"]),
        ] {
            let (parsed, parts) = parse(
                serde_json::from_value(serde_json::json!({"model": "e", "input": input,
                    "dimensions": 8, "encoding_format": "base64"}))
                .unwrap(),
            )
            .unwrap();
            let got: Vec<&str> = parsed
                .chat
                .messages
                .iter()
                .map(|m| m.content.as_str())
                .collect();
            assert_eq!(got, texts);
            assert_eq!(
                serde_json::to_value(&parts.inputs).unwrap(),
                as_list(&input)
            );
            assert_eq!(parts.options["dimensions"], 8);
            assert_eq!(parts.options["encoding_format"], "base64");
        }
    }

    /// The input as a list of inputs, as it goes to a provider.
    fn as_list(input: &Value) -> Value {
        match input {
            Value::Array(items) if items.iter().all(|item| item.is_array() || item.is_string()) => {
                input.clone()
            }
            single => Value::Array(vec![single.clone()]),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        for (body, param) in [
            (serde_json::json!({"input": "a"}), "model"),
            (serde_json::json!({"model": "e"}), "input"),
            (serde_json::json!({"model": "e", "input": []}), "input"),
            (serde_json::json!({"model": "e", "input": 3}), "input"),
            (
                serde_json::json!({"model": "e", "input": ["a", ""]}),
                "input[1]",
            ),
            (
                serde_json::json!({"model": "e", "input": ["a", 3]}),
                "input[1]",
            ),
            (
                serde_json::json!({"model": "e", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
            (
                serde_json::json!({"model": "e", "input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
        ] {
            assert_eq!(param_of(body.clone()), param, "{body}");
        }
    }
}
