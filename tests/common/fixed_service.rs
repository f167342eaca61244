//! A backend whose every generation takes the same time, for the tests and benches
//! about the governor: there the model's speed would only add noise. It also records
//! the most generations it ever ran at once, so a test can check the governor's slots.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use warden::backend::{Backend, BackendError, BackendStatus, EventStream};
use warden::chat::{ChatRequest, FinishReason, GenerationEvent, GenerationSummary, Timings, Usage};

pub const FIXED_MODEL: &str = "fixed-service";

pub struct FixedServiceBackend {
    service_time: Duration,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
}

impl FixedServiceBackend {
    pub fn new(service_time: Duration) -> Self {
        Self {
            service_time,
            running: Arc::new(AtomicUsize::new(0)),
            most_running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The most generations that ever ran at the same time.
    pub fn most_running(&self) -> usize {
        self.most_running.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// Counts a generation as running until it ends or its stream is dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Backend for FixedServiceBackend {
    fn name(&self) -> &str {
        "fixed"
    }

    fn models(&self) -> Vec<String> {
        vec![FIXED_MODEL.into()]
    }

    fn status(&self) -> BackendStatus {
        BackendStatus::Ready
    }

    async fn generate(
        &self,
        _request: ChatRequest,
        _ranks_at: Instant,
    ) -> Result<EventStream, BackendError> {
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now_running, Ordering::SeqCst);
        let running = Running(self.running.clone());
        let service_time = self.service_time;
        let generation = stream::once(async move {
            tokio::time::sleep(service_time).await;
            drop(running);
            stream::iter([
                Ok(GenerationEvent::Content {
                    text: "done".into(),
                    logprobs: Vec::new(),
                }),
                Ok(GenerationEvent::Finished(Box::new(GenerationSummary {
                    backend: "fixed".into(),
                    model: FIXED_MODEL.into(),
                    finish_reason: FinishReason::Stop,
                    tool_calls: Vec::new(),
                    malformed_tool_calls: Vec::new(),
                    usage: Usage {
                        prompt_tokens: 20,
                        completion_tokens: 1,
                        cached_prompt_tokens: 0,
                    },
                    confidence: None,
                    timings: Timings::default(),
                }))),
            ])
        })
        .flatten();
        Ok(Box::pin(generation))
    }
}
