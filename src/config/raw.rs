//! The configuration file exactly as written: every section rejects unknown keys, and
//! every default is a named constant. `Config::from_raw` turns this into `Config`.
//! It also writes back out (`Serialize`), so a file built in code reads as one
//! written by hand: the tests build their configuration this way.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use crate::auth::AuthMode;
use crate::backend::local::Pooling;
pub use crate::governor::config::{
    DEFAULT_AGING_MS, DEFAULT_GOVERNOR_QUEUE_TIMEOUT_MS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PRIORITY,
    DEFAULT_PRIORITY_CEILING, DEFAULT_QUEUE_CAPACITY,
};
use crate::governor::Priority;

use super::routing::RawProvider;
use crate::route::config::RawRouting;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Large enough for long conversations with tool outputs, small enough that one
/// request cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Enough for a team's agents with keep-alive pools; well inside the file descriptors
/// warden raises its own limit to at start.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// A client has this long to send a request's head (slowloris gets no further).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// And this long for its body, at the largest body size far more than a slow link needs.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// A keep-alive connection with no request for this long is closed; clients' pools
/// reconnect on their own.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// OpenAI's own limit on the tools of one request.
pub const DEFAULT_MAX_TOOLS: usize = 128;
/// Far above any real tool's parameters (a few KiB), far below what would make
/// compiling and keeping it costly.
pub const DEFAULT_MAX_TOOL_SCHEMA_BYTES: usize = 64 * 1024;
/// Compiled tool schemas kept across requests, estimated; each agent may fill a quarter.
pub const DEFAULT_SCHEMA_CACHE_MIB: usize = 64;
/// Responses kept for `GET /v1/responses/{id}` and `previous_response_id`, estimated.
pub const DEFAULT_STORED_RESPONSES_MIB: usize = 64;
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
pub const DEFAULT_MODELS_DIR: &str = "../models";
pub const DEFAULT_DEVICE: &str = "cpu";
pub const DEFAULT_SLOTS: usize = 8;
/// Holds 23,000 positions of SmolLM2-135M (45 KiB each): several full 8,192-token
/// contexts, or dozens of ordinary requests.
pub const DEFAULT_KV_CACHE_MIB: usize = 1024;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 30_000;
/// A local generation that runs longer is stopped: at this machine's engine rates a
/// full 8,192-token prompt and a 512-token answer take well under a minute.
pub const DEFAULT_MAX_GENERATION_MS: u64 = 120_000;
pub const DEFAULT_MAX_TOKENS: u32 = 512;
pub const DEFAULT_ADMIN_KEY_ENV: &str = "WARDEN_ADMIN_KEY";
pub const DEFAULT_PRICES_FILE: &str = "prices.yaml";
/// Beside `models/`, git-ignored.
pub const DEFAULT_AUDIT_DIR: &str = "../data/audit";
/// No waiting: a commit takes what queued up during the previous fsync.
pub const DEFAULT_AUDIT_COMMIT_DELAY_US: u64 = 0;
pub const DEFAULT_AUDIT_MAX_BATCH: usize = 1024;
pub const DEFAULT_AUDIT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_RUN_MAX_STEPS: u32 = 200;
pub const DEFAULT_RUN_MAX_TOOL_CALLS: u32 = 200;
pub const DEFAULT_RUN_MAX_WALL_TIME_S: u64 = 4 * 3600;
/// US dollars, in cents.
pub const DEFAULT_RUN_MAX_COST_CENTS: i64 = 500;
/// An agent polling the same status a few times is normal; the sixth identical call in
/// one run is a loop.
pub const DEFAULT_RUN_MAX_REPEATED_TOOL_CALLS: u32 = 5;
pub const DEFAULT_RUN_IDLE_EXPIRY_S: u64 = 24 * 3600;
pub const DEFAULT_POLICY_FILE: &str = "policy.yaml";
/// Tickets live with the other runtime state, outside the operator's config folder.
pub const DEFAULT_APPROVALS_FILE: &str = "../data/approvals.jsonl";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    #[serde(default)]
    pub local: RawLocal,
    /// Prices file (relative to this file); `prices.yaml` beside it when present.
    pub prices: Option<String>,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub runs: RawRuns,
    #[serde(default)]
    pub governor: RawGovernor,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub policy: RawPolicySettings,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicySettings {
    /// Tool-call policy (relative to this file); `policy.yaml` beside it. Without one,
    /// every tool call is denied.
    pub file: Option<String>,
    /// Where approval tickets are kept (relative to this file).
    pub approvals_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address the gateway listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413 (at once when
    /// `Content-Length` says so).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections open at once. A new one past it closes the connection idle longest;
    /// with none idle it is answered 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's head; the connection is closed after it.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body once its head is read: 408 after it.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// A connection without a request in progress for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most tools one request may offer.
    #[serde(default = "default_max_tools")]
    pub max_tools: usize,
    /// Largest JSON schema one tool's `parameters` may be, in bytes as sent.
    #[serde(default = "default_max_tool_schema_bytes")]
    pub max_tool_schema_bytes: usize,
    /// Memory for compiled tool schemas kept across requests, in MiB (estimated from
    /// their size); one agent may hold a quarter of it.
    #[serde(default = "default_schema_cache_mib")]
    pub schema_cache_mib: usize,
    /// Memory for stored Responses-API responses and their conversations, in MiB
    /// (estimated); past it the oldest are forgotten first.
    #[serde(default = "default_stored_responses_mib")]
    pub stored_responses_mib: usize,
    /// Who may read `/metrics`, and where.
    #[serde(default)]
    pub metrics: RawMetrics,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_tools: default_max_tools(),
            max_tool_schema_bytes: default_max_tool_schema_bytes(),
            schema_cache_mib: default_schema_cache_mib(),
            stored_responses_mib: default_stored_responses_mib(),
            metrics: RawMetrics::default(),
        }
    }
}

/// Who may read `/metrics`: its series name models, agents and spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAccess {
    /// The admin key, as a bearer token (Prometheus: `authorization: {credentials_file}`).
    #[default]
    AdminKey,
    /// Anyone who can reach the listener: for a `listen` address only scrapers reach.
    Open,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    pub access: MetricsAccess,
    /// A listener of its own for `/metrics` (e.g. `10.0.0.5:9464`); the API listener
    /// then no longer serves it.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub mode: AuthMode,
    /// The agent keyless requests act as in `open` mode.
    pub open_agent: Option<String>,
    /// Environment variable holding the admin key.
    #[serde(default = "default_admin_key_env")]
    pub admin_key_env: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            mode: AuthMode::default(),
            open_agent: None,
            admin_key_env: default_admin_key_env(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub id: String,
    pub tenant: String,
    #[serde(default)]
    pub role: Option<String>,
    /// Hex SHA-256 digest of the agent's key (the key itself never appears in the file).
    pub key_sha256: Option<String>,
    /// Environment variable holding the agent's key.
    pub key_env: Option<String>,
    /// This agent's run budgets, each overriding `runs.defaults`.
    #[serde(default)]
    pub runs: Option<RawRunLimits>,
    /// observe, suggest, auto_low or guarded (the default): how far the agent's tool
    /// calls may go without a human.
    #[serde(default)]
    pub autonomy: crate::policy::AutonomyMode,
    /// Highest class the agent may claim; higher requests are lowered to it.
    pub priority_ceiling: Option<Priority>,
    /// The class of the agent's requests that name none.
    pub default_priority: Option<Priority>,
    /// Requests of this agent in flight at once; absent means only the global cap.
    pub max_concurrent: Option<usize>,
    pub requests_per_minute: Option<u64>,
    /// Prompt plus completion tokens a minute, debited when each request completes.
    pub tokens_per_minute: Option<u64>,
    /// US dollars a UTC day.
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily_spend_usd: Option<Decimal>,
    /// US dollars a UTC calendar month.
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub monthly_spend_usd: Option<Decimal>,
}

/// The concurrency governor: caps, queues, aging, tenants' spend caps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernor {
    /// Requests in flight at once across every agent and backend.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How many requests of each class may wait; beyond it a request gets 429.
    #[serde(default)]
    pub queue_capacity: RawQueueCapacity,
    /// Longest wait in the queue before 503.
    #[serde(default = "default_governor_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// A waiting request gains one priority class per this many milliseconds.
    #[serde(default = "default_aging_ms")]
    pub aging_ms: u64,
    /// Spend caps by tenant name.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
}

impl Default for RawGovernor {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            queue_capacity: RawQueueCapacity::default(),
            queue_timeout_ms: default_governor_queue_timeout_ms(),
            aging_ms: default_aging_ms(),
            tenants: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueueCapacity {
    #[serde(rename = "P0", default = "default_queue_capacity")]
    pub p0: usize,
    #[serde(rename = "P1", default = "default_queue_capacity")]
    pub p1: usize,
    #[serde(rename = "P2", default = "default_queue_capacity")]
    pub p2: usize,
}

impl Default for RawQueueCapacity {
    fn default() -> Self {
        Self {
            p0: DEFAULT_QUEUE_CAPACITY,
            p1: DEFAULT_QUEUE_CAPACITY,
            p2: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily_spend_usd: Option<Decimal>,
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub monthly_spend_usd: Option<Decimal>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// A manifest name under `models_dir`, or a path to a GGUF file.
    #[serde(default = "default_model")]
    pub model: String,
    /// Where manifests and fetched weights live (relative to this file).
    #[serde(default = "default_models_dir")]
    pub models_dir: String,
    /// `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU threads for the engine; absent means one per available core.
    pub threads: Option<usize>,
    /// Generations decoded together in one batch; more wait in the queue.
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// Memory for the key/value cache, in MiB, allocated once. Each generation reserves
    /// room for its prompt and `max_tokens` when it joins the batch, and waits while
    /// the cache is full.
    #[serde(default = "default_kv_cache_mib")]
    pub kv_cache_mib: usize,
    /// How long a request may wait for a free slot before 503.
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Longest a local generation may run, prompt and answer, from joining the batch;
    /// it is stopped then (reason `generation_deadline`).
    #[serde(default = "default_max_generation_ms")]
    pub max_generation_ms: u64,
    /// Completion length when the request does not set `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// Fetch the model on start-up when its file is absent.
    #[serde(default = "default_true")]
    pub fetch_on_start: bool,
    /// `mean` or `last`: the model answers `/v1/embeddings` too, its token states
    /// pooled this way. Absent: it serves chat only.
    pub embedding_pooling: Option<Pooling>,
}

impl Default for RawLocal {
    fn default() -> Self {
        Self {
            model: default_model(),
            models_dir: default_models_dir(),
            device: default_device(),
            threads: None,
            slots: default_slots(),
            kv_cache_mib: default_kv_cache_mib(),
            queue_timeout_ms: default_queue_timeout_ms(),
            max_generation_ms: default_max_generation_ms(),
            default_max_tokens: default_max_tokens(),
            fetch_on_start: true,
            embedding_pooling: None,
        }
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_header_read_timeout_ms() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}
fn default_body_read_timeout_ms() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_MS
}
fn default_idle_timeout_ms() -> u64 {
    DEFAULT_IDLE_TIMEOUT_MS
}
fn default_max_tools() -> usize {
    DEFAULT_MAX_TOOLS
}
fn default_max_tool_schema_bytes() -> usize {
    DEFAULT_MAX_TOOL_SCHEMA_BYTES
}
fn default_schema_cache_mib() -> usize {
    DEFAULT_SCHEMA_CACHE_MIB
}
fn default_stored_responses_mib() -> usize {
    DEFAULT_STORED_RESPONSES_MIB
}
fn default_max_generation_ms() -> u64 {
    DEFAULT_MAX_GENERATION_MS
}
fn default_admin_key_env() -> String {
    DEFAULT_ADMIN_KEY_ENV.into()
}
fn default_model() -> String {
    DEFAULT_MODEL.into()
}
fn default_models_dir() -> String {
    DEFAULT_MODELS_DIR.into()
}
fn default_device() -> String {
    DEFAULT_DEVICE.into()
}
fn default_slots() -> usize {
    DEFAULT_SLOTS
}
fn default_kv_cache_mib() -> usize {
    DEFAULT_KV_CACHE_MIB
}
fn default_queue_timeout_ms() -> u64 {
    DEFAULT_QUEUE_TIMEOUT_MS
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Folder of the audit log (relative to this file).
    #[serde(default = "default_audit_dir")]
    pub dir: String,
    /// Make each group commit durable (fdatasync) before acknowledging its requests.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// How long the writer waits for more records before a commit, in microseconds.
    #[serde(default = "default_audit_commit_delay_us")]
    pub commit_delay_us: u64,
    /// Most records in one commit.
    #[serde(default = "default_audit_max_batch")]
    pub max_batch: usize,
    /// A segment is closed, and the next begun, once it passes this size.
    #[serde(default = "default_audit_segment_bytes")]
    pub segment_bytes: u64,
    /// Keep prompts and completions in clear; by default only their SHA-256 and size.
    #[serde(default)]
    pub store_text: bool,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            dir: default_audit_dir(),
            fsync: true,
            commit_delay_us: DEFAULT_AUDIT_COMMIT_DELAY_US,
            max_batch: DEFAULT_AUDIT_MAX_BATCH,
            segment_bytes: DEFAULT_AUDIT_SEGMENT_BYTES,
            store_text: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuns {
    /// Budgets of every run, unless its agent sets its own.
    #[serde(default)]
    pub defaults: RawRunLimits,
    /// A run without a request for this long is forgotten; at least every
    /// `max_wall_time_s`, or idling would reset a run's clock.
    pub idle_expiry_s: Option<u64>,
}

/// Run budgets; an absent field takes the default (`runs.defaults`, then the constant).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunLimits {
    /// Requests per run.
    pub max_steps: Option<u32>,
    /// Tool calls returned per run.
    pub max_tool_calls: Option<u32>,
    /// Seconds from a run's first request after which it may make no more.
    pub max_wall_time_s: Option<u64>,
    /// US dollars per run (a string such as "5.00", or a number).
    #[serde(
        default,
        deserialize_with = "crate::cost::optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cost_usd: Option<rust_decimal::Decimal>,
    /// Identical tool calls (same name and arguments) allowed per run; more is a loop.
    pub max_repeated_tool_calls: Option<u32>,
}

fn default_audit_dir() -> String {
    DEFAULT_AUDIT_DIR.into()
}
fn default_audit_commit_delay_us() -> u64 {
    DEFAULT_AUDIT_COMMIT_DELAY_US
}
fn default_audit_max_batch() -> usize {
    DEFAULT_AUDIT_MAX_BATCH
}
fn default_audit_segment_bytes() -> u64 {
    DEFAULT_AUDIT_SEGMENT_BYTES
}
fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_governor_queue_timeout_ms() -> u64 {
    DEFAULT_GOVERNOR_QUEUE_TIMEOUT_MS
}
fn default_aging_ms() -> u64 {
    DEFAULT_AGING_MS
}
