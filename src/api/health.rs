//! Probes and the model list: `/healthz` (the process answers), `/readyz` (the local
//! model is loaded), `/v1/models`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::extract::Caller;
use super::openai::types::{ModelCard, ModelList};
use super::AppState;

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

/// Prometheus text exposition; carries no secrets, so it needs no key.
pub async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

pub async fn models(State(state): State<AppState>, _caller: Caller) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .gateway
            .models()
            .into_iter()
            .map(|model| ModelCard {
                id: model.id,
                object: "model",
                created: 0,
                owned_by: model.owned_by,
            })
            .collect(),
    })
}
