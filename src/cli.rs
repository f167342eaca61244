//! Command-line interface: `warden serve`, `warden model fetch`, `warden tune`,
//! `warden policy ...`, `warden audit verify` and `warden report`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, DeviceSpec};
use crate::cost::report::{self, GroupBy, Window};
use crate::model::{ensure_available, FetchOptions, ModelRef};
use crate::telemetry::{Telemetry, TelemetryConfig};

const DEFAULT_CONFIG: &str = "routing/warden.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Local-model-first inference router and concurrency governor for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (fetching the local model on first run).
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `local.device`: cpu, cuda[:N] or metal[:N].
        #[arg(long)]
        device: Option<DeviceSpec>,
    },
    /// Manage local models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Replay recorded routing decisions against candidate confidence thresholds.
    Tune {
        /// Decision logs: JSONL files, or directories of them.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Mean-logprob thresholds to try, e.g. `-0.5,-1,-1.5`; by default they span the
        /// recorded confidence.
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        thresholds: Option<Vec<f32>>,
        /// Holds the per-token threshold at this value instead of the configured one.
        #[arg(long, allow_negative_numbers = true)]
        min_token_logprob: Option<f32>,
        /// Replays one agent's requests only.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Check, test and replay tool-call policies.
    Policy {
        #[command(subcommand)]
        command: crate::policy::cli::PolicyCommand,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Cost report from the audit log: by outcome, agent, tenant, model or route.
    Report {
        /// The audit log folder; defaults to the configured `audit.dir`.
        #[arg(long)]
        log: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// outcome, agent, tenant, model or route.
        #[arg(long, default_value = "outcome", value_parser = group_by)]
        group_by: GroupBy,
        /// Records at or after: 2025-01-31 or an RFC 3339 time.
        #[arg(long, value_parser = report::parse_time)]
        from: Option<DateTime<Utc>>,
        /// Records before: 2025-02-01 or an RFC 3339 time.
        #[arg(long, value_parser = report::parse_time)]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
        format: ReportFormat,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every hash chain across segments; exits non-zero naming the first bad
    /// record.
    Verify {
        /// A log folder or one segment file; defaults to the configured `audit.dir`.
        path: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
    Csv,
}

fn group_by(text: &str) -> Result<GroupBy, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("`{text}`: expected outcome, agent, tenant, model or route"))
}

fn audit_dir(path: Option<PathBuf>, config: &std::path::Path) -> anyhow::Result<PathBuf> {
    match path {
        Some(path) => Ok(path),
        None => Ok(Config::load(config)?.audit.dir),
    }
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download, verify and convert a model named by a manifest under `models/`.
    Fetch {
        /// Manifest name; defaults to the configured `local.model`.
        name: Option<String>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // `serve` logs (and traces) as its configuration says, once it has read it; every
    // other command logs to stderr from the start.
    let _telemetry = match &cli.command {
        Command::Serve { .. } => None,
        _ => Some(Telemetry::start(&TelemetryConfig::default())?),
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            device,
        } => {
            let file = Config::load(&config)?;
            let _telemetry = Telemetry::start(&file.telemetry)
                .with_context(|| format!("{}: `telemetry`", config.display()))?;
            let mut config = file.clone();
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(device) = device {
                config.local.device = device;
            }
            crate::backend::local::use_threads(config.local.threads);
            let runtime = crate::server::runtime().context("starting the async runtime")?;
            runtime.block_on(crate::server::serve(config, file))
        }
        Command::Policy { command } => crate::policy::cli::run(command),
        Command::Model {
            command: ModelCommand::Fetch { name, config },
        } => {
            let config = Config::load(&config)?;
            let name = name.unwrap_or_else(|| config.local.model.clone());
            match ModelRef::resolve(&name, &config.local.models_dir)? {
                ModelRef::Manifest(manifest) => {
                    let path = ensure_available(
                        &manifest,
                        &FetchOptions::new(config.local.models_dir.clone()),
                    )?;
                    println!("{}", path.display());
                    Ok(())
                }
                ModelRef::File(path) => {
                    println!("{} is a local file; nothing to fetch", path.display());
                    Ok(())
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { path, config },
        } => {
            let path = audit_dir(path, &config)?;
            let verified = crate::audit::verify::verify(&path)
                .with_context(|| format!("audit log {} does not verify", path.display()))?;
            match verified.head {
                Some(head) => println!(
                    "ok: {} records in {} segments; last record seq {} hash {}",
                    verified.records, verified.segments, head.seq, head.hash
                ),
                None => println!("ok: the log is empty"),
            }
            Ok(())
        }
        Command::Report {
            log,
            config,
            group_by,
            from,
            to,
            format,
        } => {
            let dir = audit_dir(log, &config)?;
            let report = report::from_log(&dir, group_by, Window { from, to })
                .with_context(|| format!("reading {}", dir.display()))?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                ReportFormat::Csv => print!("{}", report.to_csv()?),
            }
            Ok(())
        }
        Command::Tune {
            logs,
            config,
            thresholds,
            min_token_logprob,
            agent,
        } => {
            let config = Config::load(&config)?;
            let log = crate::tune::Log::read_paths(&logs)?;
            let options = crate::tune::TuneOptions {
                candidates: thresholds,
                min_token_logprob,
                agent,
            };
            print!("{}", crate::tune::tune(&config, log, &options));
            Ok(())
        }
    }
}
