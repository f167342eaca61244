//! A circuit breaker per provider: after repeated failures, stop sending it requests
//! for a while, then let one probe through; its outcome closes or reopens the circuit.
//! Callers fail over at once instead of waiting on a provider that is down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Why a call may not go through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Until the next probe is allowed.
    pub retry_in: Duration,
}

pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    /// Outcomes of the latest calls, `true` for a failure.
    recent: VecDeque<bool>,
    opened_at: Instant,
    probe_in_flight: bool,
}

/// Permission to call; report how it went with `success` or `failure`. A permit
/// dropped without a report (the caller gave up) frees the half-open probe slot.
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                recent: VecDeque::new(),
                opened_at: Instant::now(),
                probe_in_flight: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner);
        inner.state
    }

    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        self.advance(&mut inner);
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                breaker: self.clone(),
                probe: false,
                reported: false,
            }),
            BreakerState::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                Ok(Permit {
                    breaker: self.clone(),
                    probe: true,
                    reported: false,
                })
            }
            BreakerState::HalfOpen => Err(Rejected {
                retry_in: Duration::ZERO,
            }),
            BreakerState::Open => Err(Rejected {
                retry_in: (inner.opened_at + self.config.open_for)
                    .saturating_duration_since(Instant::now()),
            }),
        }
    }

    /// Open long enough: the next caller may probe.
    fn advance(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open && inner.opened_at.elapsed() >= self.config.open_for {
            inner.state = BreakerState::HalfOpen;
            inner.probe_in_flight = false;
        }
    }

    fn record(&self, failed: bool, probe: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        if !failed {
            inner.consecutive_failures = 0;
            if inner.state == BreakerState::HalfOpen {
                inner.state = BreakerState::Closed;
                inner.recent.clear();
            }
            self.remember(&mut inner, false);
            return;
        }
        inner.consecutive_failures += 1;
        self.remember(&mut inner, true);
        let failures = inner.recent.iter().filter(|f| **f).count();
        let rate_exceeded = inner.recent.len() >= self.config.min_requests.max(1)
            && failures as f64 / inner.recent.len() as f64 >= self.config.error_rate;
        let should_open = inner.state == BreakerState::HalfOpen
            || inner.consecutive_failures >= self.config.consecutive_failures
            || rate_exceeded;
        if should_open && inner.state != BreakerState::Open {
            tracing::warn!(failures = inner.consecutive_failures, "circuit opened");
            inner.state = BreakerState::Open;
            inner.opened_at = Instant::now();
        }
    }

    fn remember(&self, inner: &mut Inner, failed: bool) {
        inner.recent.push_back(failed);
        while inner.recent.len() > self.config.window {
            inner.recent.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Permit {
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(false, self.probe);
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(true, self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(BreakerConfig {
            consecutive_failures: consecutive,
            error_rate: 0.5,
            window: 10,
            min_requests: 6,
            open_for: Duration::from_secs(30),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let breaker = breaker(3);
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        let rejected = breaker.try_acquire().err().unwrap();
        assert_eq!(rejected.retry_in, Duration::from_secs(30));

        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let breaker = breaker(1);
        breaker.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(breaker.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_without_a_streak() {
        let breaker = breaker(100);
        for failed in [false, true, false, true, false, true] {
            let permit = breaker.try_acquire().unwrap();
            if failed {
                permit.failure()
            } else {
                permit.success()
            }
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let breaker = breaker(1);
        breaker.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(breaker.try_acquire().unwrap());
        assert!(breaker.try_acquire().is_ok());
    }
}
