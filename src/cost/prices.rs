//! Prices (`routing/prices.yaml`, and prices written on provider models): per model,
//! dollars per million input, cached input and output tokens, or, for a local model,
//! dollars per CPU-second; and the escalation model, whose prices measure what serving
//! locally saved. The one place a cost is computed.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

use crate::chat::{GenerationSummary, Usage};

const TOKENS_PER_PRICE_UNIT: i64 = 1_000_000;
const MICROS_PER_SECOND: u32 = 6;

/// What one attempt consumed, as pricing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub backend: String,
    pub model: String,
    pub prompt_tokens: u32,
    /// Prompt tokens the provider served from its cache (counted in `prompt_tokens`).
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The engine's time on it, for models priced per CPU-second.
    pub compute: Duration,
}

impl Metered {
    /// Tokens alone, without engine time (what a provider bills).
    pub fn tokens(backend: &str, model: &str, usage: Usage) -> Self {
        Self {
            backend: backend.to_string(),
            model: model.to_string(),
            prompt_tokens: usage.prompt_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            completion_tokens: usage.completion_tokens,
            compute: Duration::ZERO,
        }
    }
}

impl From<&GenerationSummary> for Metered {
    fn from(summary: &GenerationSummary) -> Self {
        let compute_ms = (summary.timings.prefill_ms + summary.timings.decode_ms).max(0.0);
        Self {
            compute: Duration::from_secs_f64(compute_ms / 1000.0),
            ..Self::tokens(&summary.backend, &summary.model, summary.usage)
        }
    }
}

/// What one model charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPrice {
    /// Dollars per million tokens; cached input tokens at their own rate where the
    /// provider has one, else at the input rate.
    Tokens {
        input_per_million: Decimal,
        output_per_million: Decimal,
        cached_input_per_million: Option<Decimal>,
    },
    /// Dollars per second of the engine generating for the request (prefill and
    /// decode): a local model's share of the machine it runs on.
    CpuTime { per_cpu_second: Decimal },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(default, deserialize_with = "optional_money")]
    input_per_million: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_money")]
    output_per_million: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_money")]
    cached_input_per_million: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_money")]
    per_cpu_second: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    #[serde(default)]
    models: BTreeMap<String, RawPrice>,
    /// The model savings are measured against: what every request would have cost there.
    escalation_model: Option<String>,
}

/// Prices by model name, as clients and backends name models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
    escalation_model: Option<String>,
}

type Invalid = (String, String);

impl PriceTable {
    /// Parses a prices file; errors carry the offending key's path.
    pub fn from_yaml(text: &str) -> Result<Self, Invalid> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: RawPrices =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|error| (error.path().to_string(), error.into_inner().to_string()))?;
        let models = raw
            .models
            .into_iter()
            .map(|(model, price)| {
                let price = validate(&model, price)?;
                Ok((model, price))
            })
            .collect::<Result<BTreeMap<_, _>, Invalid>>()?;
        Ok(Self {
            models,
            escalation_model: raw.escalation_model,
        })
    }

    /// The escalation model must be priced per token (as `model` or `provider/model`);
    /// checked once every price is in, provider prices included.
    pub fn check_escalation_model(&self) -> Result<(), Invalid> {
        let Some(model) = &self.escalation_model else {
            return Ok(());
        };
        match self.models.get(model) {
            Some(ModelPrice::Tokens { .. }) => Ok(()),
            Some(ModelPrice::CpuTime { .. }) => Err((
                "escalation_model".into(),
                format!("`{model}` is priced per CPU-second; savings are measured in tokens at an external model's prices"),
            )),
            None => Err((
                "escalation_model".into(),
                format!("`{model}` has no price (under `models`, or on a provider's model as `provider/model`)"),
            )),
        }
    }

    pub fn load(path: &Path) -> Result<Self, Invalid> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            (
                ".".to_string(),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_yaml(&text)
    }

    /// Adds a price written elsewhere (on a provider's model, as `provider/model`); a
    /// model priced twice is an error, so there is one place to change it.
    pub fn add(&mut self, model: &str, price: ModelPrice) -> Result<(), String> {
        if self.models.contains_key(model) {
            return Err(format!(
                "`{model}` is priced twice (prices file and provider)"
            ));
        }
        self.models.insert(model.to_string(), price);
        Ok(())
    }

    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    pub fn escalation_model(&self) -> Option<&str> {
        self.escalation_model.as_deref()
    }

    /// What `metered` costs: its backend's own price for the model (`backend/model`, as
    /// written on a provider) or else the model's price; `None` when neither is priced.
    pub fn cost(&self, metered: &Metered) -> Option<Decimal> {
        let price = self.price_of(metered)?;
        let per_token = |per_million: Decimal, tokens: u32| {
            per_million * Decimal::from(tokens) / Decimal::from(TOKENS_PER_PRICE_UNIT)
        };
        match price {
            ModelPrice::Tokens {
                input_per_million,
                output_per_million,
                cached_input_per_million,
            } => {
                let cached = metered.cached_prompt_tokens.min(metered.prompt_tokens);
                let cached_rate = cached_input_per_million.unwrap_or(*input_per_million);
                Some(
                    per_token(*input_per_million, metered.prompt_tokens - cached)
                        + per_token(cached_rate, cached)
                        + per_token(*output_per_million, metered.completion_tokens),
                )
            }
            ModelPrice::CpuTime { per_cpu_second } => {
                Some(*per_cpu_second * seconds(metered.compute))
            }
        }
    }

    fn price_of(&self, metered: &Metered) -> Option<&ModelPrice> {
        self.price(&format!("{}/{}", metered.backend, metered.model))
            .or_else(|| self.price(&metered.model))
    }

    /// What the escalation model would have charged for the same tokens: the prices'
    /// `escalation_model`, or else `fallback` (`(backend, model)`: where the routing
    /// escalates first), when it is priced per token.
    pub fn reference_cost(
        &self,
        metered: &Metered,
        fallback: Option<(&str, &str)>,
    ) -> Option<Decimal> {
        let (backend, model) = match &self.escalation_model {
            Some(model) => ("", model.as_str()),
            None => fallback?,
        };
        let reference = Metered {
            backend: backend.to_string(),
            model: model.to_string(),
            cached_prompt_tokens: 0,
            compute: Duration::ZERO,
            ..metered.clone()
        };
        match self.price_of(&reference)? {
            ModelPrice::Tokens { .. } => self.cost(&reference),
            ModelPrice::CpuTime { .. } => None,
        }
    }
}

/// A duration as exact decimal seconds, to the microsecond.
fn seconds(duration: Duration) -> Decimal {
    let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
    Decimal::new(micros, MICROS_PER_SECOND)
}

fn validate(model: &str, price: RawPrice) -> Result<ModelPrice, Invalid> {
    let key = |field: &str| format!("models.{model}.{field}");
    let fields = [
        ("input_per_million", price.input_per_million),
        ("output_per_million", price.output_per_million),
        ("cached_input_per_million", price.cached_input_per_million),
        ("per_cpu_second", price.per_cpu_second),
    ];
    for (field, amount) in fields {
        if amount.is_some_and(|amount| amount.is_sign_negative()) {
            return Err((key(field), "prices must not be negative".into()));
        }
    }
    match price {
        RawPrice {
            input_per_million: Some(input_per_million),
            output_per_million: Some(output_per_million),
            cached_input_per_million,
            per_cpu_second: None,
        } => Ok(ModelPrice::Tokens {
            input_per_million,
            output_per_million,
            cached_input_per_million,
        }),
        RawPrice {
            input_per_million: None,
            output_per_million: None,
            cached_input_per_million: None,
            per_cpu_second: Some(per_cpu_second),
        } => Ok(ModelPrice::CpuTime { per_cpu_second }),
        RawPrice {
            per_cpu_second: Some(_),
            ..
        } => Err((
            key("per_cpu_second"),
            "price a model per CPU-second or per token, not both".into(),
        )),
        RawPrice {
            input_per_million: None,
            ..
        } => Err((
            key("input_per_million"),
            "give `input_per_million` and `output_per_million`, or `per_cpu_second`".into(),
        )),
        RawPrice {
            output_per_million: None,
            ..
        } => Err((
            key("output_per_million"),
            "give `input_per_million` and `output_per_million`, or `per_cpu_second`".into(),
        )),
    }
}

/// Reads money from a string (`"0.15"`, exact) or a YAML number. Numbers go through
/// their shortest decimal form, so `0.15` is 0.15 and not 0.1499999….
pub fn money<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
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

/// [`money`] for a field that may be absent (with `#[serde(default)]`).
pub fn optional_money<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Decimal>, D::Error> {
    money(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(model: &str, prompt: u32, cached: u32, completion: u32) -> Metered {
        Metered {
            backend: "any".into(),
            model: model.into(),
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            completion_tokens: completion,
            compute: Duration::ZERO,
        }
    }

    fn amount(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn cost_is_exact_decimal() {
        let table = PriceTable::from_yaml(
            "models:\n  gpt-x: {input_per_million: 0.15, output_per_million: \"0.60\"}\n",
        )
        .unwrap();
        // 1000 * 0.15/1M + 500 * 0.60/1M = 0.00015 + 0.0003
        assert_eq!(
            table.cost(&tokens("gpt-x", 1_000, 0, 500)),
            Some(amount("0.00045"))
        );
        assert_eq!(table.cost(&tokens("unpriced", 1_000, 0, 500)), None);
        // A provider's own price for a model wins over the model's.
        let mut table = table;
        let azure = ModelPrice::Tokens {
            input_per_million: Decimal::ONE,
            output_per_million: Decimal::ONE,
            cached_input_per_million: None,
        };
        table.add("azure/gpt-x", azure.clone()).unwrap();
        let at_azure = Metered {
            backend: "azure".into(),
            ..tokens("gpt-x", 1_000, 0, 500)
        };
        assert_eq!(table.cost(&at_azure), Some(amount("0.0015")));
        assert!(table.add("azure/gpt-x", azure).is_err());
    }

    #[test]
    fn cached_input_has_its_own_rate() {
        let table = PriceTable::from_yaml(
            "models:\n  gpt-x: {input_per_million: \"2.50\", cached_input_per_million: \"1.25\", output_per_million: 10}\n  plain: {input_per_million: 1, output_per_million: 1}\n",
        )
        .unwrap();
        // 600 fresh at 2.50, 400 cached at 1.25, 100 out at 10: 0.0015 + 0.0005 + 0.001
        assert_eq!(
            table.cost(&tokens("gpt-x", 1_000, 400, 100)),
            Some(amount("0.003"))
        );
        // Without a cached rate, cached tokens cost what input costs.
        assert_eq!(
            table.cost(&tokens("plain", 1_000, 400, 0)),
            Some(amount("0.001"))
        );
    }

    #[test]
    fn local_models_can_be_priced_by_cpu_time_and_compared_with_the_escalation_model() {
        let table = PriceTable::from_yaml(
            "escalation_model: big\nmodels:\n  small: {per_cpu_second: \"0.0001\"}\n  big: {input_per_million: 5, output_per_million: 15}\n",
        )
        .unwrap();
        let metered = Metered {
            compute: Duration::from_micros(2_500_000),
            ..tokens("small", 2_000, 0, 100)
        };
        assert_eq!(table.cost(&metered), Some(amount("0.00025")));
        // 2000 * 5/1M + 100 * 15/1M
        assert_eq!(table.reference_cost(&metered, None), Some(amount("0.0115")));
        // The prices' escalation model wins over the routing's.
        assert_eq!(
            table.reference_cost(&metered, Some(("", "small"))),
            Some(amount("0.0115"))
        );
        assert_eq!(table.escalation_model(), Some("big"));
        assert_eq!(PriceTable::default().reference_cost(&metered, None), None);
    }

    #[test]
    fn without_an_escalation_model_the_reference_is_the_fallback_at_its_provider_price() {
        let table = PriceTable::from_yaml(
            "models:\n  small: {per_cpu_second: \"0.0001\"}\n  acme/big: {input_per_million: 5, output_per_million: 15}\n",
        )
        .unwrap();
        let metered = tokens("small", 2_000, 0, 100);
        assert_eq!(table.reference_cost(&metered, None), None);
        assert_eq!(
            table.reference_cost(&metered, Some(("acme", "big"))),
            Some(amount("0.0115"))
        );
        // Unpriced, or priced by the CPU-second: no reference to measure against.
        assert_eq!(
            table.reference_cost(&metered, Some(("other", "huge"))),
            None
        );
        assert_eq!(table.reference_cost(&metered, Some(("", "small"))), None);
    }

    #[test]
    fn bad_prices_name_their_key() {
        let key = |yaml: &str| {
            PriceTable::from_yaml(yaml)
                .and_then(|table| table.check_escalation_model())
                .unwrap_err()
                .0
        };
        assert_eq!(
            key("models:\n  m: {input_per_million: abc, output_per_million: 1}\n"),
            "models.m.input_per_million"
        );
        assert_eq!(
            key("models:\n  m: {input_per_million: -1, output_per_million: 1}\n"),
            "models.m.input_per_million"
        );
        assert_eq!(
            key("models:\n  m: {input_per_million: 1}\n"),
            "models.m.output_per_million"
        );
        assert_eq!(
            key("models:\n  m: {input_per_million: 1, output_per_million: 1, per_cpu_second: 1}\n"),
            "models.m.per_cpu_second"
        );
        assert_eq!(
            key("escalation_model: nope\nmodels: {}\n"),
            "escalation_model"
        );
        assert_eq!(
            key("escalation_model: m\nmodels:\n  m: {per_cpu_second: 1}\n"),
            "escalation_model"
        );
        let (key, message) = PriceTable::from_yaml("models:\n  m: {input: 1}\n").unwrap_err();
        assert!(message.contains("unknown field"), "{key}: {message}");
    }

    #[test]
    fn shipped_prices_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing/prices.yaml");
        let table = PriceTable::load(&path).unwrap();
        assert!(table.price("smollm2-135m-instruct").is_some());
        table.check_escalation_model().unwrap();
        let escalation = table.escalation_model().unwrap();
        assert!(matches!(
            table.price(escalation),
            Some(ModelPrice::Tokens { .. })
        ));
    }
}
