//! OpenAI's embeddings format (`/v1/embeddings`): validated here, the vectors come from
//! a provider's embedding model as it wrote them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::request::{Limits, ParsedRequest};
use super::types::UsageBody;
use crate::api::error::ApiError;
use crate::api::extract::parse_json;
use crate::chat::{ChatRequest, Message, Role};
use crate::error::GatewayError;
use crate::gateway::RequestMetadata;

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

/// What the endpoint keeps from the body for the provider.
#[derive(Debug, Clone)]
pub struct EmbeddingParts {
    /// As sent: text, texts, token ids or lists of them.
    pub input: Value,
    /// `encoding_format`, `dimensions` and `user`, when sent.
    pub options: Map<String, Value>,
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
    let texts = texts(&input)?;
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
    let messages = texts
        .into_iter()
        .map(|text| Message::text(Role::User, text))
        .collect();
    let parsed = ParsedRequest {
        chat: ChatRequest::new(model, messages),
        stream: false,
        include_usage: false,
        metadata: RequestMetadata::default(),
        legacy_functions: false,
    };
    Ok((parsed, EmbeddingParts { input, options }))
}

/// The input's texts, for the record's digest and the policy's screen: each text as
/// it is, token ids written out as numbers. Empty input is refused, as OpenAI does.
fn texts(input: &Value) -> Result<Vec<String>, GatewayError> {
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
        .map(|(index, item)| match item {
            Value::String(text) if !text.is_empty() => Ok(text.clone()),
            Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                Ok(serde_json::to_string(ids).unwrap_or_default())
            }
            _ => Err(GatewayError::invalid(
                format!("input[{index}]"),
                "each input must be a non-empty string or a non-empty list of token ids",
            )),
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Value>,
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
            assert_eq!(parts.input, input);
            assert_eq!(parts.options["dimensions"], 8);
            assert_eq!(parts.options["encoding_format"], "base64");
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
