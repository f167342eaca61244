//! `POST /v1/outcomes`: an agent attaches a business outcome (`ticket_closed`,
//! `invoice_matched`…) to one of its runs, so finance can read the cost per outcome.

use std::str::FromStr;

use axum::extract::State;
use axum::Json;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, OpenAiJson};
use super::AppState;
use crate::audit::record::{BusinessOutcome, OutcomeStatus};
use crate::error::GatewayError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRequest {
    run_id: String,
    outcome: String,
    status: OutcomeStatus,
    /// A number, or a decimal string for amounts that must stay exact.
    #[serde(default)]
    value: Option<Value>,
}

pub async fn record_outcome(
    State(state): State<AppState>,
    Caller(principal): Caller,
    OpenAiJson(wire): OpenAiJson<OutcomeRequest>,
) -> Result<Json<Value>, ApiError> {
    let value = match wire.value {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => Some(decimal(&number.to_string())?),
        Some(Value::String(text)) => Some(decimal(&text)?),
        Some(_) => return Err(invalid_value().into()),
    };
    let outcome = BusinessOutcome::new(&principal, wire.run_id, wire.outcome, wire.status, value)
        .map_err(GatewayError::from)?;
    let receipt = state.gateway.record_outcome(&outcome).await?;
    let run = state.gateway.runs().usage(&outcome.tenant, &outcome.run_id);
    Ok(Json(json!({
        "object": "outcome",
        "run_id": outcome.run_id,
        "outcome": outcome.outcome,
        "status": outcome.status,
        "value": outcome.value,
        "agent": outcome.agent,
        "tenant": outcome.tenant,
        "run": run,
        "audit": receipt,
    })))
}

fn decimal(text: &str) -> Result<Decimal, GatewayError> {
    let text = text.trim();
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| invalid_value())
}

fn invalid_value() -> GatewayError {
    GatewayError::invalid(
        "value",
        "`value` must be a number or a decimal string such as \"129.90\"",
    )
}
