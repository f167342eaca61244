//! The governor's operator API, behind the admin key: `GET /admin/governor` shows
//! in-flight requests, queues, waits, limits, spend and kill switches; kill switches are
//! engaged with `PUT` (a JSON body giving the `reason`) and cleared with `DELETE` on
//! `/admin/governor/kill/global`, `.../tenants/{tenant}` and `.../agents/{agent}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{OpenAiJson, OpenAiPath};
use super::{AdminCaller, AppState};
use crate::governor::{GovernorSnapshot, KillScope};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/governor", get(snapshot))
        .route(
            "/admin/governor/kill/global",
            axum::routing::put(engage_global).delete(clear_global),
        )
        .route(
            "/admin/governor/kill/tenants/{tenant}",
            axum::routing::put(engage_tenant).delete(clear_tenant),
        )
        .route(
            "/admin/governor/kill/agents/{agent}",
            axum::routing::put(engage_agent).delete(clear_agent),
        )
}

async fn snapshot(State(state): State<AppState>, _admin: AdminCaller) -> Json<GovernorSnapshot> {
    Json(state.governor.snapshot())
}

/// Why the operator stops traffic; it is logged and shown to refused agents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KillRequest {
    reason: String,
}

async fn engage_global(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiJson(request): OpenAiJson<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    engage(&state, &admin, KillScope::Global, request).await
}

async fn engage_tenant(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiPath(tenant): OpenAiPath<String>,
    OpenAiJson(request): OpenAiJson<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    engage(&state, &admin, KillScope::Tenant(tenant), request).await
}

async fn engage_agent(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiPath(agent): OpenAiPath<String>,
    OpenAiJson(request): OpenAiJson<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    engage(&state, &admin, KillScope::Agent(agent), request).await
}

async fn clear_global(
    State(state): State<AppState>,
    admin: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    clear(&state, &admin, KillScope::Global).await
}

async fn clear_tenant(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiPath(tenant): OpenAiPath<String>,
) -> Result<Json<Value>, ApiError> {
    clear(&state, &admin, KillScope::Tenant(tenant)).await
}

async fn clear_agent(
    State(state): State<AppState>,
    admin: AdminCaller,
    OpenAiPath(agent): OpenAiPath<String>,
) -> Result<Json<Value>, ApiError> {
    clear(&state, &admin, KillScope::Agent(agent)).await
}

async fn engage(
    state: &AppState,
    admin: &AdminCaller,
    scope: KillScope,
    request: KillRequest,
) -> Result<Json<Value>, ApiError> {
    let refused = state
        .operations
        .engage_kill_switch(&admin.operator, &scope, &request.reason)
        .await?;
    Ok(Json(json!({
        "kill_switch": scope,
        "engaged": true,
        "reason": request.reason.trim(),
        "queued_refused": refused,
    })))
}

async fn clear(
    state: &AppState,
    admin: &AdminCaller,
    scope: KillScope,
) -> Result<Json<Value>, ApiError> {
    let was_engaged = state
        .operations
        .clear_kill_switch(&admin.operator, &scope)
        .await?;
    Ok(Json(json!({
        "kill_switch": scope,
        "engaged": false,
        "was_engaged": was_engaged,
    })))
}
