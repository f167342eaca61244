//! HTTP: the OpenAI-compatible endpoints, health probes and error mapping. The only
//! module that knows about axum.

mod chat;
pub mod error;
mod extract;
mod health;
pub mod openai;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::auth::KeyStore;
use crate::gateway::Gateway;
use error::ApiError;
use extract::BodyLimit;

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub keys: Arc<KeyStore>,
}

/// The whole HTTP surface; `max_body_bytes` bounds every request body.
pub fn build_app(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(health::models))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(BodyLimit(max_body_bytes)))
        .with_state(state)
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
