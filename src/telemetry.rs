//! Where warden's own account of its work goes: log lines on stderr (filtered by
//! `RUST_LOG`, `info` by default) and, when `telemetry.otlp_endpoint` is set, the same
//! spans as OpenTelemetry traces over OTLP/HTTP (protobuf) to a collector. A request's
//! span (`request`, see `api::chat`) is the root of its trace; queue wait, local
//! generation, each provider attempt, the tool-call gate and the audit commit are its
//! children.
//!
//! Export runs on the SDK's own thread in batches (`OTEL_BSP_SCHEDULE_DELAY`, 5 s by
//! default, and the other `OTEL_BSP_*` variables apply); a collector that is down costs
//! dropped spans, never a request.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The path OTLP/HTTP collectors take traces on.
const TRACES_PATH: &str = "/v1/traces";

/// The `telemetry` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); traces go to its
    /// `/v1/traces`. Unset: no traces, logs only.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

fn default_service_name() -> String {
    "warden".to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("`telemetry.otlp_endpoint` must be an http:// or https:// URL, not `{0}`")]
    Endpoint(String),
    #[error("`telemetry.service_name` must not be empty")]
    ServiceName,
    #[error("the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("logging was already set up")]
    AlreadyStarted,
}

impl TelemetryConfig {
    /// Checks the section; returns the URL traces are sent to, if any.
    pub fn validate(&self) -> Result<Option<String>, TelemetryError> {
        if self.service_name.trim().is_empty() {
            return Err(TelemetryError::ServiceName);
        }
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let parsed =
            url::Url::parse(endpoint).map_err(|_| TelemetryError::Endpoint(endpoint.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(TelemetryError::Endpoint(endpoint.clone()));
        }
        let base = endpoint.trim_end_matches('/');
        Ok(Some(if base.ends_with(TRACES_PATH) {
            base.to_string()
        } else {
            format!("{base}{TRACES_PATH}")
        }))
    }
}

/// Logging (and trace export) for the life of the process; dropping it sends what spans
/// are still queued.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Starts logging to stderr and, if `config` names a collector, trace export. Call
    /// it once, outside the async runtime: the exporter's client runs a runtime of its
    /// own.
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Colours only for a person at a terminal: in a file or a log collector the
        // escape codes would split every `key=value`.
        let log = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let traces = match config.validate()? {
            Some(url) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(url)
                    .build()?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            Resource::builder()
                                .with_service_name(config.service_name.clone())
                                .build(),
                        )
                        .build(),
                )
            }
            None => None,
        };
        let export = traces
            .as_ref()
            .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("warden")));
        tracing_subscriber::registry()
            .with(filter)
            .with(log)
            .with(export)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyStarted)?;
        Ok(Self { traces })
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warden: the last traces were not exported: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Result<Option<String>, TelemetryError> {
        TelemetryConfig {
            otlp_endpoint: Some(url.into()),
            ..TelemetryConfig::default()
        }
        .validate()
    }

    #[test]
    fn the_endpoint_is_a_base_url_that_gets_the_traces_path() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            endpoint("https://collector/otlp/").unwrap().as_deref(),
            Some("https://collector/otlp/v1/traces")
        );
        assert_eq!(
            endpoint("http://c:4318/v1/traces").unwrap().as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert!(endpoint("grpc://c:4317").is_err());
        assert!(endpoint("c:4318").is_err());
        assert_eq!(TelemetryConfig::default().validate().unwrap(), None);
    }
}
