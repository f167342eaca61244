//! The path of one request through warden, independent of HTTP: pick the backend for
//! the model asked for, start the generation, and turn what it produces into the
//! events a client receives, ending with warden's report of how it was served.

mod report;
mod trail;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};

use crate::audit::{AuditLog, Receipt};
use crate::auth::Principal;
use crate::backend::{Backend, BackendStatus};
use crate::chat::{ChatRequest, Collected, GenerationSummary, StreamEvent};
use crate::cost::outcome::Outcome;
use crate::cost::PriceTable;
use crate::error::GatewayError;
use crate::runs::RunTracker;

pub use report::{ReportTimings, WardenReport};
pub use trail::Bookkeeper;

/// The model name that lets warden choose where a request runs.
pub const AUTO_MODEL: &str = "auto";

pub struct Gateway {
    local: Arc<dyn Backend>,
    prices: Arc<PriceTable>,
    books: Arc<Bookkeeper>,
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
    pub fn new(local: Arc<dyn Backend>, prices: Arc<PriceTable>, books: Bookkeeper) -> Self {
        Self {
            local,
            prices,
            books: Arc::new(books),
        }
    }

    pub fn audit(&self) -> &AuditLog {
        self.books.audit()
    }

    pub fn runs(&self) -> &RunTracker {
        self.books.runs()
    }

    /// Attaches a business outcome to a run; returns once it is recorded.
    pub async fn record_outcome(&self, outcome: &Outcome) -> Result<Receipt, GatewayError> {
        self.books.record_outcome(outcome).await
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

    /// Starts answering a request. Whatever becomes of it is recorded in the audit log,
    /// and a completion is released only once its record is durable.
    pub async fn start(
        &self,
        context: RequestContext,
        request: ChatRequest,
    ) -> Result<Started, GatewayError> {
        let mut trail = self.books.open(&context, &request);
        if let Err(error) = trail.admit() {
            return Err(trail.refuse(error).await);
        }
        match self.generate(context, request).await {
            Ok(started) => Ok(trail.follow(started)),
            Err(error) => Err(trail.refuse(error).await),
        }
    }

    async fn generate(
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
        let events = backend
            .generate(request)
            .await?
            .map(move |event| match event {
                Ok(StreamEvent::Content { text, logprobs }) => {
                    Ok(StreamEvent::Content { text, logprobs })
                }
                Ok(StreamEvent::Finished(summary)) => {
                    let bill = prices.bill(&[&*summary]);
                    let report = WardenReport::new(&context, &summary, bill);
                    Ok(StreamEvent::Finished(Box::new(Completed {
                        summary: *summary,
                        report,
                    })))
                }
                Err(error) => Err(GatewayError::from(error)),
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
