//! The local backend: warden's own llama forward pass (`llama`; candle's on an
//! accelerator, see `network`) behind a continuous batching scheduler. Up to `slots`
//! requests decode together in one forward pass per token, each with its own position
//! and its own blocks of a key/value cache whose size the operator budgets; further
//! requests wait, in the order the gateway gives them (the governor's), for at most the
//! queue timeout.

mod constraint;
mod embedding;
pub mod engine;
mod engine_metrics;
mod generation;
pub mod network;
pub use warden_llama as llama;
mod output;
mod sampler;
pub mod scheduler;
pub mod template;
mod token_text;
pub mod tokenizer;
mod tool_parse;

use std::collections::VecDeque;
use std::sync::{mpsc as std_mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

pub use constraint::GrammarError;
pub use embedding::Pooling;
pub use engine::{Engine, EngineOptions};
pub use scheduler::Capacity;

use super::{Backend, BackendError, BackendStatus, Embedded, EventStream};
use crate::chat::{ChatRequest, EmbeddingInput};
use engine_metrics::EngineMetrics;
use llama::kv_cache::KvCache;
use network::Network;
use scheduler::{Occupancy, Scheduler, Submission, Task};

pub const BACKEND_NAME: &str = "local";

/// Events buffered between the engine thread and the client; a sequence whose reader
/// falls this far behind sits out of the batch until it catches up.
const EVENT_BUFFER: usize = 32;

/// The key/value cache budget when none is configured.
pub const DEFAULT_KV_CACHE_BYTES: usize = 1024 * 1024 * 1024;
/// How long a generation may run when no deadline is configured.
pub const DEFAULT_MAX_GENERATION: Duration = Duration::from_secs(120);

/// Where the local engine runs (`local.device`): the CPU, or an accelerator by ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (kind, ordinal) = match spec.split_once(':') {
            Some((kind, ordinal)) => (
                kind,
                ordinal
                    .parse::<usize>()
                    .map_err(|_| format!("device ordinal `{ordinal}` is not a number"))?,
            ),
            None => (spec, 0),
        };
        match kind {
            "cpu" if !spec.contains(':') => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(ordinal)),
            "metal" => Ok(DeviceSpec::Metal(ordinal)),
            _ => Err(format!(
                "unknown device `{spec}`: expected cpu, cuda, cuda:N, metal or metal:N"
            )),
        }
    }
}

pub fn device(spec: DeviceSpec) -> Result<candle_core::Device, BackendError> {
    let device = match spec {
        DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
        DeviceSpec::Cuda(ordinal) => candle_core::Device::new_cuda(ordinal),
        DeviceSpec::Metal(ordinal) => candle_core::Device::new_metal(ordinal),
    };
    device.map_err(|e| BackendError::Unavailable(format!("device {spec:?}: {e}")))
}

enum LoadState {
    Loading,
    Ready(Arc<Ready>),
    Failed(String),
}

struct Ready {
    engine: Arc<Engine>,
    /// The engine thread's queue.
    submissions: std_mpsc::Sender<Submission>,
    /// Longest sequence (prompt and answer) the cache can hold at all.
    cache_tokens: usize,
}

pub struct LocalBackend {
    model_name: String,
    slot_count: usize,
    queue_timeout: Duration,
    kv_cache_bytes: usize,
    max_generation: Duration,
    /// How the model's states become embeddings; `None` when it serves none.
    embedding_pooling: Option<Pooling>,
    state: RwLock<LoadState>,
    /// What the engine thread publishes; shared from the start, so the metrics that
    /// read it can be registered before the model is loaded.
    occupancy: Arc<Occupancy>,
}

impl LocalBackend {
    /// A backend whose engine is still being fetched or loaded; it answers `Loading`
    /// until `set_ready` or `set_failed` is called.
    pub fn loading(
        model_name: impl Into<String>,
        slot_count: usize,
        queue_timeout: Duration,
    ) -> Self {
        Self {
            model_name: model_name.into(),
            slot_count,
            queue_timeout,
            kv_cache_bytes: DEFAULT_KV_CACHE_BYTES,
            max_generation: DEFAULT_MAX_GENERATION,
            embedding_pooling: None,
            state: RwLock::new(LoadState::Loading),
            occupancy: Arc::default(),
        }
    }

    /// Sets the key/value cache budget (before `set_ready`).
    pub fn with_kv_cache_bytes(mut self, bytes: usize) -> Self {
        self.kv_cache_bytes = bytes;
        self
    }

    /// Sets how long a generation may run from joining the batch, prompt and answer
    /// (`local.max_generation_ms`).
    pub fn with_max_generation(mut self, limit: Duration) -> Self {
        self.max_generation = limit;
        self
    }

    /// Serves the model as an embedding model too, pooling its states this way
    /// (`local.embedding_pooling`).
    pub fn with_embedding_pooling(mut self, pooling: Option<Pooling>) -> Self {
        self.embedding_pooling = pooling;
        self
    }

    /// Allocates the key/value cache and starts the engine thread.
    pub fn set_ready(&self, engine: Arc<Engine>) {
        let cache = KvCache::with_budget(engine.network().config(), self.kv_cache_bytes);
        let cache_tokens = cache.capacity_tokens();
        if cache_tokens < engine.context_length() {
            tracing::warn!(
                cache_tokens,
                context = engine.context_length(),
                "the key/value cache budget holds less than one full context"
            );
        }
        let (submissions, receiver) = std_mpsc::channel();
        let scheduler = Scheduler::new(
            engine.clone(),
            cache,
            self.slot_count,
            self.occupancy.clone(),
        );
        let started = std::thread::Builder::new()
            .name("warden-engine".into())
            .spawn(move || scheduler.run(receiver));
        match started {
            Ok(_) => self.set_state(LoadState::Ready(Arc::new(Ready {
                engine,
                submissions,
                cache_tokens,
            }))),
            Err(error) => self.set_failed(format!("starting the engine thread: {error}")),
        }
    }

    pub fn set_failed(&self, reason: String) {
        self.set_state(LoadState::Failed(reason));
    }

    fn set_state(&self, state: LoadState) {
        match self.state.write() {
            Ok(mut guard) => *guard = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    fn ready(&self) -> Result<Arc<Ready>, BackendError> {
        let guard = match self.state.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*guard {
            LoadState::Ready(ready) => Ok(ready.clone()),
            LoadState::Loading => Err(BackendError::Loading),
            LoadState::Failed(reason) => Err(BackendError::Unavailable(reason.clone())),
        }
    }

    /// Sequences in the batch right now.
    pub fn busy_slots(&self) -> usize {
        self.occupancy.running()
    }

    pub fn slot_count(&self) -> usize {
        self.slot_count
    }

    /// The engine's load and free room, for admission decisions made upstream (the
    /// governor); `None` until the model is ready.
    pub fn capacity(&self) -> Option<Capacity> {
        self.ready().ok().map(|ready| Capacity {
            max_sequences: self.slot_count,
            running: self.occupancy.running(),
            waiting: self.occupancy.waiting(),
            cache_tokens: ready.cache_tokens,
            free_cache_tokens: self.occupancy.free_tokens(),
        })
    }

    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.ready().ok().map(|ready| ready.engine.clone())
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    fn models(&self) -> Vec<String> {
        vec![self.model_name.clone()]
    }

    fn collector(&self) -> Option<Box<dyn prometheus::core::Collector>> {
        match EngineMetrics::new(self.occupancy.clone(), self.slot_count) {
            Ok(metrics) => Some(Box::new(metrics)),
            Err(error) => {
                tracing::error!(%error, "the local engine's metrics could not be made");
                None
            }
        }
    }

    fn status(&self) -> BackendStatus {
        match self.ready() {
            Ok(_) => BackendStatus::Ready,
            Err(BackendError::Loading) => BackendStatus::Loading,
            Err(error) => BackendStatus::Failed(error.to_string()),
        }
    }

    async fn generate(
        &self,
        request: ChatRequest,
        ranks_at: Instant,
    ) -> Result<EventStream, BackendError> {
        let arrived = Instant::now();
        let ready = self.ready()?;
        let (engine, cache_tokens) = (ready.engine.clone(), ready.cache_tokens);
        let (request, prompt) = off_the_workers(move || {
            let prompt = engine.prepare(&request, cache_tokens);
            (request, prompt)
        })
        .await?;
        let prompt = prompt?;
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let task = Task::Generate {
            request: Box::new(request),
            prompt: Box::new(prompt),
            events,
        };
        let admission = self.submit(&ready, task, arrived, ranks_at)?;
        self.admission(admission).await?;
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    fn serves_embeddings(&self) -> bool {
        self.embedding_pooling.is_some()
    }

    /// Each input is a sequence of its own in the batch, beside the generations: its
    /// states are read and pooled, no token is sampled. The inputs join the batch in
    /// order as places free up, each within the queue timeout.
    async fn embed(
        &self,
        inputs: &[EmbeddingInput],
        dimensions: Option<u32>,
        ranks_at: Instant,
    ) -> Result<Embedded, BackendError> {
        let arrived = Instant::now();
        let pooling = self.embedding_pooling.ok_or_else(|| {
            BackendError::Unavailable(format!(
                "{} serves no embeddings (`local.embedding_pooling` is not set)",
                self.model_name
            ))
        })?;
        let ready = self.ready()?;
        if !matches!(ready.engine.network(), Network::Own(_)) {
            return Err(BackendError::Unavailable(
                "embeddings need warden's own forward pass, which runs on the CPU".into(),
            ));
        }
        // The model's states have one size: cutting them short (as OpenAI's models
        // trained for it allow) would make vectors this model was never taught.
        let width = ready.engine.network().config().hidden;
        if dimensions.is_some_and(|asked| asked as usize != width) {
            return Err(BackendError::InvalidInput {
                field: "dimensions".into(),
                message: format!(
                    "{}'s embeddings have {width} dimensions; leave `dimensions` out or set it to {width}",
                    self.model_name
                ),
            });
        }
        let (engine, cache_tokens) = (ready.engine.clone(), ready.cache_tokens);
        let inputs = inputs.to_vec();
        let texts =
            off_the_workers(move || engine.embedding_tokens(&inputs, cache_tokens)).await??;
        let prompt_tokens = texts.iter().map(Vec::len).sum::<usize>();
        // At most half the batch places at a time: a request of many inputs shares the
        // engine with the generations queued behind it instead of holding every place
        // until its last input is read.
        let window = (self.slot_count / 2).max(1);
        let mut texts = texts.into_iter();
        let mut in_flight = VecDeque::with_capacity(window);
        let mut vectors = Vec::with_capacity(texts.len());
        let mut queue_ms = None;
        loop {
            while in_flight.len() < window {
                let Some(tokens) = texts.next() else { break };
                let (vector, receiver) = oneshot::channel();
                let task = Task::Embed {
                    tokens,
                    pooling,
                    vector,
                };
                let admission = self.submit(&ready, task, arrived, ranks_at)?;
                in_flight.push_back((admission, receiver));
            }
            // Returning early drops those in flight: the engine skips the ones not yet
            // in the batch and drops the others.
            let Some((admission, receiver)) = in_flight.pop_front() else {
                break;
            };
            self.admission(admission).await?;
            queue_ms.get_or_insert_with(|| arrived.elapsed().as_secs_f64() * 1000.0);
            vectors.push(receiver.await.map_err(|_| engine_stopped())??);
        }
        Ok(Embedded {
            vectors,
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            queue_ms: queue_ms.unwrap_or_default(),
            latency_ms: arrived.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

impl LocalBackend {
    /// Hands `task` to the engine thread; the answer says when it joins the batch.
    fn submit(
        &self,
        ready: &Ready,
        task: Task,
        arrived: Instant,
        ranks_at: Instant,
    ) -> Result<oneshot::Receiver<Result<(), BackendError>>, BackendError> {
        let (admitted, admission) = oneshot::channel();
        let submission = Submission {
            task,
            arrived,
            ranks_at,
            max_generation: self.max_generation,
            admitted,
        };
        ready
            .submissions
            .send(submission)
            .map_err(|_| engine_stopped())?;
        Ok(admission)
    }

    /// Waits for a submission to join the batch, for at most the queue timeout;
    /// dropping `admission` on timeout withdraws it: the engine skips it.
    async fn admission(
        &self,
        admission: oneshot::Receiver<Result<(), BackendError>>,
    ) -> Result<(), BackendError> {
        match tokio::time::timeout(self.queue_timeout, admission).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(engine_stopped()),
            Err(_elapsed) => Err(BackendError::Saturated {
                slots: self.slot_count,
                waited: self.queue_timeout,
            }),
        }
    }
}

fn engine_stopped() -> BackendError {
    BackendError::Unavailable("the engine thread stopped".into())
}

/// Runs `work` (tokenising, compiling a grammar) on a blocking thread: long enough to
/// stall the async workers (every other request, the probes) otherwise. How many run
/// at once is bounded upstream: the governor admits at most `slots` to this engine.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        // A panic there (there should be none) goes on up, to be caught, answered and
        // recorded as one by the gateway.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(BackendError::Generation(format!(
            "preparing the request: {error}"
        ))),
    }
}

/// Sets the engine's CPU thread count. candle's worker pool, which the engine's
/// kernels run on, reads it once when it first starts, so this must run before any
/// model is loaded (and before other threads exist). An explicit `CANDLE_NUM_THREADS`
/// in the environment wins.
pub fn use_threads(threads: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
}
