//! Shared test harness: the real gateway on an ephemeral loopback port, serving the real
//! local model (loaded once per test binary and shared by every server it starts).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fixed_service;
pub mod mock_upstream;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use warden::auth::{digest, KeyStore};
use warden::backend::local::{Engine, LocalBackend};
use warden::backend::Backend;
use warden::config::Config;
use warden::model::ModelRef;

pub const KEY_A: &str = "test-key-agent-a";
pub const KEY_B: &str = "test-key-agent-b";
pub const ADMIN_KEY: &str = "test-admin-key";

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The shipped model, fetched if absent (idempotent) and loaded once.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let config = test_config(&ServerOptions::default());
            let model = ModelRef::resolve(&config.local.model, &config.local.models_dir).unwrap();
            Arc::new(warden::server::load_engine(&model, &config.local).unwrap())
        })
        .clone()
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub slots: usize,
    pub queue_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub default_max_tokens: u32,
    /// The audit log folder; `None`: a fresh one under the target's temporary folder.
    pub audit_dir: Option<PathBuf>,
    /// Extra keys for agent A and agent B (`", max_concurrent: 1"`).
    pub agent_a: String,
    pub agent_b: String,
    /// A `governor:` section, as YAML. Empty: the governor's queue timeout is
    /// `queue_timeout_ms` (waiting happens in its queue), aging a quarter of it.
    pub governor: String,
    /// More configuration (e.g. `providers:`, `routing:` or `runs:` sections), appended.
    pub extra_config: String,
    /// More keys of the `server:` section (`", idle_timeout_ms: 500"`).
    pub server: String,
    /// More keys of the `local:` section (`", max_generation_ms: 1"`).
    pub local: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            slots: 2,
            // Generous: tests share two cores with each other, and a queue timeout is
            // only what the tests about timeouts are about.
            queue_timeout_ms: 600_000,
            max_body_bytes: 4 * 1024 * 1024,
            default_max_tokens: 64,
            audit_dir: None,
            agent_a: String::new(),
            agent_b: String::new(),
            governor: String::new(),
            extra_config: String::new(),
            server: String::new(),
            local: String::new(),
        }
    }
}

/// A folder of its own for a test's audit log, under the target's temporary folder.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("audit-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

pub fn test_config(options: &ServerOptions) -> Config {
    Config::from_yaml(&test_config_yaml(options), &repo_path("routing/test.yaml")).unwrap()
}

/// The configuration file of a test server, for tests that write it to disk.
pub fn test_config_yaml(options: &ServerOptions) -> String {
    let audit_dir = options.audit_dir.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("audit-{}", uuid::Uuid::new_v4().simple()))
    });
    let governor = if options.governor.is_empty() {
        format!(
            "governor: {{queue_timeout_ms: {}, aging_ms: {}}}",
            options.queue_timeout_ms,
            (options.queue_timeout_ms / 4).max(1)
        )
    } else {
        options.governor.clone()
    };
    format!(
        "server: {{listen: \"127.0.0.1:0\", max_body_bytes: {max_body}{server}}}\n\
         agents:\n\
         \x20 - {{id: agent-a, tenant: acme, role: support, key_sha256: \"{a}\"{agent_a}}}\n\
         \x20 - {{id: agent-b, tenant: globex, key_sha256: \"{b}\"{agent_b}}}\n\
         local: {{model: smollm2-135m-instruct, models_dir: \"{models}\", slots: {slots}, queue_timeout_ms: {timeout}, default_max_tokens: {max_tokens}{local}}}\n\
         {governor}\n\
         audit: {{dir: \"{audit}\"}}\n",
        max_body = options.max_body_bytes,
        a = digest(KEY_A),
        b = digest(KEY_B),
        models = repo_path("models").display(),
        slots = options.slots,
        timeout = options.queue_timeout_ms,
        max_tokens = options.default_max_tokens,
        agent_a = options.agent_a,
        agent_b = options.agent_b,
        audit = audit_dir.display(),
        server = options.server,
        local = options.local,
    ) + &options.extra_config
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub local: Arc<LocalBackend>,
    pub audit_dir: PathBuf,
    _audit: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(mut options: ServerOptions) -> Self {
        let owned = options.audit_dir.is_none().then(scratch_dir);
        if let Some(dir) = &owned {
            options.audit_dir = Some(dir.path().to_path_buf());
        }
        let config = test_config(&options);
        let local = Arc::new(
            LocalBackend::loading(
                "smollm2-135m-instruct",
                config.local.slots,
                config.local.queue_timeout,
            )
            .with_max_generation(config.local.max_generation),
        );
        local.set_ready(engine());
        let base = serve(&config, local.clone()).await;
        Self {
            base,
            client: reqwest::Client::new(),
            local,
            audit_dir: config.audit.dir.clone(),
            _audit: owned,
        }
    }

    /// A GET under the admin key; returns the status and body text.
    pub async fn admin_get(&self, path_and_query: &str) -> (u16, String) {
        let response = self
            .client
            .get(self.url(path_and_query))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/metrics`, read with the admin key.
    pub async fn metrics(&self) -> String {
        scrape(&self.client, &self.base).await
    }

    /// A POST to the chat endpoint as agent A.
    pub fn chat_request(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
    }

    /// Sends `body` as agent A and returns the status and JSON answer.
    pub async fn chat(&self, body: Value) -> (u16, Value) {
        let response = self.chat_request().json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Streams `body` and returns every `data:` payload, `[DONE]` included.
    pub async fn stream(&self, body: Value) -> Vec<String> {
        let response = self.chat_request().json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        sse_data(&text)
    }
}

/// The configuration file of a test server, written to a folder of its own.
pub fn config_file(options: &ServerOptions) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, test_config_yaml(options)).unwrap();
    (dir, path)
}

/// `/metrics` of the server at `base`, read with the admin key.
pub async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Serves the gateway around `local` on an ephemeral port; returns its base URL.
pub async fn serve(config: &Config, local: Arc<dyn Backend>) -> String {
    let keys = KeyStore::from_config(config, |name| {
        (name == config.auth.admin_key_env).then(|| ADMIN_KEY.to_string())
    })
    .unwrap()
    .store;
    let state = warden::server::build_state(config, keys, local, &provider_keys).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        warden::api::serve_app(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    format!("http://{address}")
}

/// Provider keys as the tests' environment would hold them.
pub fn provider_keys(name: &str) -> Option<String> {
    match name {
        "TEST_ANTHROPIC_KEY" => Some("sk-test-anthropic".into()),
        "TEST_OPENAI_KEY" => Some("sk-test-openai".into()),
        _ => None,
    }
}

pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The content a stream carried, joined.
pub fn streamed_content(frames: &[String]) -> String {
    frames
        .iter()
        .filter(|frame| *frame != "[DONE]")
        .map(|frame| serde_json::from_str::<Value>(frame).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

pub fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

pub fn weather_tool() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"]
            }
        }
    }])
}

/// A Python interpreter with the official OpenAI SDK, in a venv under `target/` that is
/// created on first use so `cargo test` needs nothing installed beforehand.
pub fn python_with_openai_sdk() -> PathBuf {
    let venv = repo_path("target/python-openai-sdk");
    let python = venv.join("bin/python");
    let requirements = repo_path("tests/sdk/requirements.txt");
    let has_sdk = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|status| status.success())
    };
    if !has_sdk(&python) {
        let created = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(created.success(), "python3 -m venv failed");
        let installed = std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(installed.success(), "installing the OpenAI SDK failed");
    }
    python
}

pub async fn wait_until(mut ready: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready()
}

pub async fn wait_until_async<F, Fut>(mut ready: F, limit: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
