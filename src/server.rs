//! Starting the gateway: keys, the local backend (fetched and loaded in the background
//! while the server already answers probes), the listener, graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{AppState, CpuPool, ResponseStore};
use crate::audit::AuditLog;
use crate::auth::KeyStore;
use crate::backend::local::network::Runner;
use crate::backend::local::template::{ChatTemplate, TemplateKind};
use crate::backend::local::{self, Engine, EngineOptions, LocalBackend};
use crate::backend::Backend;
use crate::chat::SamplingDefaults;
use crate::config::{Config, LocalConfig};
use crate::gateway::operator::Operations;
use crate::gateway::{Gateway, Recorder};
use crate::governor::{Governor, GovernorSettings};
use crate::metrics::Metrics;
use crate::model::{ensure_available, FetchOptions, ModelRef};
use crate::policy::PolicyEngine;
use crate::route::{RoutingState, RoutingTable};
use crate::runs::RunTracker;

/// The runtime `warden serve` runs on (benches build the same one).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden")
        .build()
}

/// Serves `config`: the file's configuration, `file`, with the command line's
/// overrides. Reloads compare the file as re-read with `file`.
pub async fn serve(config: Config, file: Config) -> anyhow::Result<()> {
    let setup = KeyStore::from_config(&config, |name| std::env::var(name).ok())
        .with_context(|| format!("{}: agent keys", config.path.display()))?;
    for warning in &setup.warnings {
        tracing::warn!("{warning}");
    }
    let model = ModelRef::resolve(&config.local.model, &config.local.models_dir)
        .with_context(|| format!("{}: `local.model`", config.path.display()))?;
    let backend = Arc::new(
        LocalBackend::loading(model.name(), config.local.slots, config.local.queue_timeout)
            .with_kv_cache_bytes(config.local.kv_cache_bytes)
            .with_max_generation(config.local.max_generation)
            .with_embedding_pooling(config.local.embedding_pooling),
    );
    let loading = backend.clone();
    let local_config = config.local.clone();
    tokio::task::spawn_blocking(move || match load_engine(&model, &local_config) {
        Ok(engine) => {
            tracing::info!(model = %engine.model_name, context = engine.context_length(), "local model ready");
            loading.set_ready(Arc::new(engine));
        }
        Err(error) => {
            tracing::error!("the local model is unavailable: {error:#}");
            loading.set_failed(format!("{error:#}"));
        }
    });

    let state = build_state(&config, setup.store, backend, &process_env)?;
    let gateway = state.gateway.clone();
    if let Err(error) = reload_on_hangup(Arc::new(file), state.operations.clone()) {
        tracing::warn!(%error, "cannot listen for SIGHUP: reload through the admin API only");
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!("warden listening on http://{}", listener.local_addr()?);
    crate::api::serve_app(listener, state, shutdown_signal())
        .await
        .context("serving")?;
    // Records of requests abandoned at shutdown are queued without waiting: wait here.
    gateway
        .audit()
        .flush()
        .await
        .context("closing the audit log")?;
    Ok(())
}

/// Everything a request needs, built from the configuration around the given local
/// backend (tests and benches substitute their own). `env` looks up provider keys.
pub fn build_state(
    config: &Config,
    keys: KeyStore,
    local: Arc<dyn Backend>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<AppState> {
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    if let Some(collector) = local.collector() {
        metrics
            .registry()
            .register(collector)
            .context("registering the local engine's metrics")?;
    }
    crate::schema::set_budget(config.server.schema_cache_bytes);
    let audit = AuditLog::open(&config.audit, metrics.audit.clone())
        .with_context(|| format!("{}: `audit`", config.path.display()))?;
    let runs = Arc::new(RunTracker::new(config.runs.clone()));
    let restored = runs
        .restore_from_log(audit.dir())
        .context("rebuilding runs from the audit log")?;
    tracing::debug!(records = restored, "runs rebuilt from the audit log");
    let recorder = Recorder::new(
        audit.clone(),
        runs,
        metrics.requests.clone(),
        config.audit.store_text,
    );
    let table =
        RoutingTable::build(&config.table_source(), 1, None, env).map_err(anyhow::Error::msg)?;
    let routing = Arc::new(RoutingState::new(table));
    // The local engine never queues on its own: the governor admits at most `slots`
    // generations to it, and the waiting happens in the governor's priority queue.
    let governor = Governor::new(
        GovernorSettings::from_config(config).backend(local.name(), config.local.slots),
        metrics.governor.clone(),
    );
    let policy = Arc::new(PolicyEngine::open(&config.policy, metrics.policy.clone())?);
    let operations = Operations::new(governor.clone(), routing.clone(), policy.clone(), audit);
    Ok(AppState {
        config: Arc::new(config.clone()),
        gateway: Arc::new(Gateway::new(
            local,
            routing,
            metrics.clone(),
            policy.clone(),
            recorder,
            governor.clone(),
        )),
        governor,
        operations,
        keys: Arc::new(keys),
        metrics,
        policy,
        responses: Arc::new(ResponseStore::new(config.server.stored_responses_bytes)),
        cpu: CpuPool::for_this_machine(),
        started: std::time::Instant::now(),
    })
}

/// Finds (fetching if allowed and needed) and loads the configured local model, run by
/// the forward pass that suits the configured device.
pub fn load_engine(model: &ModelRef, config: &LocalConfig) -> anyhow::Result<Engine> {
    let device = local::device(config.device)?;
    let runner = Runner::for_device(&device);
    load_engine_with(model, config, device, runner)
}

/// `load_engine` with the device and the forward pass chosen by the caller.
pub fn load_engine_with(
    model: &ModelRef,
    config: &LocalConfig,
    device: candle_core::Device,
    runner: Runner,
) -> anyhow::Result<Engine> {
    let (path, template, context_length, sampling_defaults) = match model {
        ModelRef::Manifest(manifest) => {
            let path = if config.fetch_on_start {
                ensure_available(manifest, &FetchOptions::new(config.models_dir.clone()))?
            } else {
                existing_file(manifest, config)?
            };
            let template = ChatTemplate {
                kind: manifest.chat_template,
                default_system_prompt: manifest.default_system_prompt.clone(),
            };
            (
                path,
                template,
                manifest.context_length,
                manifest.sampling_defaults,
            )
        }
        ModelRef::File(path) => {
            let template = ChatTemplate {
                kind: TemplateKind::Chatml,
                default_system_prompt: None,
            };
            (path.clone(), template, None, SamplingDefaults::default())
        }
    };
    tracing::info!(file = %path.display(), ?runner, "loading the local model");
    let engine = Engine::load(
        &path,
        EngineOptions {
            model_name: model.name(),
            template,
            context_length,
            default_max_tokens: config.default_max_tokens,
            sampling_defaults,
            runner,
            device,
        },
    )?;
    Ok(engine)
}

fn existing_file(
    manifest: &crate::model::ModelManifest,
    config: &LocalConfig,
) -> anyhow::Result<PathBuf> {
    let name = manifest
        .converted_file()
        .unwrap_or_else(|| manifest.file.clone());
    let path = config.models_dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is absent and `local.fetch_on_start` is off: run `warden model fetch {}`",
        path.display(),
        manifest.name
    );
    Ok(path)
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// SIGHUP re-reads the configuration file (providers, routing and prices) and the
/// policy file, each swapped in whole; a file that fails validation, or is empty or cut
/// short, changes nothing of its own part. Either way the outcome goes to the audit
/// trail. Agents, keys, the listener, the governor and the local model are read at start
/// only: a reloaded file that changes them from `running` (the file as read at start)
/// says so (log and audit), naming each key.
/// The handler is installed before this returns, so a signal sent afterwards is never
/// lost (nor, by default, fatal).
#[cfg(unix)]
pub fn reload_on_hangup(running: Arc<Config>, operations: Operations) -> std::io::Result<()> {
    use crate::gateway::operator::{Reread, SIGNAL};
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let read = Config::reload(&running.path);
            let reread = match &read {
                Ok(config) => Ok(Reread {
                    table: config.table_source(),
                    restart_only: running.restart_only_changes(config),
                }),
                Err(error) => Err(error.to_string()),
            };
            let recorded = operations.reload_files(SIGNAL, &running.path, reread).await;
            if let Err(error) = recorded {
                tracing::error!(%error, "the reload could not be recorded in the audit trail");
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn reload_on_hangup(_running: Arc<Config>, _operations: Operations) -> std::io::Result<()> {
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
