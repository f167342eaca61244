//! The operator API under `/admin`, guarded by the admin key.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::bearer_key;
use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/status", get(status))
}

/// Proof that the request carries the admin key.
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.keys.is_admin(bearer_key(parts)) {
            Ok(AdminCaller)
        } else {
            Err(ApiError::AdminKeyRequired)
        }
    }
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
