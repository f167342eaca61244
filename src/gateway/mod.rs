//! The path of one request through warden, independent of HTTP: pick the backend for
//! the model asked for, start the generation, and turn what it produces into the
//! events a client receives, ending with warden's report of how it was served.

mod report;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};

use crate::auth::Principal;
use crate::backend::{Backend, BackendStatus};
use crate::chat::{ChatRequest, Collected, GenerationSummary, StreamEvent};
use crate::cost::PriceTable;
use crate::error::GatewayError;
use crate::policy::{PolicyEngine, Screen, Screened};

pub use report::{ReportTimings, WardenReport};

/// The model name that lets warden choose where a request runs.
pub const AUTO_MODEL: &str = "auto";

pub struct Gateway {
    local: Arc<dyn Backend>,
    prices: Arc<PriceTable>,
    policy: Arc<PolicyEngine>,
}

/// One request as it travels: who sent it, when, under which id, and what the client
/// said about it beyond the chat itself.
pub struct RequestContext {
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub metadata: RequestMetadata,
    pub received: Instant,
}

/// What a client attaches to a request for warden's sake (headers or `metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMetadata {
    /// The priority class asked for (`P0`, `P1`, `P2`), as written.
    pub priority: Option<String>,
    /// The agent run this request is a step of.
    pub run_id: Option<String>,
    /// Every other entry: labels that policies and routing match on (`env: prod`).
    pub labels: BTreeMap<String, String>,
}

impl RequestContext {
    pub fn new(principal: Arc<Principal>, metadata: RequestMetadata) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            principal,
            metadata,
            received: Instant::now(),
        }
    }
}

/// What the client receives: content deltas, then the completed response.
pub type ResponseEvent = StreamEvent<Completed>;

/// The end of a response: how the generation finished and warden's account of it.
#[derive(Debug, Clone)]
pub struct Completed {
    pub summary: GenerationSummary,
    pub report: WardenReport,
}

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<ResponseEvent, GatewayError>> + Send>>;

/// A response under way.
pub struct Started {
    /// The model that answers, as the response names it.
    pub model: String,
    pub events: ResponseStream,
}

/// A whole, non-streamed response.
pub type Response = Collected<Completed>;

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
    pub fn new(
        local: Arc<dyn Backend>,
        prices: Arc<PriceTable>,
        policy: Arc<PolicyEngine>,
    ) -> Self {
        Self {
            local,
            prices,
            policy,
        }
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

    pub async fn start(
        &self,
        context: RequestContext,
        request: ChatRequest,
    ) -> Result<Started, GatewayError> {
        let backend = self.backend_for(&request.model)?;
        let model = backend
            .models()
            .into_iter()
            .next()
            .unwrap_or_else(|| request.model.clone());
        let prices = self.prices.clone();
        // Policy fixed now (risk assessed on the request as sent); every event of the
        // generation passes it before the client sees it.
        let screen = Screen::new(self.policy.clone(), &request, &context);
        let events = screen
            .apply(backend.generate(request).await?)
            .map(move |event| match event {
                Ok(StreamEvent::Content { text, logprobs }) => {
                    Ok(StreamEvent::Content { text, logprobs })
                }
                Ok(StreamEvent::Finished(screened)) => {
                    let Screened { summary, policy } = *screened;
                    let cost = prices.cost(&summary.model, summary.usage);
                    let mut report = WardenReport::new(&context, &summary, cost);
                    report.policy = Some(policy);
                    Ok(StreamEvent::Finished(Box::new(Completed {
                        summary,
                        report,
                    })))
                }
                Err(error) => Err(error),
            });
        Ok(Started {
            model,
            events: Box::pin(events),
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

/// Drains a response stream into a whole response.
pub async fn collect(events: ResponseStream) -> Result<Response, GatewayError> {
    crate::chat::collect(events, || {
        GatewayError::Internal("the response ended without completing".into())
    })
    .await
}
