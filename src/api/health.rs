//! Probes and the model list: `/healthz` (the process answers), `/readyz` (the local
//! model is loaded), `/v1/models` and `/v1/models/{id}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::admin::require_admin;
use super::error::ApiError;
use super::extract::{bearer_token, Caller, OpenAiPath};
use super::openai::types::{ModelCard, ModelList};
use super::AppState;
use crate::config::MetricsAccess;
use crate::error::GatewayError;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = state.gateway.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if readiness.ready { "ready" } else { "not_ready" },
        "local": readiness.local,
    });
    (status, Json(body))
}

/// Prometheus text exposition. It names models, agents and spend, so by default only
/// the admin key reads it (`server.metrics.access`).
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    if state.config.server.metrics_access == MetricsAccess::AdminKey {
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        require_admin(&state, key)?;
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    ))
}

pub async fn models(State(state): State<AppState>, _caller: Caller) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: model_cards(&state).collect(),
    })
}

/// One model of the list (`GET /v1/models/{id}`); ids may hold slashes, as some
/// providers' do (`vendor/model`).
pub async fn model(
    State(state): State<AppState>,
    _caller: Caller,
    OpenAiPath(id): OpenAiPath<String>,
) -> Result<Json<ModelCard>, ApiError> {
    model_cards(&state)
        .find(|card| card.id == id)
        .map(Json)
        .ok_or(ApiError::Gateway(GatewayError::ModelNotFound(id)))
}

fn model_cards(state: &AppState) -> impl Iterator<Item = ModelCard> {
    state.gateway.models().into_iter().map(|model| ModelCard {
        id: model.id,
        object: "model",
        created: 0,
        owned_by: model.owned_by,
    })
}
