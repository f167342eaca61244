//! Token buckets for per-agent rate limits: requests per minute and tokens per minute.

use std::time::Duration;

use tokio::time::Instant;

/// A bucket holding up to a minute's allowance, refilled continuously. Its level may go
/// below zero: tokens are debited after the fact (a completion's size is known only at
/// its end), and the debt is paid back by refilling before the next request passes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u64,
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `per_minute` (at least 1) units a minute, `per_minute` at
    /// once.
    pub fn new(per_minute: u64, now: Instant) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            per_minute,
            level: per_minute as f64,
            updated: now,
        }
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn per_second(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second()).min(self.per_minute as f64);
        self.updated = now;
    }

    /// What the bucket holds at `now` (negative while in debt).
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    /// `None` when at least one unit is available; otherwise how long until one is.
    pub fn wait_for_one(&mut self, now: Instant) -> Option<Duration> {
        let level = self.level(now);
        (level < 1.0).then(|| Duration::from_secs_f64((1.0 - level) / self.per_second()))
    }

    /// Takes `amount` units whatever the level (callers check `wait_for_one` first).
    pub fn debit(&mut self, amount: u64, now: Instant) {
        self.refill(now);
        self.level -= amount as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_says_when_it_has_one_again() {
        let mut bucket = TokenBucket::new(60, Instant::now());
        for _ in 0..60 {
            assert_eq!(bucket.wait_for_one(Instant::now()), None);
            bucket.debit(1, Instant::now());
        }
        // 60 a minute is one a second.
        let wait = bucket.wait_for_one(Instant::now()).unwrap();
        assert_eq!(wait, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.wait_for_one(Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(bucket.wait_for_one(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn debts_are_paid_back_before_the_next_unit_and_the_level_never_exceeds_a_minute() {
        let mut bucket = TokenBucket::new(600, Instant::now());
        bucket.debit(1_200, Instant::now());
        // 600 in debt plus one unit, at 10 a second.
        assert_eq!(
            bucket.wait_for_one(Instant::now()),
            Some(Duration::from_secs_f64(60.1))
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(bucket.level(Instant::now()), 600.0);
    }
}
