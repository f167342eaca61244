//! Typed configuration (`routing/warden.yaml`): read raw with unknown keys refused,
//! then validated into the types the rest of warden uses. Every error names the file
//! and the key.

mod governor;
mod keys;
pub mod raw;
mod records;
pub mod routing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::auth::{AuthConfig, AuthMode, KeySource};
pub use crate::governor::{AgentLimits, GovernorConfig};
pub use crate::policy::PolicyConfig;
pub use raw::MetricsAccess;
use raw::{RawAgent, RawConfig, RawLocal};

use crate::audit::AuditConfig;
pub use crate::backend::local::{DeviceSpec, Pooling};
pub use crate::backend::provider::config::{ProviderConfig, ProviderKind};
use crate::cost::PriceTable;
use crate::route::config::validate_routing;
pub use crate::route::config::{RoutingConfig, Thresholds};
use crate::route::TableSource;
use crate::runs::RunsConfig;
use crate::telemetry::{TelemetryConfig, TelemetryError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}")]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
    /// A file read for a reload that cannot be what its operator meant.
    #[error("{file}: {message}")]
    Incomplete { file: PathBuf, message: String },
}

/// The longest anything may be made to wait for one thing (a queue, a provider, a slow
/// client, a generation): an hour. A larger figure is a typo, and a deadline that far
/// out could overflow the clock it is added to.
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// A wait of `value` milliseconds read from `key`: above 0 (every wait needs a
/// deadline) and at most `MAX_WAIT_MS`.
pub(crate) fn wait_ms(key: &str, value: u64) -> Result<Duration, Invalid> {
    if value == 0 {
        return Err((
            key.to_string(),
            "must be above 0: every wait needs a deadline".into(),
        ));
    }
    if value > MAX_WAIT_MS {
        return Err((
            key.to_string(),
            format!("must be at most {MAX_WAIT_MS} (an hour)"),
        ));
    }
    Ok(Duration::from_millis(value))
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths inside it resolve against its folder.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub agents: Vec<AgentConfig>,
    pub local: LocalConfig,
    pub prices: PriceTable,
    pub audit: AuditConfig,
    pub runs: RunsConfig,
    pub governor: GovernorConfig,
    pub providers: Vec<ProviderConfig>,
    pub routing: RoutingConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_tools: usize,
    pub max_tool_schema_bytes: usize,
    pub schema_cache_bytes: usize,
    pub stored_responses_bytes: usize,
    pub metrics_access: MetricsAccess,
    /// `/metrics` on a listener of its own, not the API's.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub id: String,
    pub tenant: String,
    pub role: Option<String>,
    pub key: KeySource,
    pub limits: AgentLimits,
    pub autonomy: crate::policy::AutonomyMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    pub model: String,
    pub models_dir: PathBuf,
    pub device: DeviceSpec,
    pub threads: usize,
    pub slots: usize,
    /// Key/value cache budget in bytes.
    pub kv_cache_bytes: usize,
    pub queue_timeout: Duration,
    pub max_generation: Duration,
    pub default_max_tokens: u32,
    pub fetch_on_start: bool,
    pub embedding_pooling: Option<Pooling>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_yaml(&read(path)?, path)
    }

    /// The file read again at run time: as `load`, but an empty or cut-short file is
    /// refused rather than read as defaults.
    pub fn reload(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        crate::reload::check_reloaded_text(&text).map_err(|message| ConfigError::Incomplete {
            file: path.to_path_buf(),
            message,
        })?;
        Self::from_yaml(&text, path)
    }

    /// What differs between this running configuration and `reloaded` in the parts a
    /// reload does not apply (read at start only): each named by its key, so the
    /// operator learns a restart is needed instead of believing the change took.
    pub fn restart_only_changes(&self, reloaded: &Config) -> Vec<String> {
        let (now, next) = (&self.local, &reloaded.local);
        let local = [
            ("local.model", now.model != next.model),
            ("local.models_dir", now.models_dir != next.models_dir),
            ("local.device", now.device != next.device),
            ("local.threads", now.threads != next.threads),
            ("local.slots", now.slots != next.slots),
            (
                "local.kv_cache_mib",
                now.kv_cache_bytes != next.kv_cache_bytes,
            ),
            (
                "local.queue_timeout_ms",
                now.queue_timeout != next.queue_timeout,
            ),
            (
                "local.max_generation_ms",
                now.max_generation != next.max_generation,
            ),
            (
                "local.default_max_tokens",
                now.default_max_tokens != next.default_max_tokens,
            ),
            (
                "local.fetch_on_start",
                now.fetch_on_start != next.fetch_on_start,
            ),
            (
                "local.embedding_pooling",
                now.embedding_pooling != next.embedding_pooling,
            ),
        ];
        let sections = [
            ("server", self.server != reloaded.server),
            ("auth", self.auth != reloaded.auth),
            ("agents", self.agents != reloaded.agents),
            ("audit", self.audit != reloaded.audit),
            ("runs", self.runs != reloaded.runs),
            ("governor", self.governor != reloaded.governor),
            ("policy", self.policy != reloaded.policy),
            ("telemetry", self.telemetry != reloaded.telemetry),
        ];
        local
            .into_iter()
            .chain(sections)
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key.to_string())
            .collect()
    }

    /// Parses `text` as if read from `path` (used for relative paths and messages).
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // An empty file means "all defaults".
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            let deserializer = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                ConfigError::Invalid {
                    file: path.to_path_buf(),
                    key: error.path().to_string(),
                    message: error.into_inner().to_string(),
                }
            })?
        };
        Self::from_raw(raw, path)
    }

    /// Validates a configuration already in the file's typed form, as if read from
    /// `path` (used for relative paths and messages).
    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        validate(raw, path).map_err(|(key, message)| ConfigError::Invalid {
            file: path.to_path_buf(),
            key,
            message,
        })
    }

    pub fn agent(&self, id: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|agent| agent.id == id)
    }

    /// The parts of this configuration a routing table holds.
    pub fn table_source(&self) -> TableSource<'_> {
        TableSource {
            providers: &self.providers,
            routing: &self.routing,
            prices: &self.prices,
            agents: self.agents.iter().map(|agent| agent.id.clone()).collect(),
            queue_timeout: self.governor.queue_timeout,
        }
    }
}

type Invalid = (String, String);

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        error: source,
    })
}

fn validate(mut raw: RawConfig, path: &Path) -> Result<Config, Invalid> {
    let base = path.parent().unwrap_or(Path::new("."));
    let listen = address("server.listen", &raw.server.listen)?;
    let server = validate_server(raw.server, listen)?;

    let run_overrides = raw
        .agents
        .iter_mut()
        .enumerate()
        .map(|(index, agent)| (index, agent.id.clone(), agent.runs.take()))
        .collect();
    let agents = raw
        .agents
        .into_iter()
        .enumerate()
        .map(|(index, agent)| validate_agent(index, agent))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, agent) in agents.iter().enumerate() {
        if agents[..index].iter().any(|other| other.id == agent.id) {
            return Err((
                format!("agents[{index}].id"),
                format!("agent `{}` is declared twice", agent.id),
            ));
        }
    }

    let auth = AuthConfig {
        mode: raw.auth.mode,
        open_agent: raw.auth.open_agent,
        admin_key_env: raw.auth.admin_key_env,
    };
    match (&auth.mode, &auth.open_agent) {
        (AuthMode::Open, None) => {
            return Err((
                "auth.open_agent".into(),
                "`mode: open` needs the agent that keyless requests act as".into(),
            ))
        }
        (AuthMode::Open, Some(id)) if !agents.iter().any(|a| &a.id == id) => {
            return Err((
                "auth.open_agent".into(),
                format!("no agent `{id}` is declared under `agents`"),
            ))
        }
        (AuthMode::Keys, Some(_)) => {
            return Err((
                "auth.open_agent".into(),
                "only meaningful with `mode: open`".into(),
            ))
        }
        _ => {}
    }
    if !is_env_name(&auth.admin_key_env) {
        return Err((
            "auth.admin_key_env".into(),
            format!(
                "`{}` is not an environment variable name",
                auth.admin_key_env
            ),
        ));
    }

    let mut prices = load_prices(raw.prices.as_deref(), base)?;
    for (model, price) in routing::provider_prices(&raw.providers)? {
        prices
            .add(&model, price)
            .map_err(|message| ("providers".to_string(), message))?;
    }
    prices.check_escalation_model().map_err(|(key, message)| {
        let file = raw.prices.as_deref().unwrap_or(raw::DEFAULT_PRICES_FILE);
        ("prices".to_string(), format!("{file}: `{key}`: {message}"))
    })?;
    let providers = routing::validate_providers(raw.providers)?;
    let agent_ids: Vec<String> = agents.iter().map(|agent| agent.id.clone()).collect();
    let governor = governor::validate_governor(raw.governor, &agents)?;
    let routing = validate_routing(
        raw.routing,
        &providers,
        &agent_ids,
        governor.queue_timeout,
        "routing.",
    )?;

    Ok(Config {
        path: path.to_path_buf(),
        server,
        auth,
        local: validate_local(raw.local, base)?,
        prices,
        audit: records::validate_audit(raw.audit, base)?,
        runs: records::validate_runs(raw.runs, run_overrides)?,
        governor,
        agents,
        providers,
        routing,
        policy: PolicyConfig {
            file: base.join(
                raw.policy
                    .file
                    .as_deref()
                    .unwrap_or(raw::DEFAULT_POLICY_FILE),
            ),
            file_named: raw.policy.file.is_some(),
            approvals_file: base.join(
                raw.policy
                    .approvals_file
                    .as_deref()
                    .unwrap_or(raw::DEFAULT_APPROVALS_FILE),
            ),
        },
        telemetry: validate_telemetry(raw.telemetry)?,
    })
}

fn validate_telemetry(telemetry: TelemetryConfig) -> Result<TelemetryConfig, Invalid> {
    match telemetry.validate() {
        Ok(_) => Ok(telemetry),
        Err(error) => {
            let key = match error {
                TelemetryError::ServiceName => "telemetry.service_name",
                _ => "telemetry.otlp_endpoint",
            };
            Err((key.to_string(), error.to_string()))
        }
    }
}

fn address(key: &str, text: &str) -> Result<SocketAddr, Invalid> {
    text.parse::<SocketAddr>().map_err(|e| {
        (
            key.to_string(),
            format!("`{text}` is not an address like 127.0.0.1:8080: {e}"),
        )
    })
}

/// The most connections a figure may ask for; the file descriptors bound it further at
/// start.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// An idle keep-alive connection is closed within a day at the latest.
const MAX_IDLE_TIMEOUT_MS: u64 = 24 * 3_600_000;

fn validate_server(server: raw::RawServer, listen: SocketAddr) -> Result<ServerConfig, Invalid> {
    if server.max_body_bytes < 1024 {
        return Err((
            "server.max_body_bytes".into(),
            "must be at least 1024 bytes".into(),
        ));
    }
    if server.max_connections == 0 || server.max_connections > MAX_CONNECTIONS_LIMIT {
        return Err((
            "server.max_connections".into(),
            format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
        ));
    }
    if server.idle_timeout_ms == 0 || server.idle_timeout_ms > MAX_IDLE_TIMEOUT_MS {
        return Err((
            "server.idle_timeout_ms".into(),
            format!("must be between 1 and {MAX_IDLE_TIMEOUT_MS} (a day)"),
        ));
    }
    if server.max_tools == 0 || server.max_tools > 10_000 {
        return Err((
            "server.max_tools".into(),
            "must be between 1 and 10000".into(),
        ));
    }
    if server.max_tool_schema_bytes < 1024 || server.max_tool_schema_bytes > server.max_body_bytes {
        return Err((
            "server.max_tool_schema_bytes".into(),
            "must be at least 1024 and at most `max_body_bytes`".into(),
        ));
    }
    // 64 GiB: past that the figure is a typo, not a budget.
    if server.schema_cache_mib == 0 || server.schema_cache_mib > 1 << 16 {
        return Err((
            "server.schema_cache_mib".into(),
            "must be between 1 and 65536 (MiB)".into(),
        ));
    }
    if server.stored_responses_mib > 1 << 16 {
        return Err((
            "server.stored_responses_mib".into(),
            "must be at most 65536 (MiB); 0 stores no responses".into(),
        ));
    }
    let metrics_listen = server
        .metrics
        .listen
        .as_deref()
        .map(|text| address("server.metrics.listen", text))
        .transpose()?;
    if metrics_listen.is_some_and(|metrics| metrics == listen && listen.port() != 0) {
        return Err((
            "server.metrics.listen".into(),
            "must differ from `server.listen`".into(),
        ));
    }
    Ok(ServerConfig {
        listen,
        max_body_bytes: server.max_body_bytes,
        max_connections: server.max_connections,
        header_read_timeout: wait_ms(
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
        )?,
        body_read_timeout: wait_ms("server.body_read_timeout_ms", server.body_read_timeout_ms)?,
        idle_timeout: Duration::from_millis(server.idle_timeout_ms),
        max_tools: server.max_tools,
        max_tool_schema_bytes: server.max_tool_schema_bytes,
        schema_cache_bytes: server.schema_cache_mib << 20,
        stored_responses_bytes: server.stored_responses_mib << 20,
        metrics_access: server.metrics.access,
        metrics_listen,
    })
}

/// An explicitly named prices file must exist; the default one is optional.
fn load_prices(named: Option<&str>, base: &Path) -> Result<PriceTable, Invalid> {
    let path = base.join(named.unwrap_or(raw::DEFAULT_PRICES_FILE));
    if named.is_none() && !path.exists() {
        return Ok(PriceTable::default());
    }
    PriceTable::load(&path).map_err(|(key, message)| {
        (
            "prices".to_string(),
            format!("{}: `{key}`: {message}", path.display()),
        )
    })
}

fn validate_agent(index: usize, agent: RawAgent) -> Result<AgentConfig, Invalid> {
    let key = |field: &str| format!("agents[{index}].{field}");
    if agent.id.trim().is_empty() {
        return Err((key("id"), "must not be empty".into()));
    }
    if agent.tenant.trim().is_empty() {
        return Err((key("tenant"), "must not be empty".into()));
    }
    let limits = governor::validate_agent_limits(index, &agent)?;
    let source = match (agent.key_sha256, agent.key_env) {
        (Some(digest), None) => {
            let digest = digest.to_ascii_lowercase();
            if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err((
                    key("key_sha256"),
                    "must be 64 hex characters (sha256 of the key)".into(),
                ));
            }
            KeySource::Sha256(digest)
        }
        (None, Some(env)) => {
            if !is_env_name(&env) {
                return Err((
                    key("key_env"),
                    format!("`{env}` is not an environment variable name"),
                ));
            }
            KeySource::Env(env)
        }
        (Some(_), Some(_)) => {
            return Err((
                key("key_env"),
                "give either `key_sha256` or `key_env`, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                key("key_sha256"),
                "each agent needs `key_sha256` or `key_env` (keys never appear in clear)".into(),
            ))
        }
    };
    Ok(AgentConfig {
        id: agent.id,
        tenant: agent.tenant,
        role: agent.role,
        key: source,
        limits,
        autonomy: agent.autonomy,
    })
}

fn validate_local(local: RawLocal, base: &Path) -> Result<LocalConfig, Invalid> {
    let device = local
        .device
        .parse::<DeviceSpec>()
        .map_err(|message| ("local.device".to_string(), message))?;
    if local.slots == 0 || local.slots > 64 {
        return Err(("local.slots".into(), "must be between 1 and 64".into()));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match local.threads {
        Some(0) => return Err(("local.threads".into(), "must be at least 1".into())),
        // More workers than this only take turns on the same cores.
        Some(threads) if threads > MAX_THREADS_PER_CORE * cores => {
            return Err((
                "local.threads".into(),
                format!(
                    "at most {} ({MAX_THREADS_PER_CORE} per core of this machine's {cores})",
                    MAX_THREADS_PER_CORE * cores
                ),
            ))
        }
        Some(threads) => threads,
        None => cores,
    };
    // The cache is allocated whole at start: more than the machine has cannot work.
    let memory_mib = physical_memory_mib().unwrap_or(1 << 20);
    if local.kv_cache_mib == 0 || local.kv_cache_mib > memory_mib {
        return Err((
            "local.kv_cache_mib".into(),
            format!("must be between 1 and {memory_mib} (this machine's memory, in MiB)"),
        ));
    }
    if local.default_max_tokens == 0 {
        return Err((
            "local.default_max_tokens".into(),
            "must be at least 1".into(),
        ));
    }
    if local.model.trim().is_empty() {
        return Err(("local.model".into(), "must name a model".into()));
    }
    if local.embedding_pooling.is_some() && device != DeviceSpec::Cpu {
        return Err((
            "local.embedding_pooling".into(),
            "the local model serves embeddings on the CPU only (`local.device: cpu`)".into(),
        ));
    }
    Ok(LocalConfig {
        model: local.model,
        models_dir: base.join(local.models_dir),
        device,
        threads,
        slots: local.slots,
        kv_cache_bytes: local.kv_cache_mib << 20,
        queue_timeout: wait_ms("local.queue_timeout_ms", local.queue_timeout_ms)?,
        max_generation: wait_ms("local.max_generation_ms", local.max_generation_ms)?,
        default_max_tokens: local.default_max_tokens,
        fetch_on_start: local.fetch_on_start,
        embedding_pooling: local.embedding_pooling,
    })
}

/// Engine workers per core beyond which more only take turns.
const MAX_THREADS_PER_CORE: usize = 4;

/// The machine's memory in MiB, where the system says (Linux).
fn physical_memory_mib() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("routing/warden.yaml"))
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, file, .. }) => {
                assert_eq!(file, Path::new("routing/warden.yaml"));
                key
            }
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.listen.to_string(), raw::DEFAULT_LISTEN);
        assert_eq!(config.local.slots, raw::DEFAULT_SLOTS);
        assert_eq!(config.local.models_dir, Path::new("routing/../models"));
        assert_eq!(config.auth.mode, AuthMode::Keys);
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(invalid_key("local:\n  slot: 3\n"), "local.slot");
        let err = parse("local:\n  slot: 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `slot`"), "{err}");
        assert_eq!(invalid_key("bogus: 1\n"), "bogus");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(invalid_key("server:\n  listen: nowhere\n"), "server.listen");
        assert_eq!(invalid_key("local:\n  slots: 0\n"), "local.slots");
        assert_eq!(invalid_key("local:\n  device: tpu\n"), "local.device");
        assert_eq!(
            invalid_key("local:\n  embedding_pooling: max\n"),
            "local.embedding_pooling"
        );
        assert_eq!(
            invalid_key("local:\n  device: cuda\n  embedding_pooling: mean\n"),
            "local.embedding_pooling"
        );
        assert_eq!(
            invalid_key("local:\n  kv_cache_mib: 0\n"),
            "local.kv_cache_mib"
        );
        assert_eq!(invalid_key("local:\n  slots: many\n"), "local.slots");
        assert_eq!(
            invalid_key("agents:\n  - id: a\n    tenant: t\n"),
            "agents[0].key_sha256"
        );
        assert_eq!(
            invalid_key("agents:\n  - id: a\n    tenant: t\n    key_sha256: abc\n"),
            "agents[0].key_sha256"
        );
        assert_eq!(
            invalid_key(
                "agents:\n  - {id: a, tenant: t, key_env: A}\n  - {id: a, tenant: t, key_env: B}\n"
            ),
            "agents[1].id"
        );
        assert_eq!(invalid_key("auth:\n  mode: open\n"), "auth.open_agent");
        assert_eq!(invalid_key("prices: missing.yaml\n"), "prices");
    }

    const PROVIDERS: &str = "providers:
  - name: openai
    kind: openai
    base_url: http://127.0.0.1:9/v1/
    api_key_env: OPENAI_KEY
    models:
      - {name: gpt-small, upstream: gpt-4o-mini, input_per_million: 0.15, output_per_million: \"0.60\"}
  - name: claude
    kind: anthropic
    base_url: http://127.0.0.1:9/v1
    default_max_tokens: 512
    retries: 0
    models: [{name: haiku}]
agents:
  - {id: a, tenant: t, key_env: A}
";

    #[test]
    fn providers_and_routing_parse_with_defaults_and_overrides() {
        let text = format!(
            "{PROVIDERS}routing:\n  escalation_models: [gpt-small, haiku]\n  min_mean_logprob: -0.7\n  label_risk: {{env=prod: 80}}\n  agents:\n    a: {{min_token_logprob: -5}}\n"
        );
        let config = parse(&text).unwrap();
        let openai = &config.providers[0];
        assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(openai.models[0].upstream, "gpt-4o-mini");
        assert_eq!(
            openai.retries,
            crate::backend::provider::config::DEFAULT_PROVIDER_RETRIES
        );
        assert_eq!(config.providers[1].default_max_tokens, 512);
        assert_eq!(config.providers[1].models[0].upstream, "haiku");
        let usage = crate::chat::Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            cached_prompt_tokens: 0,
        };
        assert_eq!(
            config
                .prices
                .cost(&crate::cost::Metered::tokens("openai", "gpt-small", usage)),
            Some(rust_decimal::Decimal::new(75, 2))
        );
        let routing = &config.routing;
        assert_eq!(routing.escalation_models, ["gpt-small", "haiku"]);
        assert_eq!(routing.thresholds.min_mean_logprob, -0.7);
        assert_eq!(
            routing.thresholds.min_token_logprob,
            crate::route::config::DEFAULT_MIN_TOKEN_LOGPROB
        );
        let a = routing.thresholds_for("a");
        assert_eq!((a.min_mean_logprob, a.min_token_logprob), (-0.7, -5.0));
        assert!(routing.verify_before_stream);
        // The governor's default queue timeout leaves room for the default fallback.
        assert_eq!(
            routing.local_queue_fallback(),
            Some(std::time::Duration::from_millis(
                crate::route::config::DEFAULT_LOCAL_QUEUE_FALLBACK_MS
            ))
        );
        // A shorter queue timeout: a quarter of it. 0: off.
        let short = parse(&format!(
            "{PROVIDERS}governor:\n  queue_timeout_ms: 1000\n  aging_ms: 100\n"
        ))
        .unwrap();
        assert_eq!(
            short.routing.local_queue_fallback(),
            Some(std::time::Duration::from_millis(250))
        );
        let off = parse(&format!(
            "{PROVIDERS}routing:\n  local_queue_fallback_ms: 0\n"
        ))
        .unwrap();
        assert_eq!(off.routing.local_queue_fallback(), None);
    }

    #[test]
    fn bad_providers_and_routing_name_their_key() {
        let with = |tail: &str| invalid_key(&format!("{PROVIDERS}{tail}"));
        assert_eq!(
            with("routing:\n  escalation_models: [gpt-large]\n"),
            "routing.escalation_models[0]"
        );
        assert_eq!(
            invalid_key("providers:\n  - {name: p, kind: anthropic, base_url: http://h, models: [{name: e, kind: embedding}]}\n"),
            "providers[0].models[0].kind"
        );
        // An embedding model answers no chat, so it cannot be escalated to.
        assert_eq!(
            invalid_key("providers:\n  - {name: p, kind: openai, base_url: http://h, models: [{name: e, kind: embedding}]}\nrouting:\n  escalation_models: [e]\n"),
            "routing.escalation_models[0]"
        );
        assert_eq!(
            with("routing:\n  agents:\n    ghost: {min_mean_logprob: -1}\n"),
            "routing.agents.ghost."
        );
        assert_eq!(
            with("routing:\n  agents:\n    a: {min_mean_logprob: 0.5}\n"),
            "routing.agents.a.min_mean_logprob"
        );
        assert_eq!(
            with("routing:\n  label_risk: {prod: 10}\n"),
            "routing.label_risk.prod"
        );
        assert_eq!(
            with("routing:\n  min_mean_logprb: -1\n"),
            "routing.min_mean_logprb"
        );
        assert_eq!(
            with("governor:\n  queue_timeout_ms: 1000\n  aging_ms: 100\nrouting:\n  local_queue_fallback_ms: 1000\n"),
            "routing.local_queue_fallback_ms"
        );
        let provider = |fields: &str| {
            invalid_key(&format!(
                "providers:\n  - {{name: p, kind: openai, base_url: http://h/v1, models: [{{name: m}}]{fields}}}\n"
            ))
        };
        assert_eq!(
            provider(", max_concurrency: 0"),
            "providers[0].max_concurrency"
        );
        assert_eq!(provider(", timeout_ms: 0"), "providers[0].timeout_ms");
        assert_eq!(
            provider(", default_max_tokens: 10"),
            "providers[0].default_max_tokens"
        );
        assert_eq!(provider(", api_key: sk-123"), "providers[0].api_key");
        assert_eq!(
            provider(", circuit_breaker: {error_rate: 2}"),
            "providers[0].circuit_breaker.error_rate"
        );
        assert_eq!(
            invalid_key(
                "providers:\n  - {name: p, kind: openai, base_url: ftp://h, models: [{name: m}]}\n"
            ),
            "providers[0].base_url"
        );
        assert_eq!(
            invalid_key("providers:\n  - {name: p, kind: openai, base_url: http://h, models: [{name: m, input_per_million: 1}]}\n"),
            "providers[0].models[0]"
        );
    }

    #[test]
    fn figures_past_what_can_work_name_their_key() {
        assert_eq!(
            invalid_key("local:\n  kv_cache_mib: 1048576\n"),
            "local.kv_cache_mib"
        );
        assert_eq!(invalid_key("local:\n  threads: 100000\n"), "local.threads");
        let max = u64::MAX;
        assert_eq!(
            invalid_key(&format!("local:\n  queue_timeout_ms: {max}\n")),
            "local.queue_timeout_ms"
        );
        assert_eq!(
            invalid_key("local:\n  max_generation_ms: 0\n"),
            "local.max_generation_ms"
        );
        assert_eq!(
            invalid_key(&format!("governor:\n  queue_timeout_ms: {max}\n")),
            "governor.queue_timeout_ms"
        );
        assert_eq!(
            invalid_key("server:\n  header_read_timeout_ms: 0\n"),
            "server.header_read_timeout_ms"
        );
        assert_eq!(
            invalid_key("server:\n  max_connections: 0\n"),
            "server.max_connections"
        );
        assert_eq!(
            invalid_key("server:\n  max_tool_schema_bytes: 100\n"),
            "server.max_tool_schema_bytes"
        );
        assert_eq!(
            invalid_key("server:\n  metrics: {listen: nowhere}\n"),
            "server.metrics.listen"
        );
        assert_eq!(
            invalid_key("runs:\n  defaults: {max_wall_time_s: 99999999999}\n"),
            "runs.defaults.max_wall_time_s"
        );
    }

    #[test]
    fn a_reload_refuses_an_empty_or_cut_short_file_and_names_what_it_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.yaml");
        for (text, why) in [
            ("", "empty"),
            ("# nothing\n", "empty"),
            ("local: {slots: 2}", "line break"),
        ] {
            std::fs::write(&path, text).unwrap();
            match Config::reload(&path) {
                Err(ConfigError::Incomplete { message, .. }) => {
                    assert!(message.contains(why), "{message}")
                }
                other => panic!("{text:?}: expected a refusal, got {other:?}"),
            }
        }
        // At start an empty file is all defaults.
        std::fs::write(&path, "").unwrap();
        let running = Config::load(&path).unwrap();
        std::fs::write(
            &path,
            "local: {slots: 3}\nagents:\n  - {id: a, tenant: t, key_env: A}\nrouting: {min_mean_logprob: -2}\n",
        )
        .unwrap();
        let reloaded = Config::reload(&path).unwrap();
        assert_eq!(
            running.restart_only_changes(&reloaded),
            ["local.slots", "agents"]
        );
        assert!(running.restart_only_changes(&running).is_empty());
    }

    #[test]
    fn a_missing_file_says_why_once() {
        let error = Config::load(Path::new("/nonexistent/warden.yaml")).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("metal".parse(), Ok(DeviceSpec::Metal(0)));
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing/warden.yaml");
        let config = Config::load(&path).unwrap();
        let dev = config.agent("dev").unwrap();
        assert_eq!(dev.tenant, "default");
        assert_eq!(dev.key, KeySource::Env("WARDEN_DEV_KEY".into()));
        assert_eq!(config.auth.admin_key_env, "WARDEN_ADMIN_KEY");
    }
}
