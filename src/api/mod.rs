//! HTTP: the OpenAI-compatible endpoints, health probes and error mapping. The only
//! module that knows about axum.

mod admin;
mod approvals;
mod audit;
mod chat;
pub mod error;
mod extract;
mod governor;
mod health;
pub mod openai;
mod outcomes;
mod routing;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};

pub use admin::AdminCaller;

use crate::auth::KeyStore;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::governor::Governor;
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use error::ApiError;
use extract::BodyLimit;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub gateway: Arc<Gateway>,
    pub governor: Governor,
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<PolicyEngine>,
    pub started: Instant,
}

/// The whole HTTP surface; `max_body_bytes` bounds every request body.
pub fn build_app(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(health::models))
        .route("/v1/outcomes", post(outcomes::record_outcome))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(admin::routes())
        .merge(audit::routes())
        .merge(governor::routes())
        .merge(approvals::routes())
        .merge(routing::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(BodyLimit(max_body_bytes)))
        .with_state(state)
}

/// Counts every request by its route pattern (never the raw path: unbounded labels)
/// and status.
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[endpoint.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .http_latency
        .with_label_values(&[endpoint.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
