//! The governor's books, kept under one lock: who holds which slots, who waits in what
//! order, and each agent's and tenant's allowances. Nothing here waits or allocates
//! more than a queue entry, so the lock is held for microseconds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{Histogram, IntGauge};
use rust_decimal::Decimal;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::bucket::TokenBucket;
use super::config::{AgentLimits, GovernorConfig};
use super::error::{BudgetScope, GovernorError, RateLimit, UnknownScope};
use super::kill::{KillScope, KillSwitch, KillSwitches};
use super::snapshot::{
    AgentView, BackendView, ClassWaits, GovernorSnapshot, LimitsView, SpendView,
};
use super::spend::{Spend, SpendCaps};
use super::{Admission, GovernorSettings, PerClass, Priority};
use crate::metrics::GovernorMetrics;

/// The shortest `Retry-After` given: sooner retries would only add load.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Weight of the newest service time in the running mean behind `Retry-After`.
const SERVICE_TIME_WEIGHT: f64 = 0.2;

/// What the holder of a slot occupies: indices into the books, stable for the
/// governor's life (entries are added, never removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub agent: usize,
    pub backend: usize,
    pub class: Priority,
}

/// The queue's order: the time a request ranks at, then arrival order. A request
/// ranks at its arrival plus one aging period per class above it, so a waiting P2
/// request goes ahead of any P0 request arriving more than two periods after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    ranks_at: Instant,
    sequence: u64,
}

impl QueueKey {
    pub fn ranks_at(&self) -> Instant {
        self.ranks_at
    }
}

/// What a waiter learns: admitted after waiting so long, or refused.
pub(super) type Reply = Result<Duration, GovernorError>;

pub(super) enum Admitted {
    Now {
        slot: Slot,
        /// Where it would have stood in the queue ([`QueueKey::ranks_at`]).
        ranks_at: Instant,
    },
    Queued {
        slot: Slot,
        key: QueueKey,
        reply: oneshot::Receiver<Reply>,
    },
}

/// How a waiter left the queue without being granted, for `State::leave`.
pub(super) enum Left {
    /// Still queued: it is removed.
    Removed,
    /// It was answered before it could leave: the answer stands.
    Answered(Reply),
}

struct Waiter {
    slot: Slot,
    arrived: Instant,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug, Clone, Copy)]
struct Occupancy {
    in_flight: usize,
    limit: Option<usize>,
}

impl Occupancy {
    fn has_room(&self) -> bool {
        self.limit.is_none_or(|limit| self.in_flight < limit)
    }
}

struct BackendSlots {
    name: String,
    occupancy: Occupancy,
    mean_service: Option<Duration>,
    gauge: IntGauge,
}

impl BackendSlots {
    /// One request leaves; `served_for` (absent for a grant nobody took up) feeds the
    /// mean service time.
    fn free(&mut self, served_for: Option<Duration>) {
        self.occupancy.in_flight -= 1;
        self.gauge.dec();
        if let Some(served_for) = served_for {
            self.mean_service = Some(match self.mean_service {
                None => served_for,
                Some(mean) => {
                    mean.mul_f64(1.0 - SERVICE_TIME_WEIGHT)
                        + served_for.mul_f64(SERVICE_TIME_WEIGHT)
                }
            });
        }
    }
}

/// Global, per-agent and per-backend occupancy. A request runs only when all three
/// have room.
struct Slots {
    global: Occupancy,
    agents: Vec<Occupancy>,
    backends: Vec<BackendSlots>,
}

impl Slots {
    fn fits(&self, slot: Slot) -> bool {
        self.global.has_room()
            && self.agents[slot.agent].has_room()
            && self.backends[slot.backend].occupancy.has_room()
    }

    fn take(&mut self, slot: Slot) {
        self.global.in_flight += 1;
        self.agents[slot.agent].in_flight += 1;
        let backend = &mut self.backends[slot.backend];
        backend.occupancy.in_flight += 1;
        backend.gauge.inc();
    }

    /// Moves one running request from backend `from` to backend `to`; its global and
    /// agent slots stay taken.
    fn move_backend(&mut self, from: usize, to: usize, served_for: Duration) {
        self.backends[from].free(Some(served_for));
        let backend = &mut self.backends[to];
        backend.occupancy.in_flight += 1;
        backend.gauge.inc();
    }

    /// Frees a slot; `served_for` (absent for a grant nobody took up) feeds the mean
    /// service time.
    fn give_back(&mut self, slot: Slot, served_for: Option<Duration>) {
        self.global.in_flight -= 1;
        self.agents[slot.agent].in_flight -= 1;
        self.backends[slot.backend].free(served_for);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct WaitTotals {
    admitted: u64,
    total: Duration,
    max: Duration,
}

struct Queue {
    waiting: BTreeMap<QueueKey, Waiter>,
    depth: PerClass<usize>,
    capacity: PerClass<usize>,
    aging: Duration,
    next_sequence: u64,
    waits: PerClass<WaitTotals>,
    depth_gauges: PerClass<IntGauge>,
    wait_histograms: PerClass<Histogram>,
}

impl Queue {
    fn is_full(&self, class: Priority) -> bool {
        self.depth.get(class) >= self.capacity.get(class)
    }

    /// The instant a request of `class` arriving at `arrived` ranks at.
    fn ranks_at(&self, class: Priority, arrived: Instant) -> Instant {
        arrived + self.aging * class.rank() as u32
    }

    fn push(&mut self, slot: Slot, arrived: Instant) -> (QueueKey, oneshot::Receiver<Reply>) {
        let key = QueueKey {
            ranks_at: self.ranks_at(slot.class, arrived),
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        let (reply, receiver) = oneshot::channel();
        self.waiting.insert(
            key,
            Waiter {
                slot,
                arrived,
                reply,
            },
        );
        *self.depth.get_mut(slot.class) += 1;
        self.depth_gauges.get(slot.class).inc();
        (key, receiver)
    }

    fn remove(&mut self, key: &QueueKey) -> Option<Waiter> {
        let waiter = self.waiting.remove(key)?;
        *self.depth.get_mut(waiter.slot.class) -= 1;
        self.depth_gauges.get(waiter.slot.class).dec();
        Some(waiter)
    }

    fn record_admission(&mut self, class: Priority, waited: Duration) {
        let totals = self.waits.get_mut(class);
        totals.admitted += 1;
        totals.total += waited;
        totals.max = totals.max.max(waited);
        self.wait_histograms
            .get(class)
            .observe(waited.as_secs_f64());
    }
}

struct AgentBook {
    id: String,
    tenant: usize,
    limits: AgentLimits,
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
    spend: Spend,
}

struct TenantBook {
    id: String,
    caps: SpendCaps,
    spend: Spend,
}

pub(super) struct State {
    queue_timeout: Duration,
    slots: Slots,
    queue: Queue,
    agents: Vec<AgentBook>,
    agent_index: HashMap<String, usize>,
    tenants: Vec<TenantBook>,
    tenant_index: HashMap<String, usize>,
    backend_index: HashMap<String, usize>,
    kill: KillSwitches,
    metrics: GovernorMetrics,
}

impl State {
    pub fn new(
        settings: GovernorSettings,
        metrics: GovernorMetrics,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Self {
        let GovernorConfig {
            max_in_flight,
            queue_capacity,
            queue_timeout,
            aging,
            tenants,
        } = settings.governor;
        let mut state = Self {
            queue_timeout,
            slots: Slots {
                global: Occupancy {
                    in_flight: 0,
                    limit: Some(max_in_flight),
                },
                agents: Vec::new(),
                backends: Vec::new(),
            },
            queue: Queue {
                waiting: BTreeMap::new(),
                depth: PerClass::default(),
                capacity: queue_capacity,
                aging,
                next_sequence: 0,
                waits: PerClass::default(),
                depth_gauges: PerClass(
                    Priority::ALL
                        .map(|class| metrics.queue_depth.with_label_values(&[class.as_str()])),
                ),
                wait_histograms: PerClass(
                    Priority::ALL
                        .map(|class| metrics.queue_wait.with_label_values(&[class.as_str()])),
                ),
            },
            agents: Vec::new(),
            agent_index: HashMap::new(),
            tenants: Vec::new(),
            tenant_index: HashMap::new(),
            backend_index: HashMap::new(),
            kill: KillSwitches::default(),
            metrics,
        };
        for (tenant, caps) in tenants {
            state.tenant(&tenant, caps, wall);
        }
        for agent in settings.agents {
            state.agent(&agent.id, &agent.tenant, agent.limits, now, wall);
        }
        for (backend, limit) in settings.backends {
            state.backend(&backend, Some(limit));
        }
        // Every refusal's series exists at zero from the start, so an alert on its
        // increase has something to watch before the first one.
        for code in GovernorError::CODES {
            state.metrics.rejections.with_label_values(&[code]);
        }
        state
    }

    fn tenant(&mut self, id: &str, caps: SpendCaps, wall: DateTime<Utc>) -> usize {
        if let Some(&index) = self.tenant_index.get(id) {
            return index;
        }
        self.tenants.push(TenantBook {
            id: id.to_string(),
            caps,
            spend: Spend::new(wall),
        });
        self.tenant_index
            .insert(id.to_string(), self.tenants.len() - 1);
        self.tenants.len() - 1
    }

    /// The agent's entry, created with `limits` on first sight.
    fn agent(
        &mut self,
        id: &str,
        tenant: &str,
        limits: AgentLimits,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> usize {
        if let Some(&index) = self.agent_index.get(id) {
            return index;
        }
        let tenant = self.tenant(tenant, SpendCaps::default(), wall);
        let bucket = |per_minute: Option<u64>| per_minute.map(|n| TokenBucket::new(n, now));
        self.slots.agents.push(Occupancy {
            in_flight: 0,
            limit: limits.max_concurrent,
        });
        for (limit, per_minute) in [
            (RateLimit::Requests, limits.requests_per_minute),
            (RateLimit::Tokens, limits.tokens_per_minute),
        ] {
            if per_minute.is_some() {
                self.metrics
                    .rate_limited
                    .with_label_values(&[id, limit.unit()]);
            }
        }
        self.agents.push(AgentBook {
            id: id.to_string(),
            tenant,
            requests: bucket(limits.requests_per_minute),
            tokens: bucket(limits.tokens_per_minute),
            limits,
            spend: Spend::new(wall),
        });
        self.agent_index
            .insert(id.to_string(), self.agents.len() - 1);
        self.agents.len() - 1
    }

    /// The backend's entry, created on first sight (`limit: None`: only the global cap).
    fn backend(&mut self, name: &str, limit: Option<usize>) -> usize {
        if let Some(&index) = self.backend_index.get(name) {
            return index;
        }
        self.slots.backends.push(BackendSlots {
            name: name.to_string(),
            occupancy: Occupancy {
                in_flight: 0,
                limit,
            },
            mean_service: None,
            gauge: self.metrics.in_flight.with_label_values(&[name]),
        });
        self.backend_index
            .insert(name.to_string(), self.slots.backends.len() - 1);
        self.slots.backends.len() - 1
    }

    /// Runs every check in order (kill switch, spend, rate limits, queue room), then
    /// either grants a slot at once or queues the request. A refusal is counted.
    pub fn admit(
        &mut self,
        ask: &Admission<'_>,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<Admitted, GovernorError> {
        let agent = match self.agent_index.get(ask.agent) {
            Some(&index) => index,
            None => self.agent(ask.agent, ask.tenant, AgentLimits::default(), now, wall),
        };
        let backend = self.backend(ask.backend, None);
        let limits = &self.agents[agent].limits;
        let class = ask
            .priority
            .unwrap_or(limits.default_priority)
            .at_most(limits.priority_ceiling);
        let slot = Slot {
            agent,
            backend,
            class,
        };
        let admitted = self
            .check_allowances(agent, now, wall)
            .and_then(|()| self.place(slot, now));
        if let Err(error) = &admitted {
            self.metrics
                .rejections
                .with_label_values(&[error.code()])
                .inc();
        }
        admitted
    }

    fn check_allowances(
        &mut self,
        agent: usize,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<(), GovernorError> {
        let book = &mut self.agents[agent];
        let tenant = &mut self.tenants[book.tenant];
        if let Some((scope, switch)) = self.kill.stopping(&book.id, &tenant.id) {
            return Err(GovernorError::KillSwitch {
                scope,
                reason: switch.reason.clone(),
            });
        }
        let over_budget =
            |scope: BudgetScope, reached: super::spend::CapReached| GovernorError::BudgetExceeded {
                scope,
                period: reached.period,
                cap: reached.cap,
                spent: reached.spent,
                resets_in: reached.resets_in,
            };
        if let Some(reached) = book.spend.reached(book.limits.spend, wall) {
            return Err(over_budget(BudgetScope::Agent(book.id.clone()), reached));
        }
        if let Some(reached) = tenant.spend.reached(tenant.caps, wall) {
            return Err(over_budget(BudgetScope::Tenant(tenant.id.clone()), reached));
        }
        for (limit, bucket) in [
            (RateLimit::Requests, &mut book.requests),
            (RateLimit::Tokens, &mut book.tokens),
        ] {
            let Some(bucket) = bucket else { continue };
            if let Some(wait) = bucket.wait_for_one(now) {
                self.metrics
                    .rate_limited
                    .with_label_values(&[book.id.as_str(), limit.unit()])
                    .inc();
                return Err(GovernorError::RateLimited {
                    agent: book.id.clone(),
                    limit,
                    per_minute: bucket.per_minute(),
                    retry_after: wait.max(MIN_RETRY_AFTER),
                });
            }
        }
        Ok(())
    }

    /// A slot now if one is free, else a place in the queue if the class has room. A
    /// request that fits never overtakes a waiter: every waiter is blocked by a cap
    /// (its agent's or its backend's) that this request does not need, or it would
    /// have been granted when that cap last freed.
    fn place(&mut self, slot: Slot, now: Instant) -> Result<Admitted, GovernorError> {
        if self.slots.fits(slot) {
            self.slots.take(slot);
            self.queue.record_admission(slot.class, Duration::ZERO);
            self.count_request(slot.agent, now);
            let ranks_at = self.queue.ranks_at(slot.class, now);
            return Ok(Admitted::Now { slot, ranks_at });
        }
        if self.queue.is_full(slot.class) {
            return Err(GovernorError::QueueFull {
                class: slot.class,
                capacity: *self.queue.capacity.get(slot.class),
                retry_after: self.drain_estimate(slot.backend),
            });
        }
        self.count_request(slot.agent, now);
        let (key, reply) = self.queue.push(slot, now);
        Ok(Admitted::Queued { slot, key, reply })
    }

    /// Requests per minute count what was let in (run or queued), not what was refused.
    fn count_request(&mut self, agent: usize, now: Instant) {
        if let Some(bucket) = &mut self.agents[agent].requests {
            bucket.debit(1, now);
        }
    }

    /// A waiter gives up (deadline, or its client left). If it was answered meanwhile,
    /// the answer is returned for the caller to honour or give back.
    pub fn leave(&mut self, key: &QueueKey, reply: &mut oneshot::Receiver<Reply>) -> Left {
        if self.queue.remove(key).is_some() {
            return Left::Removed;
        }
        // Answers are sent under this lock, before the waiter leaves the queue, so one
        // is there to read.
        match reply.try_recv() {
            Ok(answer) => Left::Answered(answer),
            Err(_) => Left::Removed,
        }
    }

    /// Points a queued request at `backend` instead of the one it waits for, in the
    /// same place in the queue, and grants it at once if it fits there. False if it is
    /// no longer queued (granted, or refused, at the last moment): it stays as it is.
    pub fn redirect(
        &mut self,
        key: &QueueKey,
        slot: &mut Slot,
        backend: &str,
        now: Instant,
    ) -> bool {
        let to = self.backend(backend, None);
        let Some(waiter) = self.queue.waiting.get_mut(key) else {
            return false;
        };
        waiter.slot.backend = to;
        slot.backend = to;
        self.dispatch(now);
        true
    }

    /// A time-out, with when to try again.
    pub fn timed_out(&mut self, slot: Slot, waited: Duration) -> GovernorError {
        let error = GovernorError::QueueTimeout {
            class: slot.class,
            waited,
            retry_after: self.drain_estimate(slot.backend),
        };
        self.metrics
            .rejections
            .with_label_values(&[error.code()])
            .inc();
        error
    }

    /// Frees a slot and admits whoever now fits.
    pub fn release(&mut self, slot: Slot, served_for: Option<Duration>, now: Instant) {
        self.slots.give_back(slot, served_for);
        self.dispatch(now);
    }

    /// Grants, in queue order, every waiter whose caps have room. Waiters blocked only
    /// by their own agent's or backend's cap are passed over, not waited behind.
    fn dispatch(&mut self, now: Instant) {
        loop {
            let mut granted = Vec::new();
            for (key, waiter) in &self.queue.waiting {
                if !self.slots.global.has_room() {
                    break;
                }
                if self.slots.fits(waiter.slot) {
                    self.slots.take(waiter.slot);
                    granted.push(*key);
                }
            }
            let mut abandoned = false;
            for key in granted {
                let Some(waiter) = self.queue.remove(&key) else {
                    continue;
                };
                let waited = now.saturating_duration_since(waiter.arrived);
                self.queue.record_admission(waiter.slot.class, waited);
                // A waiter leaves the queue before its receiver is dropped, so this
                // fails only if one was leaked; its slot must not be.
                if waiter.reply.send(Ok(waited)).is_err() {
                    self.slots.give_back(waiter.slot, None);
                    abandoned = true;
                }
            }
            if !abandoned {
                return;
            }
        }
    }

    /// Moves a running request's backend slot to `backend` (the next attempt runs
    /// there), freeing the one it held for whoever waits. Nothing waits here: a backend
    /// the governor limits and that has no room refuses the move, and the request keeps
    /// its slot where it was.
    pub fn move_backend(
        &mut self,
        slot: &mut Slot,
        backend: &str,
        served_for: Duration,
        now: Instant,
    ) -> Result<(), GovernorError> {
        let to = self.backend(backend, None);
        if to == slot.backend {
            return Ok(());
        }
        let occupancy = self.slots.backends[to].occupancy;
        if !occupancy.has_room() {
            let error = GovernorError::BackendBusy {
                backend: backend.to_string(),
                limit: occupancy.limit.unwrap_or(0),
                retry_after: self.drain_estimate(to),
            };
            self.metrics
                .rejections
                .with_label_values(&[error.code()])
                .inc();
            return Err(error);
        }
        self.slots.move_backend(slot.backend, to, served_for);
        slot.backend = to;
        self.dispatch(now);
        Ok(())
    }

    /// Debits what a finished request used: tokens from the agent's bucket, its cost
    /// from the agent's and tenant's spend.
    pub fn charge(
        &mut self,
        slot: Slot,
        tokens: u64,
        cost: Option<Decimal>,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        let book = &mut self.agents[slot.agent];
        if let Some(bucket) = &mut book.tokens {
            bucket.debit(tokens, now);
        }
        if let Some(cost) = cost {
            book.spend.add(cost, wall);
            self.tenants[book.tenant].spend.add(cost, wall);
        }
    }

    /// How long until a request for `backend` would likely get through: the queue
    /// ahead of it at the backend's recent pace.
    fn drain_estimate(&self, backend: usize) -> Duration {
        let backend = &self.slots.backends[backend];
        let Some(mean_service) = backend.mean_service else {
            return MIN_RETRY_AFTER;
        };
        let parallel = [backend.occupancy.limit, self.slots.global.limit]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .max(1);
        let ahead = self.queue.waiting.len() + 1;
        mean_service
            .mul_f64(ahead as f64 / parallel as f64)
            .clamp(MIN_RETRY_AFTER, self.queue_timeout.max(MIN_RETRY_AFTER))
    }

    /// Engages a kill switch and refuses the queued requests it covers.
    pub fn engage(
        &mut self,
        scope: KillScope,
        reason: String,
        wall: DateTime<Utc>,
    ) -> Result<usize, UnknownScope> {
        self.known(&scope)?;
        self.kill.engage(
            &scope,
            KillSwitch {
                reason: reason.clone(),
                engaged_at: wall,
            },
        );
        let stopped: Vec<QueueKey> = self
            .queue
            .waiting
            .iter()
            .filter(|(_, waiter)| self.covers(&scope, waiter.slot.agent))
            .map(|(key, _)| *key)
            .collect();
        for key in &stopped {
            if let Some(waiter) = self.queue.remove(key) {
                let error = GovernorError::KillSwitch {
                    scope: scope.clone(),
                    reason: reason.clone(),
                };
                self.metrics
                    .rejections
                    .with_label_values(&[error.code()])
                    .inc();
                let _ = waiter.reply.send(Err(error));
            }
        }
        Ok(stopped.len())
    }

    /// Clears a kill switch; `true` if it was engaged.
    pub fn clear(&mut self, scope: &KillScope) -> Result<bool, UnknownScope> {
        self.known(scope)?;
        Ok(self.kill.clear(scope).is_some())
    }

    fn known(&self, scope: &KillScope) -> Result<(), UnknownScope> {
        let (kind, name, index) = match scope {
            KillScope::Global => return Ok(()),
            KillScope::Tenant(id) => ("tenant", id, &self.tenant_index),
            KillScope::Agent(id) => ("agent", id, &self.agent_index),
        };
        if index.contains_key(name) {
            Ok(())
        } else {
            Err(UnknownScope {
                kind,
                name: name.clone(),
            })
        }
    }

    fn covers(&self, scope: &KillScope, agent: usize) -> bool {
        let book = &self.agents[agent];
        match scope {
            KillScope::Global => true,
            KillScope::Tenant(id) => &self.tenants[book.tenant].id == id,
            KillScope::Agent(id) => &book.id == id,
        }
    }

    pub fn snapshot(&mut self, now: Instant, wall: DateTime<Utc>) -> GovernorSnapshot {
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        let mut waits = PerClass::<ClassWaits>::default();
        let mut queued_by_agent = vec![0; self.agents.len()];
        for waiter in self.queue.waiting.values() {
            queued_by_agent[waiter.slot.agent] += 1;
            let oldest = &mut waits.get_mut(waiter.slot.class).oldest_queued_ms;
            let waited = ms(now.saturating_duration_since(waiter.arrived));
            *oldest = Some(oldest.map_or(waited, |oldest: f64| oldest.max(waited)));
        }
        for class in Priority::ALL {
            let totals = self.queue.waits.get(class);
            let view = waits.get_mut(class);
            view.admitted = totals.admitted;
            view.max_ms = ms(totals.max);
            if totals.admitted > 0 {
                view.mean_ms = ms(totals.total) / totals.admitted as f64;
            }
        }
        let spend_view = |spend: &mut Spend, caps: SpendCaps| {
            let (today, this_month) = spend.totals(wall);
            SpendView {
                today_usd: today,
                this_month_usd: this_month,
                daily_cap_usd: caps.daily,
                monthly_cap_usd: caps.monthly,
            }
        };
        let mut agents = BTreeMap::new();
        for (index, book) in self.agents.iter_mut().enumerate() {
            let view = AgentView {
                tenant: self.tenants[book.tenant].id.clone(),
                in_flight: self.slots.agents[index].in_flight,
                queued: queued_by_agent[index],
                priority_ceiling: book.limits.priority_ceiling,
                default_priority: book.limits.default_priority,
                max_concurrent: book.limits.max_concurrent,
                requests_per_minute: book.limits.requests_per_minute,
                requests_available: book.requests.as_mut().map(|b| b.level(now)),
                tokens_per_minute: book.limits.tokens_per_minute,
                tokens_available: book.tokens.as_mut().map(|b| b.level(now)),
                spend: spend_view(&mut book.spend, book.limits.spend),
            };
            agents.insert(book.id.clone(), view);
        }
        let tenants = self
            .tenants
            .iter_mut()
            .map(|book| (book.id.clone(), spend_view(&mut book.spend, book.caps)))
            .collect();
        let backends = self
            .slots
            .backends
            .iter()
            .map(|backend| {
                let view = BackendView {
                    in_flight: backend.occupancy.in_flight,
                    limit: backend.occupancy.limit,
                    mean_service_ms: backend.mean_service.map(ms),
                };
                (backend.name.clone(), view)
            })
            .collect();
        GovernorSnapshot {
            in_flight: self.slots.global.in_flight,
            queued: self.queue.depth,
            waits,
            limits: LimitsView {
                max_in_flight: self.slots.global.limit.unwrap_or(usize::MAX),
                queue_capacity: self.queue.capacity,
                queue_timeout_ms: self.queue_timeout.as_millis() as u64,
                aging_ms: self.queue.aging.as_millis() as u64,
            },
            backends,
            agents,
            tenants,
            kill_switches: self.kill.clone(),
        }
    }
}
