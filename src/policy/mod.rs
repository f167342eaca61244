//! The tool-call policy engine. Every tool call a backend generates is decided here
//! before the agent sees it (ALLOW, DENY, REQUIRE_APPROVAL, ALLOW_WITH_CONSTRAINTS),
//! generated text is screened for personal data and secrets, and requests yield risk
//! signals (tool tiers, planted instructions) for routing; the gateway's screen applies
//! it to each response as it streams. The policy (`routing/policy.yaml`) is swapped
//! atomically on reload; a file that fails validation leaves the running policy in
//! place.

pub mod approvals;
pub mod args;
pub mod autonomy;
pub mod cases;
pub mod check;
pub mod cli;

mod compile;
pub mod condition;
pub mod constraint;
pub mod decide;
pub mod file;
pub mod hosts;
pub mod names;
pub mod output;
pub mod path;
pub mod replay;
pub mod report;
pub mod risk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chrono::Utc;

pub use approvals::{
    ApprovalError, ApprovalStore, Held, HeldCall, Review, Ticket, TicketFilter, TicketStatus,
};
pub use autonomy::AutonomyMode;
pub use compile::PolicyError;
pub use decide::{fits_offered, CheckedCall, Decision, Policy, ReasonCode, Subject, Verdict};
pub use report::{CallOutcome, DecisionRecord, PolicyReport};
pub use risk::RiskSignal;

use crate::metrics::PolicyCounters;

/// Where the policy and its approval tickets live (`policy:` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub file: PathBuf,
    /// The file was named explicitly, so it must exist.
    pub file_named: bool,
    pub approvals_file: PathBuf,
}

/// The running policy, its file and the approval tickets.
pub struct PolicyEngine {
    file: PathBuf,
    current: RwLock<Arc<Policy>>,
    approvals: Arc<ApprovalStore>,
    counters: PolicyCounters,
}

/// A successful reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub previous: String,
    pub snapshot: String,
}

impl PolicyEngine {
    /// Loads the configured policy and the approvals store. A policy file that was not
    /// named and does not exist gives the empty policy: every tool call is denied.
    pub fn open(config: &PolicyConfig, counters: PolicyCounters) -> anyhow::Result<Self> {
        let policy = if config.file_named || config.file.exists() {
            Policy::load(&config.file)?
        } else {
            tracing::warn!(file = %config.file.display(), "no policy file: every tool call will be denied");
            Policy::from_yaml("", &config.file)?
        };
        tracing::info!(file = %config.file.display(), snapshot = %policy.snapshot(), "policy loaded");
        Ok(Self {
            file: config.file.clone(),
            current: RwLock::new(Arc::new(policy)),
            approvals: Arc::new(ApprovalStore::open(&config.approvals_file)?),
            counters,
        })
    }

    /// The policy in force; a request keeps the snapshot it started with.
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn approvals(&self) -> &Arc<ApprovalStore> {
        &self.approvals
    }

    /// The counters decisions and output findings are counted in.
    pub fn counters(&self) -> &PolicyCounters {
        &self.counters
    }

    /// Reads the policy file again and swaps it in whole; on any error the running
    /// policy stays.
    pub fn reload(&self) -> Result<Reloaded, PolicyError> {
        let policy = Arc::new(Policy::reload(&self.file)?);
        let snapshot = policy.snapshot().to_string();
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = std::mem::replace(&mut *guard, policy);
        tracing::info!(previous = %previous.snapshot(), %snapshot, "policy reloaded");
        Ok(Reloaded {
            previous: previous.snapshot().to_string(),
            snapshot,
        })
    }

    /// Approves or rejects a ticket, now.
    pub fn review(
        &self,
        id: &str,
        approve: bool,
        by: String,
        comment: String,
    ) -> Result<Ticket, ApprovalError> {
        let review = Review {
            by,
            comment,
            at: Utc::now(),
        };
        let ticket = self.approvals.review(id, approve, review)?;
        tracing::info!(ticket = %ticket.id, status = %ticket.status, "approval reviewed");
        Ok(ticket)
    }
}
