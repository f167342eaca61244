//! The operator's reading of the audit log, under the admin key: `GET /admin/audit`
//! (records by run, agent, kind and time) and `GET /admin/reports/cost` (JSON or CSV).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::OpenAiQuery;
use super::{AdminCaller, AppState};
use crate::audit::query::{self, Filter};
use crate::audit::AuditError;
use crate::cost::report::{self, GroupBy, Window};
use crate::error::GatewayError;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/audit", get(audit))
        .route("/admin/reports/cost", get(cost_report))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    run_id: Option<String>,
    agent: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// Records matching every given field, oldest first.
async fn audit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    OpenAiQuery(query): OpenAiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = window(query.from.as_deref(), query.to.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(
            GatewayError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")).into(),
        );
    }
    let filter = Filter {
        run_id: query.run_id,
        agent: query.agent,
        kind: query.kind,
        from: window.from,
        to: window.to,
    };
    let dir = state.gateway.audit().dir().to_path_buf();
    let page = blocking(move || query::query(&dir, &filter, limit)).await?;
    Ok(Json(json!({
        "object": "list",
        "data": page.records,
        "has_more": page.truncated,
    })))
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    group_by: Option<GroupBy>,
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    format: Format,
}

async fn cost_report(
    State(state): State<AppState>,
    _admin: AdminCaller,
    OpenAiQuery(query): OpenAiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    let window = window(query.from.as_deref(), query.to.as_deref())?;
    let group_by = query.group_by.unwrap_or(GroupBy::Outcome);
    let dir = state.gateway.audit().dir().to_path_buf();
    let report = blocking(move || report::from_log(&dir, group_by, window)).await?;
    Ok(match query.format {
        Format::Json => Json(report).into_response(),
        Format::Csv => {
            let csv = report
                .to_csv()
                .map_err(|error| GatewayError::Internal(format!("writing CSV: {error}")))?;
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response()
        }
    })
}

fn window(from: Option<&str>, to: Option<&str>) -> Result<Window, GatewayError> {
    let time = |param: &str, text: Option<&str>| -> Result<Option<DateTime<Utc>>, GatewayError> {
        text.map(|text| {
            report::parse_time(text).map_err(|message| GatewayError::invalid(param, message))
        })
        .transpose()
    };
    let window = Window {
        from: time("from", from)?,
        to: time("to", to)?,
    };
    if let (Some(from), Some(to)) = (window.from, window.to) {
        if from >= to {
            return Err(GatewayError::invalid("to", "`to` must be after `from`"));
        }
    }
    Ok(window)
}

/// Reads the log off the async threads.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|error| GatewayError::Internal(format!("reading the audit log: {error}")))?
        .map_err(GatewayError::from)
}
