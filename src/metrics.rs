//! Prometheus metrics: one registry for the whole process, rendered as text on
//! `GET /metrics`. Each concern registers its own series here.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from a fast refusal to a long generation.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    /// HTTP requests by endpoint and status code.
    pub http_requests: IntCounterVec,
    /// Time to the response head (for streams: to the first byte, not the last).
    pub http_latency: HistogramVec,
    /// Completed responses by how they were routed.
    pub routes: IntCounterVec,
    /// Local answers sent out, by what was wrong with them.
    pub escalations: IntCounterVec,
    pub policy: crate::policy::PolicyCounters,
    pub governor: GovernorMetrics,
}

/// The concurrency governor's series.
#[derive(Clone)]
pub struct GovernorMetrics {
    /// Requests waiting, by priority class.
    pub queue_depth: IntGaugeVec,
    /// Time from arrival to admission of admitted requests, by priority class.
    pub queue_wait: HistogramVec,
    /// Requests holding a permit, by backend.
    pub in_flight: IntGaugeVec,
    /// Requests the governor refused, by reason.
    pub rejections: IntCounterVec,
    /// Refusals by a per-minute limit, by agent and limit (`requests`, `tokens`).
    pub rate_limited: IntCounterVec,
}

impl GovernorMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            queue_depth: IntGaugeVec::new(
                Opts::new("governor_queue_depth", "Requests waiting by priority class"),
                &["class"],
            )?,
            queue_wait: HistogramVec::new(
                HistogramOpts::new(
                    "governor_queue_wait_seconds",
                    "Wait before admission by priority class",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["class"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("governor_in_flight", "Requests holding a permit by backend"),
                &["backend"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new(
                    "governor_rejections_total",
                    "Requests refused by the governor by reason",
                ),
                &["reason"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "governor_rate_limited_total",
                    "Requests refused by a per-minute limit by agent and limit",
                ),
                &["agent", "limit"],
            )?,
        };
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.queue_wait.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.rejections.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        Ok(metrics)
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("warden".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by endpoint and status",
            ),
            &["endpoint", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to the response head by endpoint",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let policy = crate::policy::PolicyCounters {
            decisions: IntCounterVec::new(
                Opts::new(
                    "policy_decisions_total",
                    "Tool-call decisions by verdict and reason code",
                ),
                &["verdict", "code"],
            )?,
            findings: IntCounterVec::new(
                Opts::new(
                    "output_findings_total",
                    "Personal data and secrets found in output, by detector and action",
                ),
                &["detector", "action"],
            )?,
        };
        let routes = IntCounterVec::new(
            Opts::new("routes_total", "Completed responses by route"),
            &["route"],
        )?;
        let escalations = IntCounterVec::new(
            Opts::new("escalations_total", "Local answers escalated, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(routes.clone()))?;
        registry.register(Box::new(escalations.clone()))?;
        let governor = GovernorMetrics::register(&registry)?;
        registry.register(Box::new(policy.decisions.clone()))?;
        registry.register(Box::new(policy.findings.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_latency,
            routes,
            escalations,
            governor,
            policy,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every registered series.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
