//! CPU-heavy request work (parsing and validating a large body, compiling its schemas)
//! on tokio's blocking threads, a bounded number at a time, so that the async workers
//! stay free for everyone else's requests, the probes and the admin API. Work waits
//! for a turn for at most `TURN_WAIT`, then the client is told to come back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::error::panic_message;

/// Longer than any one piece of this work takes on a busy machine; past it the queue of
/// heavy requests is what is wrong, and 503 says so.
const TURN_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct CpuPool {
    turns: Arc<Semaphore>,
}

impl CpuPool {
    /// At most `workers` pieces of work at once: more would only take turns on the same
    /// cores while starving the async workers.
    pub fn new(workers: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// One per core.
    pub fn for_this_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Runs `work` off the async workers. A panic in it is an `ApiError::Panicked`.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let turn = tokio::time::timeout(TURN_WAIT, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Busy)?
            .map_err(|_| ApiError::Busy)?;
        let done = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            std::panic::catch_unwind(AssertUnwindSafe(work))
        })
        .await;
        match done {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(ApiError::Panicked(panic_message(panic.as_ref()))),
            Err(error) => Err(ApiError::Panicked(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn work_runs_and_a_panic_in_it_is_an_error() {
        let pool = CpuPool::new(1);
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
        match pool.run(|| -> u32 { panic!("boom") }).await {
            Err(ApiError::Panicked(message)) => assert_eq!(message, "boom"),
            other => panic!("expected a caught panic, got {other:?}"),
        }
        // The turn came back despite the panic.
        assert_eq!(pool.run(|| 1).await.unwrap(), 1);
    }
}
