//! Approval tickets over HTTP. Agents poll their own tickets at
//! `GET /v1/approvals/{id}` (another agent's ticket does not exist for them) and get
//! the exact approved call once a human approved it; operators list, approve and
//! reject under `/admin/approvals`, naming themselves. Also the policy's admin
//! endpoints: `GET /admin/policy` and `POST /admin/policy/reload`.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::AdminCaller;
use super::error::ApiError;
use super::extract::{Caller, OpenAiJson, OpenAiPath, OpenAiQuery};
use super::AppState;
use crate::error::GatewayError;
use crate::policy::{ApprovalError, Held, Ticket, TicketFilter, TicketStatus};

const MAX_APPROVER_LEN: usize = 128;
const MAX_COMMENT_LEN: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/approvals/{id}", get(agent_ticket))
        .route("/admin/approvals", get(list))
        .route("/admin/approvals/{id}", get(admin_ticket))
        .route("/admin/approvals/{id}/approve", post(approve))
        .route("/admin/approvals/{id}/reject", post(reject))
        .route("/admin/policy", get(policy_status))
        .route("/admin/policy/reload", post(reload))
}

/// A ticket as JSON. The held call or content is shown to the agent only once it is
/// approved; operators always see it.
fn view(ticket: &Ticket, operator: bool) -> Value {
    let status = ticket.status_at(Utc::now());
    let released = operator || matches!(status, TicketStatus::Approved | TicketStatus::Redeemed);
    let mut body = json!({
        "id": ticket.id,
        "object": "approval",
        "status": status,
        "agent": ticket.agent,
        "tenant": ticket.tenant,
        "request_id": ticket.request_id,
        "run_id": ticket.run_id,
        "snapshot": ticket.snapshot,
        "rule": ticket.rule,
        "reason": ticket.reason,
        "created_at": ticket.created_at,
        "expires_at": ticket.expires_at,
        "review": ticket.review,
    });
    match &ticket.held {
        Held::ToolCall { call, call_hash } => {
            body["kind"] = json!("tool_call");
            body["call_hash"] = json!(call_hash);
            if released {
                body["tool_call"] = json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                });
            }
        }
        Held::Output { content, findings } => {
            body["kind"] = json!("output");
            body["findings"] = json!(findings);
            if released {
                body["content"] = json!(content);
            }
        }
    }
    if operator {
        body["redeemed_by"] = json!(ticket.redeemed_by);
    }
    body
}

fn not_found(id: &str) -> ApiError {
    GatewayError::Approval(ApprovalError::NotFound(id.to_string())).into()
}

async fn agent_ticket(
    State(state): State<AppState>,
    Caller(principal): Caller,
    OpenAiPath(id): OpenAiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let ticket = state
        .policy
        .approvals()
        .get(&id)
        .filter(|ticket| ticket.agent == principal.agent_id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&ticket, false)))
}

async fn admin_ticket(
    State(state): State<AppState>,
    _admin: AdminCaller,
    OpenAiPath(id): OpenAiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let ticket = state
        .policy
        .approvals()
        .get(&id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&ticket, true)))
}

async fn list(
    State(state): State<AppState>,
    _admin: AdminCaller,
    OpenAiQuery(query): OpenAiQuery<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut filter = TicketFilter::default();
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                filter.status = Some(serde_json::from_value(json!(value)).map_err(|_| {
                    GatewayError::invalid(
                        "status",
                        format!(
                            "`{value}` is not pending, approved, rejected, expired or redeemed"
                        ),
                    )
                })?)
            }
            "agent" => filter.agent = Some(value),
            other => {
                return Err(GatewayError::invalid(
                    other,
                    format!("unknown filter `{other}`; use status or agent"),
                )
                .into())
            }
        }
    }
    let tickets = state.policy.approvals().list(&filter, Utc::now());
    Ok(Json(json!({
        "object": "list",
        "data": tickets.iter().map(|t| view(t, true)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    /// Who decides: recorded on the ticket and in the audit trail.
    approver: String,
    #[serde(default)]
    comment: String,
}

async fn approve(
    state: State<AppState>,
    admin: AdminCaller,
    id: OpenAiPath<String>,
    body: OpenAiJson<ReviewBody>,
) -> Result<Json<Value>, ApiError> {
    decide(state, admin, id, body, true).await
}

async fn reject(
    state: State<AppState>,
    admin: AdminCaller,
    id: OpenAiPath<String>,
    body: OpenAiJson<ReviewBody>,
) -> Result<Json<Value>, ApiError> {
    decide(state, admin, id, body, false).await
}

async fn decide(
    State(state): State<AppState>,
    _admin: AdminCaller,
    OpenAiPath(id): OpenAiPath<String>,
    OpenAiJson(body): OpenAiJson<ReviewBody>,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let approver = body.approver.trim().to_string();
    if approver.is_empty() || approver.len() > MAX_APPROVER_LEN {
        return Err(GatewayError::invalid(
            "approver",
            format!("name the approver (1 to {MAX_APPROVER_LEN} characters)"),
        )
        .into());
    }
    if body.comment.len() > MAX_COMMENT_LEN {
        return Err(
            GatewayError::invalid("comment", format!("at most {MAX_COMMENT_LEN} bytes")).into(),
        );
    }
    let ticket = state
        .operations
        .decide_approval(id, approve, approver, body.comment)
        .await?;
    Ok(Json(view(&ticket, true)))
}

async fn policy_status(State(state): State<AppState>, _admin: AdminCaller) -> Json<Value> {
    let policy = state.policy.current();
    Json(json!({
        "file": state.policy.file(),
        "snapshot": policy.snapshot(),
        "rules": policy.rules().len(),
        "tools": policy.catalog().count(),
        "approvals_file": state.policy.approvals().path(),
    }))
}

async fn reload(
    State(state): State<AppState>,
    admin: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    let reloaded = state.operations.reload_policy(&admin.operator).await?;
    Ok(Json(json!({
        "previous": reloaded.previous,
        "snapshot": reloaded.snapshot,
        "changed": reloaded.previous != reloaded.snapshot,
    })))
}
