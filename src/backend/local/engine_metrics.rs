//! The local engine's series on `/metrics`, read from what the engine thread already
//! publishes at each scrape: the decode loop pays for them only the counters it keeps.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::scheduler::Occupancy;

pub struct EngineMetrics {
    occupancy: Arc<Occupancy>,
    slots: IntGauge,
    /// By state: `running` (in the batch) or `waiting` (for a place or cache room).
    sequences: IntGaugeVec,
    /// Key/value cache positions by state: `used` (reserved by a sequence) or `free`.
    cache_tokens: IntGaugeVec,
    /// By phase: `prefill` (prompt tokens read several at a time) or `decode`.
    tokens: IntCounterVec,
    /// Counters move by the difference since the last scrape: two scrapes at once must
    /// not both add it.
    scraping: Mutex<()>,
}

impl EngineMetrics {
    pub fn new(occupancy: Arc<Occupancy>, slots: usize) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            occupancy,
            slots: IntGauge::new(
                "local_slots",
                "Sequences the local engine decodes together at most",
            )?,
            sequences: IntGaugeVec::new(
                Opts::new(
                    "local_sequences",
                    "Local generations by state (running, waiting)",
                ),
                &["state"],
            )?,
            cache_tokens: IntGaugeVec::new(
                Opts::new(
                    "local_kv_cache_tokens",
                    "Key/value cache positions of the local engine by state (used, free)",
                ),
                &["state"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "local_tokens_total",
                    "Tokens the local engine read, by phase (prefill, decode)",
                ),
                &["phase"],
            )?,
            scraping: Mutex::new(()),
        };
        metrics.slots.set(gauge(slots));
        Ok(metrics)
    }
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for EngineMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.slots.desc(),
            self.sequences.desc(),
            self.cache_tokens.desc(),
            self.tokens.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape = self
            .scraping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let occupancy = &self.occupancy;
        for (state, value) in [
            ("running", occupancy.running()),
            ("waiting", occupancy.waiting()),
        ] {
            self.sequences.with_label_values(&[state]).set(gauge(value));
        }
        let (total, free) = (occupancy.cache_tokens(), occupancy.free_tokens());
        for (state, value) in [("used", total.saturating_sub(free)), ("free", free)] {
            self.cache_tokens
                .with_label_values(&[state])
                .set(gauge(value));
        }
        for (phase, total) in [
            ("prefill", occupancy.prefilled_tokens()),
            ("decode", occupancy.decoded_tokens()),
        ] {
            let counter = self.tokens.with_label_values(&[phase]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        [
            self.slots.collect(),
            self.sequences.collect(),
            self.cache_tokens.collect(),
            self.tokens.collect(),
        ]
        .concat()
    }
}
