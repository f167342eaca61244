//! The concurrency governor decides who runs now, who waits, and who is told no.
//!
//! A request is admitted in this order: kill switches (global, tenant, agent), spend
//! caps (agent then tenant, daily then monthly), per-minute limits (requests, then
//! tokens), then a slot. A slot needs room under three caps at once: the global cap on
//! requests in flight, the agent's `max_concurrent`, and the backend's limit (the
//! local engine's `slots`, a provider's concurrency). A request that does not fit waits
//! in a bounded queue: a full class answers 429 at once, a wait past the queue timeout
//! answers 503; both say when to retry. Refusals are typed (`GovernorError`).
//!
//! **Order and aging.** Waiting requests are served in order of the instant they rank
//! at, `arrival + rank × aging` (P0 rank 0, P1 rank 1, P2 rank 2), first come first
//! served within one instant. Requests that arrive within one aging period of each
//! other are therefore served strictly by class, FIFO within a class; a P2 request
//! that has waited two periods goes ahead of every P0 request arriving after that.
//! Nothing arriving more than `2 × aging` after a P2 request can overtake it, so while
//! P0 and P1 traffic alone stay within capacity, a P2 request waits at most about
//! `2 × aging + (requests queued ahead of it on arrival) × service time / slots`. The
//! configuration refuses `2 × aging ≥ queue_timeout`, which would let P2 requests
//! expire before aging lifts them. Waiters blocked only by their own agent's or
//! backend's cap are passed over, never waited behind.
//!
//! **Rate limits.** Requests per minute are taken at admission. Tokens per minute are
//! debited with the actual prompt and completion tokens when a request completes (its
//! size is unknown before), and a request is refused while the bucket holds less than
//! one token. Requests already in flight can take the bucket below zero; that debt is
//! paid back before the next request passes, so the rate holds over time. Retry-After
//! is the time the bucket needs to hold one unit again.
//!
//! **Spend caps** are checked at admission against what completed requests cost (the
//! cost is known only at completion), so the request that crosses a cap finishes and
//! the next one is refused with `budget_exceeded` until the UTC day or month turns.
//!
//! **Fallback.** A request may name a second backend for when its own keeps it waiting
//! ([`Governor::admit_or_move`]): the gateway sends `auto` requests the local queue
//! holds too long to the first escalation provider. The request keeps its place in
//! the queue (its arrival and class), so waiting for one backend counts towards the
//! other.
//!
//! **Cancellation.** A request whose client goes away while queued leaves the queue at
//! once (the waiting future's drop removes it); the `Permit` of a running request
//! frees its slot when dropped, which the gateway ties to the response stream.
//!
//! The state lives in this process: spend, buckets and kill switches start afresh on
//! restart (replicas would share them through Redis, see the design).

mod bucket;
pub mod config;
mod error;
mod kill;
mod priority;
mod snapshot;
mod spend;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use config::{AgentLimits, GovernorConfig};
pub use error::{BudgetScope, GovernorError, RateLimit, UnknownScope};
pub use kill::{KillScope, KillSwitch, KillSwitches};
pub use priority::{PerClass, Priority, UnknownPriority};
pub use snapshot::{AgentView, BackendView, ClassWaits, GovernorSnapshot, LimitsView, SpendView};
pub use spend::{Period, SpendCaps};

use crate::metrics::GovernorMetrics;
use state::{Admitted, Left, QueueKey, Reply, Slot, State};

/// Everything the governor is built from.
#[derive(Debug, Clone, Default)]
pub struct GovernorSettings {
    pub governor: GovernorConfig,
    pub agents: Vec<AgentSettings>,
    /// Backends with a concurrency limit, by name; others have only the global cap.
    pub backends: Vec<(String, usize)>,
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub id: String,
    pub tenant: String,
    pub limits: AgentLimits,
}

impl GovernorSettings {
    /// Limits `name` to `limit` generations at once.
    pub fn backend(mut self, name: impl Into<String>, limit: usize) -> Self {
        self.backends.push((name.into(), limit));
        self
    }
}

/// What a request asks of the governor.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub agent: &'a str,
    pub tenant: &'a str,
    /// The class asked for; `None` takes the agent's default. Lowered to the agent's
    /// ceiling either way.
    pub priority: Option<Priority>,
    /// The backend that will serve the request.
    pub backend: &'a str,
}

/// Where a queued request goes if its backend keeps it waiting: after `after` in the
/// queue it asks for a slot on `backend` instead, keeping its place and its aging.
#[derive(Debug, Clone, Copy)]
pub struct QueueFallback<'a> {
    pub after: Duration,
    pub backend: &'a str,
}

/// The governor; cheap to clone, every clone governs the same slots.
#[derive(Clone)]
pub struct Governor {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    queue_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics; if something ever did, the books are still
        // consistent between operations, so carry on rather than refuse every request.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Governor {
    pub fn new(settings: GovernorSettings, metrics: GovernorMetrics) -> Self {
        let queue_timeout = settings.governor.queue_timeout;
        let state = State::new(settings, metrics, Instant::now(), Utc::now());
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                queue_timeout,
            }),
        }
    }

    /// Admits the request now, after a wait in the queue, or refuses it. Dropping the
    /// returned future while it waits gives the place in the queue back at once.
    pub async fn admit(&self, ask: Admission<'_>) -> Result<Permit, GovernorError> {
        self.admit_with(ask, None).await
    }

    /// As `admit`, but a request still queued after `fallback.after` waits for a slot on
    /// `fallback.backend` instead ([`Permit::moved`] says so). It keeps its place and
    /// the time it has waited: a request that had to wait for one backend should not go
    /// to the back of the line for another.
    pub async fn admit_or_move(
        &self,
        ask: Admission<'_>,
        fallback: QueueFallback<'_>,
    ) -> Result<Permit, GovernorError> {
        self.admit_with(ask, Some(fallback)).await
    }

    async fn admit_with(
        &self,
        ask: Admission<'_>,
        fallback: Option<QueueFallback<'_>>,
    ) -> Result<Permit, GovernorError> {
        let arrived = Instant::now();
        let admitted = self.shared.lock().admit(&ask, arrived, Utc::now())?;
        let (slot, waited, moved, ranks_at) = match admitted {
            Admitted::Now { slot, ranks_at } => (slot, Duration::ZERO, false, ranks_at),
            Admitted::Queued { slot, key, reply } => {
                let ranks_at = key.ranks_at();
                let mut waiting = Waiting {
                    shared: &self.shared,
                    slot,
                    key,
                    reply,
                    moved: false,
                    settled: false,
                };
                let waited = waiting
                    .answer(arrived, arrived + self.shared.queue_timeout, fallback)
                    .await?;
                (waiting.slot, waited, waiting.moved, ranks_at)
            }
        };
        Ok(Permit {
            shared: self.shared.clone(),
            slot,
            waited,
            moved,
            ranks_at,
            acquired: Instant::now(),
        })
    }

    /// Engages a kill switch: new requests it covers are refused, and so are the queued
    /// ones (their number is returned). Requests already running finish.
    pub fn engage(
        &self,
        scope: KillScope,
        reason: impl Into<String>,
    ) -> Result<usize, UnknownScope> {
        let reason = reason.into();
        let refused = self
            .shared
            .lock()
            .engage(scope.clone(), reason.clone(), Utc::now())?;
        tracing::warn!(%scope, %reason, queued_refused = refused, "kill switch engaged");
        Ok(refused)
    }

    /// Clears a kill switch; `true` if it was engaged.
    pub fn clear(&self, scope: &KillScope) -> Result<bool, UnknownScope> {
        let was_engaged = self.shared.lock().clear(scope)?;
        tracing::warn!(%scope, was_engaged, "kill switch cleared");
        Ok(was_engaged)
    }

    pub fn snapshot(&self) -> GovernorSnapshot {
        self.shared.lock().snapshot(Instant::now(), Utc::now())
    }
}

/// A place in the queue. Dropped before it is settled (the client went away), it
/// leaves the queue, or gives back the slot it was granted meanwhile.
struct Waiting<'a> {
    shared: &'a Shared,
    slot: Slot,
    key: QueueKey,
    reply: oneshot::Receiver<Reply>,
    /// Moved to its fallback backend.
    moved: bool,
    settled: bool,
}

impl Waiting<'_> {
    /// The grant (with the time waited) or the refusal, by `deadline` at the latest;
    /// moved to the fallback's backend if still waiting when the fallback is due.
    async fn answer(
        &mut self,
        arrived: Instant,
        deadline: Instant,
        fallback: Option<QueueFallback<'_>>,
    ) -> Result<Duration, GovernorError> {
        let mut received = None;
        if let Some(fallback) = fallback.filter(|f| arrived + f.after < deadline) {
            match tokio::time::timeout_at(arrived + fallback.after, &mut self.reply).await {
                Ok(reply) => received = Some(reply),
                Err(_) => {
                    self.moved = self.shared.lock().redirect(
                        &self.key,
                        &mut self.slot,
                        fallback.backend,
                        Instant::now(),
                    );
                }
            }
        }
        let received = match received {
            Some(reply) => Ok(reply),
            None => tokio::time::timeout_at(deadline, &mut self.reply).await,
        };
        let answer = match received {
            Ok(Ok(answer)) => answer,
            // The deadline passed (or, never in practice, the queue dropped the entry
            // unanswered): leave, unless a grant arrived at the last moment.
            Ok(Err(_)) | Err(_) => {
                let mut state = self.shared.lock();
                match state.leave(&self.key, &mut self.reply) {
                    Left::Answered(answer) => answer,
                    Left::Removed => {
                        Err(state.timed_out(self.slot, Instant::now().duration_since(arrived)))
                    }
                }
            }
        };
        self.settled = true;
        answer
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.shared.lock();
        if let Left::Answered(Ok(_)) = state.leave(&self.key, &mut self.reply) {
            state.release(self.slot, None, Instant::now());
        }
    }
}

/// The right to run one request. Dropping it frees the slot and admits the next
/// waiter; the gateway keeps it in the response stream, so it lives exactly as long as
/// the response (finished, failed, or abandoned by the client).
pub struct Permit {
    shared: Arc<Shared>,
    slot: Slot,
    waited: Duration,
    moved: bool,
    ranks_at: Instant,
    acquired: Instant,
}

impl Permit {
    /// Whether the queue moved the request to its fallback backend
    /// ([`Governor::admit_or_move`]): the permit is for that backend.
    pub fn moved(&self) -> bool {
        self.moved
    }

    /// The class the request ran in, after the agent's default and ceiling.
    pub fn priority(&self) -> Priority {
        self.slot.class
    }

    /// How long the request waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The request's place in the governor's order (arrival plus one aging period per
    /// class above P0; earlier goes first), for a backend that must queue it again:
    /// the local engine waiting for cache room keeps the order the governor gave.
    pub fn ranks_at(&self) -> Instant {
        self.ranks_at
    }

    /// Moves the request to `backend` for its next attempt (an escalation or a
    /// failover), giving the slot on the backend it leaves to whoever waits for it.
    /// Never waits: a backend the governor limits that has no room refuses with
    /// `BackendBusy`, and the permit stays where it was.
    pub fn move_to(&mut self, backend: &str) -> Result<(), GovernorError> {
        let now = Instant::now();
        self.shared.lock().move_backend(
            &mut self.slot,
            backend,
            now.duration_since(self.acquired),
            now,
        )?;
        self.acquired = now;
        Ok(())
    }

    /// Debits what the finished request used: `tokens` (prompt and completion) from
    /// the agent's per-minute bucket, `cost` from the agent's and tenant's spend.
    pub fn charge(&self, tokens: u64, cost: Option<Decimal>) {
        self.shared
            .lock()
            .charge(self.slot, tokens, cost, Instant::now(), Utc::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        self.shared
            .lock()
            .release(self.slot, Some(now.duration_since(self.acquired)), now);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("priority", &self.slot.class)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}
