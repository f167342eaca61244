//! HTTP: the OpenAI-compatible endpoints, health probes and error mapping. The only
//! module that knows about axum.

mod admin;
mod approvals;
mod audit;
mod chat;
mod completions;
mod cpu;
mod embeddings;
pub mod error;
mod extract;
mod generate;
mod governor;
mod health;
pub mod openai;
mod outcomes;
mod responses;
mod routing;
pub mod serve;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::FutureExt;

pub use admin::AdminCaller;
pub use cpu::CpuPool;
pub use responses::ResponseStore;

use crate::auth::KeyStore;
use crate::config::Config;
use crate::error::panic_message;
use crate::gateway::operator::Operations;
use crate::gateway::Gateway;
use crate::governor::Governor;
use crate::metrics::{Metrics, PANIC_IN_HANDLER};
use crate::policy::PolicyEngine;
use error::ApiError;
use extract::BodyLimits;
use serve::ConnectionLimits;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub gateway: Arc<Gateway>,
    pub governor: Governor,
    /// What operators do, through the admin API as through SIGHUP.
    pub operations: Operations,
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<PolicyEngine>,
    /// Responses-API responses kept for `GET` and `previous_response_id`.
    pub responses: Arc<ResponseStore>,
    /// Where CPU-heavy request work runs.
    pub cpu: CpuPool,
    pub started: Instant,
}

/// The whole HTTP surface, within the configured body limits (`server.*`). `/metrics`
/// is here unless it has a listener of its own.
pub fn build_app(state: AppState) -> Router {
    let server = &state.config.server;
    let limits = BodyLimits {
        max_bytes: server.max_body_bytes,
        read_timeout: server.body_read_timeout,
    };
    let mut router = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::show).delete(responses::delete),
        )
        .route("/v1/models", get(health::models))
        .route("/v1/models/{*id}", get(health::model))
        .route("/v1/outcomes", post(outcomes::record_outcome))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if server.metrics_listen.is_none() {
        router = router.route("/metrics", get(health::metrics));
    }
    router
        .merge(admin::routes())
        .merge(audit::routes())
        .merge(governor::routes())
        .merge(approvals::routes())
        .merge(routing::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard_edge))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(limits.max_bytes))
        .layer(Extension(limits))
        .with_state(state)
}

/// Serves the API on `listener` with the configured connection limits, and `/metrics`
/// on its own listener when one is configured, until `shutdown` resolves.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = ConnectionLimits::of(&state.config.server).within_descriptors();
    let metrics = state.metrics.connections.clone();
    if let Some(address) = state.config.server.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let app = Router::new()
            .route("/metrics", get(health::metrics))
            .fallback(not_found)
            .with_state(state.clone());
        let metrics = metrics.clone();
        tokio::spawn(serve::serve(
            listener,
            app,
            limits,
            metrics,
            std::future::pending(),
        ));
    }
    serve::serve(listener, build_app(state), limits, metrics, shutdown).await;
    Ok(())
}

/// What every request meets first: a body whose `Content-Length` is over the limit is
/// refused (413) before a byte of it is read; and a panic while handling the request
/// (there should be none) answers 500 in OpenAI's shape instead of dropping the
/// connection, and is counted. A panic while a response streams is the gateway's to
/// catch: it also records it. One layer for both: each layer costs every request.
async fn guard_edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.server.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit as u64) {
        return ApiError::PayloadTooLarge { limit }.into_response();
    }
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            state.metrics.requests.count_panic(PANIC_IN_HANDLER);
            ApiError::Panicked(panic_message(panic.as_ref())).into_response()
        }
    }
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
