//! `GET /admin/routing` shows the routing table in force (version, thresholds, chain,
//! providers and their circuits); `PUT /admin/routing` replaces the routing policy at
//! run time. Requests in flight finish under the version they started with.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::admin::AdminCaller;
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::AppState;
use crate::route::config::RawRouting;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/routing", get(show).put(replace))
}

async fn show(State(state): State<AppState>, _admin: AdminCaller) -> Json<Value> {
    let table = state.gateway.routing().current();
    Json(serde_json::to_value(table.view()).unwrap_or_default())
}

async fn replace(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiJson(raw): OpenAiJson<RawRouting>,
) -> Result<Json<Value>, ApiError> {
    let table = state
        .operations
        .replace_routing(&admin.operator, raw)
        .await?;
    Ok(Json(serde_json::to_value(table.view()).unwrap_or_default()))
}
