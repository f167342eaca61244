//! warden: a local-model-first inference router and concurrency governor for AI agents.
//!
//! Agents call it as an OpenAI-compatible endpoint; a small local model answers what it
//! can. `main.rs` only parses the command line; everything else lives here so the
//! tests and benches drive the same code.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod chat;
pub mod cli;
pub mod config;
pub mod cost;
pub mod error;
pub mod gateway;
pub mod governor;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod reload;
pub mod route;
pub mod runs;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tune;

pub use api::{build_app, AppState};
