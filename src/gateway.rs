//! The path of one request through warden, independent of HTTP: pick the backend for
//! the model asked for, start the generation, and report how it was served.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::auth::Principal;
use crate::backend::{Backend, BackendStatus, EventStream};
use crate::chat::{ChatRequest, Confidence, GenerationSummary};
use crate::error::GatewayError;

/// The model name that lets warden choose where a request runs.
pub const AUTO_MODEL: &str = "auto";

pub struct Gateway {
    local: Arc<dyn Backend>,
}

/// One request as it travels: who sent it, when, and under which id.
pub struct RequestContext {
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub received: Instant,
}

impl RequestContext {
    pub fn new(principal: Arc<Principal>) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            principal,
            received: Instant::now(),
        }
    }
}

/// A generation under way.
pub struct Started {
    pub backend: String,
    pub model: String,
    pub events: EventStream,
}

/// warden's account of how a request was served: the `warden` object of a response.
#[derive(Debug, Clone, Serialize)]
pub struct WardenReport {
    pub request_id: String,
    pub agent: String,
    pub tenant: String,
    pub route: &'static str,
    pub backend: String,
    pub model: String,
    pub confidence: Option<Confidence>,
    pub malformed_tool_call: bool,
    pub timings: ReportTimings,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportTimings {
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub first_token_ms: f64,
    pub total_ms: f64,
}

/// One entry of the model list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub local: BackendStatus,
}

impl Gateway {
    pub fn new(local: Arc<dyn Backend>) -> Self {
        Self { local }
    }

    pub fn models(&self) -> Vec<ModelEntry> {
        std::iter::once(AUTO_MODEL.to_string())
            .chain(self.local.models())
            .map(|id| ModelEntry {
                id,
                owned_by: "warden".into(),
            })
            .collect()
    }

    pub fn readiness(&self) -> Readiness {
        let local = self.local.status();
        Readiness {
            ready: local == BackendStatus::Ready,
            local,
        }
    }

    pub async fn start(&self, request: ChatRequest) -> Result<Started, GatewayError> {
        let backend = self.backend_for(&request.model)?;
        let model = backend
            .models()
            .into_iter()
            .next()
            .unwrap_or_else(|| request.model.clone());
        let events = backend.generate(request).await?;
        Ok(Started {
            backend: backend.name().to_string(),
            model,
            events,
        })
    }

    fn backend_for(&self, model: &str) -> Result<&Arc<dyn Backend>, GatewayError> {
        if model == AUTO_MODEL || self.local.models().iter().any(|m| m == model) {
            Ok(&self.local)
        } else {
            Err(GatewayError::ModelNotFound(model.to_string()))
        }
    }
}

impl WardenReport {
    pub fn new(context: &RequestContext, summary: &GenerationSummary) -> Self {
        Self {
            request_id: context.request_id.clone(),
            agent: context.principal.agent_id.clone(),
            tenant: context.principal.tenant.clone(),
            route: "local",
            backend: summary.backend.clone(),
            model: summary.model.clone(),
            confidence: summary.confidence,
            malformed_tool_call: summary.malformed_tool_call,
            timings: ReportTimings {
                queue_ms: summary.timings.queue_ms,
                prefill_ms: summary.timings.prefill_ms,
                decode_ms: summary.timings.decode_ms,
                first_token_ms: summary.timings.first_token_ms,
                total_ms: context.received.elapsed().as_secs_f64() * 1000.0,
            },
        }
    }
}
