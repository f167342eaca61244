//! When and how long to wait before trying a provider again: only failures that may
//! pass (connect errors, timeouts, 429, 5xx), with exponential backoff and jitter, and
//! never sooner than the provider's `Retry-After`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    /// Not retryable, attempts used up, or the provider asks for a longer wait than
    /// is worth it: fail over to the next provider instead.
    GiveUp,
}

impl Backoff {
    /// `attempt` counts from 0 for the first retry.
    pub fn decide(
        &self,
        attempt: u32,
        attempts_left: bool,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> RetryDecision {
        if !retryable || !attempts_left {
            return RetryDecision::GiveUp;
        }
        match retry_after {
            Some(wait) if wait > self.max => RetryDecision::GiveUp,
            Some(wait) => RetryDecision::RetryAfter(wait.max(self.jittered(attempt))),
            None => RetryDecision::RetryAfter(self.jittered(attempt)),
        }
    }

    /// Half the exponential ceiling, plus up to the other half at random: clients that
    /// failed together do not come back together, and none comes back at once to a
    /// provider that has just failed (full jitter can draw zero).
    fn jittered(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        let millis = ceiling.as_millis() as u64;
        let floor = millis / 2;
        Duration::from_millis(rand::rng().random_range(floor..=millis))
    }
}

/// Whether an HTTP status from a provider may succeed if tried again.
pub fn status_is_retryable(status: u16) -> bool {
    status == 408 || status == 409 || status == 429 || status >= 500
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs and treated as absent).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds: f64 = value?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    #[test]
    fn jitter_stays_between_half_the_exponential_ceiling_and_the_ceiling() {
        for attempt in 0..8 {
            let ceiling =
                (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
            for _ in 0..50 {
                match BACKOFF.decide(attempt, true, true, None) {
                    RetryDecision::RetryAfter(wait) => {
                        assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
                        assert!(wait >= ceiling / 2, "{wait:?} < half of {ceiling:?}");
                    }
                    RetryDecision::GiveUp => panic!("should retry"),
                }
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_too_long_means_fail_over() {
        assert!(matches!(
            BACKOFF.decide(0, true, true, Some(Duration::from_secs(1))),
            RetryDecision::RetryAfter(wait) if wait >= Duration::from_secs(1)
        ));
        assert_eq!(
            BACKOFF.decide(0, true, true, Some(Duration::from_secs(60))),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn only_retryable_failures_with_attempts_left_retry() {
        assert_eq!(BACKOFF.decide(0, true, false, None), RetryDecision::GiveUp);
        assert_eq!(BACKOFF.decide(0, false, true, None), RetryDecision::GiveUp);
        assert!(status_is_retryable(429) && status_is_retryable(503) && status_is_retryable(500));
        assert!(
            !status_is_retryable(400) && !status_is_retryable(401) && !status_is_retryable(404)
        );
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some("0.5")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }
}
