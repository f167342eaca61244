//! Prometheus metrics: one registry for the whole process, rendered as text on
//! `GET /metrics`. Each concern registers its own series here.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from a fast refusal to a long generation.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Audit append latency, from a record queued to it durable: tens of microseconds to
/// the odd slow fsync.
const AUDIT_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Records per group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

pub struct Metrics {
    registry: Registry,
    /// The process's own series (CPU, memory, file descriptors) under the standard
    /// `process_` names dashboards already know, so without warden's prefix.
    process: Registry,
    /// HTTP requests by endpoint and status code.
    pub http_requests: IntCounterVec,
    /// Time to the response head (for streams: to the first byte, not the last).
    pub http_latency: HistogramVec,
    /// Completed responses by how they were routed.
    pub routes: IntCounterVec,
    /// Local answers sent out, by what was wrong with them.
    pub escalations: IntCounterVec,
    /// Providers passed over because every one of their slots was busy.
    pub providers_saturated: IntCounterVec,
    pub policy: PolicyCounters,
    pub governor: GovernorMetrics,
    pub requests: RequestMetrics,
    pub audit: AuditMetrics,
    pub connections: ConnectionMetrics,
}

/// The policy engine's counters.
#[derive(Clone)]
pub struct PolicyCounters {
    /// Tool-call decisions by verdict and reason code.
    pub decisions: IntCounterVec,
    /// Output findings acted on, by detector and action.
    pub findings: IntCounterVec,
}

/// The listener's connections.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections warden closed or refused, by reason (`full`, `evicted_idle`,
    /// `idle_timeout`).
    pub closed: IntCounterVec,
}

impl ConnectionMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            open: IntGauge::new("http_connections", "Client connections open")?,
            closed: IntCounterVec::new(
                Opts::new(
                    "http_connections_closed_total",
                    "Connections warden closed or refused, by reason",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(metrics.closed.clone()))?;
        for reason in ["full", "evicted_idle", "idle_timeout"] {
            metrics.closed.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}

/// Chat requests as the gateway saw them end (one per audit record).
#[derive(Clone)]
pub struct RequestMetrics {
    /// By route and status (`completed`, `refused`, `failed`, `cancelled`).
    pub requests: IntCounterVec,
    /// From receipt to the record written, by route.
    pub duration: HistogramVec,
    /// From receipt to the first content, by route.
    pub time_to_first_token: HistogramVec,
    /// By model and kind (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// US dollars by model. A float, for dashboards: the audit log is the ledger.
    pub cost_usd: CounterVec,
    /// Panics caught while handling a request (there should be none; each answered
    /// 500 or an error event), by where: `handler` before the answer, `response` while
    /// it streams.
    pub panics: IntCounterVec,
}

/// The audit log's writer.
#[derive(Clone)]
pub struct AuditMetrics {
    /// From an append queued to it durable.
    pub append_seconds: Histogram,
    pub batch_records: Histogram,
    /// Records written, by kind.
    pub records: IntCounterVec,
    /// Appends that failed (the request they recorded was not acknowledged).
    pub failures: IntCounter,
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
        let policy = PolicyCounters {
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
        let providers_saturated = IntCounterVec::new(
            Opts::new(
                "provider_saturated_total",
                "Attempts that found a provider's max_concurrency slots all busy and failed over at once, by provider",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(providers_saturated.clone()))?;
        let governor = GovernorMetrics::register(&registry)?;
        registry.register(Box::new(policy.decisions.clone()))?;
        registry.register(Box::new(policy.findings.clone()))?;
        let process = Registry::new();
        // Read from /proc: Linux only.
        #[cfg(target_os = "linux")]
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            process,
            connections: ConnectionMetrics::register(&registry)?,
            requests: RequestMetrics::register(&registry)?,
            audit: AuditMetrics::register(&registry)?,
            registry,
            http_requests,
            http_latency,
            routes,
            escalations,
            providers_saturated,
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
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels)?)
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

impl RequestMetrics {
    /// Counts a panic caught `at` (`PANIC_IN_HANDLER` or `PANIC_IN_RESPONSE`).
    pub fn count_panic(&self, at: &str) {
        self.panics.with_label_values(&[at]).inc();
    }

    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            requests: counter(
                registry,
                "requests_total",
                "Chat requests by route and final status",
                &["route", "status"],
            )?,
            duration: histogram(
                registry,
                "request_duration_seconds",
                "Chat request latency, receipt to record written, by route",
                LATENCY_BUCKETS,
                &["route"],
            )?,
            time_to_first_token: histogram(
                registry,
                "time_to_first_token_seconds",
                "Receipt to first content, by route",
                LATENCY_BUCKETS,
                &["route"],
            )?,
            tokens: counter(
                registry,
                "tokens_total",
                "Tokens by model and kind (prompt, completion)",
                &["model", "kind"],
            )?,
            cost_usd: register(
                registry,
                CounterVec::new(
                    Opts::new("cost_usd_total", "Spend in US dollars by model"),
                    &["model"],
                )?,
            )?,
            panics: {
                let panics = counter(
                    registry,
                    "panics_total",
                    "Panics caught while handling a request, by where",
                    &["at"],
                )?;
                // Present at zero, so an alert on any increase has a series to watch.
                for at in [PANIC_IN_HANDLER, PANIC_IN_RESPONSE] {
                    panics.with_label_values(&[at]);
                }
                panics
            },
        })
    }
}

/// Where a caught panic happened: before the answer started, or while it streamed.
pub const PANIC_IN_HANDLER: &str = "handler";
pub const PANIC_IN_RESPONSE: &str = "response";

impl AuditMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            append_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "audit_append_seconds",
                        "Audit append latency, queued to durable",
                    )
                    .buckets(AUDIT_BUCKETS.to_vec()),
                )?,
            )?,
            batch_records: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("audit_batch_records", "Records per audit group commit")
                        .buckets(BATCH_BUCKETS.to_vec()),
                )?,
            )?,
            records: counter(
                registry,
                "audit_records_total",
                "Audit records written, by kind",
                &["kind"],
            )?,
            failures: register(
                registry,
                IntCounter::new("audit_failures_total", "Audit appends that failed")?,
            )?,
        })
    }
}
