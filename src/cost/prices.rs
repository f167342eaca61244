//! Prices and what a request costs. Money is `Decimal` US dollars, never a float:
//! costs are summed over millions of requests and must reconcile to the cent.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

use crate::chat::Usage;

const TOKENS_PER_PRICE_UNIT: i64 = 1_000_000;

/// Dollars per million tokens for one model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    #[serde(deserialize_with = "money")]
    pub input_per_million: Decimal,
    #[serde(deserialize_with = "money")]
    pub output_per_million: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    #[serde(default)]
    models: BTreeMap<String, ModelPrice>,
}

/// Prices by model name, as clients and backends name models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// Parses a prices file; errors carry the offending key's path.
    pub fn from_yaml(text: &str) -> Result<Self, (String, String)> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: RawPrices =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|error| (error.path().to_string(), error.into_inner().to_string()))?;
        for (model, price) in &raw.models {
            if price.input_per_million.is_sign_negative()
                || price.output_per_million.is_sign_negative()
            {
                return Err((
                    format!("models.{model}"),
                    "prices must not be negative".into(),
                ));
            }
        }
        Ok(Self { models: raw.models })
    }

    pub fn load(path: &Path) -> Result<Self, (String, String)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            (
                ".".to_string(),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_yaml(&text)
    }

    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// What `usage` costs on `model`; `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: Usage) -> Option<Decimal> {
        let price = self.price(model)?;
        let per_token = |per_million: Decimal, tokens: u32| {
            per_million * Decimal::from(tokens) / Decimal::from(TOKENS_PER_PRICE_UNIT)
        };
        Some(
            per_token(price.input_per_million, usage.prompt_tokens)
                + per_token(price.output_per_million, usage.completion_tokens),
        )
    }
}

/// Reads money from a string (`"0.15"`, exact) or a YAML number. Numbers go through
/// their shortest decimal form, so `0.15` is 0.15 and not 0.1499999….
fn money<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(f64),
    }
    let text = match Written::deserialize(deserializer)? {
        Written::Text(text) => text,
        Written::Number(number) => number.to_string(),
    };
    Decimal::from_str(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not an amount: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_decimal() {
        let table = PriceTable::from_yaml(
            "models:\n  gpt-x: {input_per_million: 0.15, output_per_million: \"0.60\"}\n",
        )
        .unwrap();
        let usage = Usage {
            prompt_tokens: 1_000,
            completion_tokens: 500,
        };
        // 1000 * 0.15/1M + 500 * 0.60/1M = 0.00015 + 0.0003
        assert_eq!(
            table.cost("gpt-x", usage),
            Some(Decimal::from_str("0.00045").unwrap())
        );
        assert_eq!(table.cost("unpriced", usage), None);
    }

    #[test]
    fn bad_prices_name_their_key() {
        let (key, _) = PriceTable::from_yaml(
            "models:\n  m: {input_per_million: abc, output_per_million: 1}\n",
        )
        .unwrap_err();
        assert_eq!(key, "models.m.input_per_million");
        let (key, _) =
            PriceTable::from_yaml("models:\n  m: {input_per_million: -1, output_per_million: 1}\n")
                .unwrap_err();
        assert_eq!(key, "models.m");
        let (key, message) = PriceTable::from_yaml("models:\n  m: {input: 1}\n").unwrap_err();
        assert!(message.contains("unknown field"), "{key}: {message}");
    }

    #[test]
    fn shipped_prices_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing/prices.yaml");
        let table = PriceTable::load(&path).unwrap();
        assert!(table.price("smollm2-135m-instruct").is_some());
    }
}
