//! The operator API under `/admin`, guarded by the admin key.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::bearer_key;
use super::AppState;
use crate::error::GatewayError;
use crate::gateway::operator::UNNAMED_ADMIN;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/status", get(status))
}

/// Proof that the request carries the admin key, and who the operator says they are.
pub struct AdminCaller {
    /// From the `x-warden-operator` header: the admin key is shared, so the audit trail
    /// can only name the person if the caller does.
    pub operator: String,
}

const OPERATOR_HEADER: &str = "x-warden-operator";
const MAX_OPERATOR_LEN: usize = 128;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        require_admin(state, bearer_key(parts))?;
        let named = match parts.headers.get(OPERATOR_HEADER) {
            None => None,
            Some(value) => match value.to_str().map(str::trim) {
                Ok(name) if !name.is_empty() && name.len() <= MAX_OPERATOR_LEN => Some(name),
                _ => {
                    return Err(GatewayError::invalid(
                        OPERATOR_HEADER,
                        format!("a printable name of 1 to {MAX_OPERATOR_LEN} characters"),
                    )
                    .into())
                }
            },
        };
        Ok(AdminCaller {
            operator: named.unwrap_or(UNNAMED_ADMIN).to_string(),
        })
    }
}

/// Lets the admin key through; an agent's key is known but not allowed (403), any
/// other is not known (401).
pub fn require_admin(state: &AppState, key: Option<&str>) -> Result<(), ApiError> {
    if state.keys.is_admin(key) {
        return Ok(());
    }
    if key.is_some() && state.keys.authenticate(key).is_ok() {
        return Err(ApiError::AgentKeyOnAdmin);
    }
    Err(ApiError::AdminKeyRequired)
}

/// What is running: the configuration file, the agents it declares, the local model.
async fn status(State(state): State<AppState>, _admin: AdminCaller) -> Json<Value> {
    let config = &state.config;
    Json(json!({
        "config": config.path,
        "uptime_s": state.started.elapsed().as_secs(),
        "local": state.gateway.readiness().local,
        "models": state.gateway.models().into_iter().map(|m| m.id).collect::<Vec<_>>(),
        "agents": config.agents.iter().map(|a| json!({"id": a.id, "tenant": a.tenant, "role": a.role})).collect::<Vec<_>>(),
    }))
}
