//! The local backend: the candle engine behind a fixed number of slots. Each slot is a
//! clone of the model that shares its weights and owns a KV cache, so several requests
//! generate at once without touching each other's state.

pub mod engine;
mod output;
mod sampler;
pub mod template;
mod token_text;
pub mod tokenizer;
mod tool_parse;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

pub use engine::{Engine, EngineOptions};

use super::{Backend, BackendError, BackendStatus, EventStream};
use crate::chat::ChatRequest;
use crate::config::DeviceSpec;

pub const BACKEND_NAME: &str = "local";

/// Events buffered between the engine thread and the client; a slow reader pauses the
/// engine instead of growing memory.
const EVENT_BUFFER: usize = 32;

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
    slots: Arc<SlotPool>,
}

pub struct LocalBackend {
    model_name: String,
    slot_count: usize,
    queue_timeout: Duration,
    state: RwLock<LoadState>,
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
            state: RwLock::new(LoadState::Loading),
        }
    }

    pub fn set_ready(&self, engine: Arc<Engine>) {
        let slots = Arc::new(SlotPool::new(&engine, self.slot_count));
        self.set_state(LoadState::Ready(Arc::new(Ready { engine, slots })));
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

    /// Slots generating right now.
    pub fn busy_slots(&self) -> usize {
        self.ready().map_or(0, |ready| {
            self.slot_count - ready.slots.permits.available_permits()
        })
    }

    pub fn slot_count(&self) -> usize {
        self.slot_count
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

    fn status(&self) -> BackendStatus {
        match self.ready() {
            Ok(_) => BackendStatus::Ready,
            Err(BackendError::Loading) => BackendStatus::Loading,
            Err(error) => BackendStatus::Failed(error.to_string()),
        }
    }

    async fn generate(&self, request: ChatRequest) -> Result<EventStream, BackendError> {
        let arrived = Instant::now();
        let ready = self.ready()?;
        let prompt = ready.engine.prepare(&request)?;
        let (mut weights, lease) = ready.slots.lease(self.queue_timeout).await?;
        let queue_ms = arrived.elapsed().as_secs_f64() * 1000.0;
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let engine = ready.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut emit = |event| sender.blocking_send(Ok(event)).is_ok();
            // A panic inside candle must end this request with an error, not leave the
            // client waiting on a stream that silently stops.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.generate(&mut weights, &request, prompt, arrived, queue_ms, &mut emit)
            }));
            let result = match result {
                Ok(result) => {
                    lease.give_back(weights);
                    result
                }
                // The slot's KV cache may be half-written: drop it, a fresh clone replaces it.
                Err(_) => Err(BackendError::Generation("the engine panicked".into())),
            };
            if let Err(error) = result {
                let _ = sender.blocking_send(Err(error));
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

/// Slots are model clones; a permit says one is free, the idle list holds them.
struct SlotPool {
    count: usize,
    permits: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<ModelWeights>>>,
    engine: Arc<Engine>,
}

impl SlotPool {
    fn new(engine: &Arc<Engine>, count: usize) -> Self {
        Self {
            count,
            permits: Arc::new(Semaphore::new(count)),
            idle: Arc::new(Mutex::new((0..count).map(|_| engine.new_slot()).collect())),
            engine: engine.clone(),
        }
    }

    async fn lease(&self, timeout: Duration) -> Result<(ModelWeights, SlotLease), BackendError> {
        let permit = match tokio::time::timeout(timeout, self.permits.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                return Err(BackendError::Unavailable("the engine shut down".into()))
            }
            Err(_elapsed) => {
                return Err(BackendError::Saturated {
                    slots: self.count,
                    waited: timeout,
                })
            }
        };
        // A slot lost to a panicking generation is replaced by a fresh clone.
        let weights = lock(&self.idle)
            .pop()
            .unwrap_or_else(|| self.engine.new_slot());
        Ok((
            weights,
            SlotLease {
                idle: self.idle.clone(),
                _permit: permit,
            },
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A slot on loan. However generation ends (finished, failed, abandoned by its client)
/// the permit is released when the lease drops; `give_back` first returns the weights.
struct SlotLease {
    idle: Arc<Mutex<Vec<ModelWeights>>>,
    _permit: OwnedSemaphorePermit,
}

impl SlotLease {
    fn give_back(self, weights: ModelWeights) {
        lock(&self.idle).push(weights);
    }
}

/// Sets the engine's CPU thread count. candle reads it once, when its thread pool
/// first starts, so this must run before any model is loaded (and before other threads
/// exist). An explicit `CANDLE_NUM_THREADS` in the environment wins.
pub fn use_threads(threads: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
}
