//! What operators do, in one service ([`Operations`]) for the admin API and SIGHUP
//! alike, and its record on the same chain as the requests it affects: kill switches,
//! routing and policy changes (refused ones included) and approval decisions. Each is
//! appended before the operator is answered, so an action that was acknowledged is on
//! the record.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::audit::{AuditError, AuditLog, Receipt};
use crate::error::GatewayError;
use crate::governor::{Governor, KillScope};
use crate::policy::{PolicyEngine, Reloaded, Ticket};
use crate::route::config::{RawRouting, RoutingConfig};
use crate::route::{RoutingState, RoutingTable, TableSource};

/// Who acted when the admin API was called without naming an operator.
pub const UNNAMED_ADMIN: &str = "admin";
/// Who acted when the change came from a signal to the process.
pub const SIGNAL: &str = "signal:SIGHUP";

/// One operator action: the record's `action` field and the fields that go with it.
#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OperatorAction<'a> {
    KillSwitchEngaged {
        kill_switch: &'a KillScope,
        reason: &'a str,
        /// Queued requests the switch refused.
        queued_refused: usize,
    },
    KillSwitchCleared {
        kill_switch: &'a KillScope,
        was_engaged: bool,
    },
    /// New routing in force: `file` names the configuration file it was re-read from
    /// (providers, routing and prices), absent when it came through the admin API.
    RoutingChanged {
        version: u64,
        routing: &'a RoutingConfig,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<&'a Path>,
        /// Keys the re-read file changed that a reload does not apply (read at start
        /// only): they take effect at the next restart.
        #[serde(skip_serializing_if = "none_listed")]
        not_applied: &'a [String],
    },
    PolicyReloaded {
        previous: &'a str,
        snapshot: &'a str,
    },
    /// A change that failed validation and changed nothing.
    ChangeRefused {
        /// `routing` or `policy`.
        target: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<&'a Path>,
        error: &'a str,
    },
    ApprovalDecided {
        ticket: &'a str,
        approved: bool,
        comment: &'a str,
        agent: &'a str,
        request_id: &'a str,
        run_id: Option<&'a str>,
        /// The held tool call's hash; none for held output.
        call_hash: Option<&'a str>,
    },
}

impl OperatorAction<'_> {
    /// The record kind: `kill_switch`, `config_change` or `approval`.
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorAction::KillSwitchEngaged { .. } | OperatorAction::KillSwitchCleared { .. } => {
                "kill_switch"
            }
            OperatorAction::RoutingChanged { .. }
            | OperatorAction::PolicyReloaded { .. }
            | OperatorAction::ChangeRefused { .. } => "config_change",
            OperatorAction::ApprovalDecided { .. } => "approval",
        }
    }
}

fn none_listed(keys: &&[String]) -> bool {
    keys.is_empty()
}

#[derive(Serialize)]
struct OperatorRecord<'a> {
    by: &'a str,
    #[serde(flatten)]
    action: &'a OperatorAction<'a>,
}

impl AuditLog {
    /// Appends what `by` did; returns once it is durable.
    async fn record_operator(
        &self,
        by: &str,
        action: &OperatorAction<'_>,
    ) -> Result<Receipt, AuditError> {
        self.append_event(action.kind(), &OperatorRecord { by, action })
            .await
    }
}

/// The configuration file as a reload re-read it.
pub struct Reread<'a> {
    pub table: TableSource<'a>,
    /// Keys it changes that only a restart applies.
    pub restart_only: Vec<String>,
}

/// Every operator action, whoever asks for it (the admin API, a SIGHUP), taken the
/// same way: act, then record, then answer. The record is durable before the caller
/// hears the outcome, and a change refused by validation is recorded as refused.
#[derive(Clone)]
pub struct Operations {
    governor: Governor,
    routing: Arc<RoutingState>,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
}

impl Operations {
    pub fn new(
        governor: Governor,
        routing: Arc<RoutingState>,
        policy: Arc<PolicyEngine>,
        audit: AuditLog,
    ) -> Self {
        Self {
            governor,
            routing,
            policy,
            audit,
        }
    }

    /// Stops the traffic `scope` covers; returns how many queued requests it refused.
    pub async fn engage_kill_switch(
        &self,
        by: &str,
        scope: &KillScope,
        reason: &str,
    ) -> Result<usize, GatewayError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(GatewayError::invalid(
                "reason",
                "say why traffic is stopped",
            ));
        }
        let queued_refused = self.governor.engage(scope.clone(), reason)?;
        let action = OperatorAction::KillSwitchEngaged {
            kill_switch: scope,
            reason,
            queued_refused,
        };
        self.audit.record_operator(by, &action).await?;
        Ok(queued_refused)
    }

    /// Lets the traffic `scope` covers through again; returns whether it was stopped.
    pub async fn clear_kill_switch(
        &self,
        by: &str,
        scope: &KillScope,
    ) -> Result<bool, GatewayError> {
        let was_engaged = self.governor.clear(scope)?;
        let action = OperatorAction::KillSwitchCleared {
            kill_switch: scope,
            was_engaged,
        };
        self.audit.record_operator(by, &action).await?;
        Ok(was_engaged)
    }

    /// Replaces the routing policy; requests in flight finish under their version.
    pub async fn replace_routing(
        &self,
        by: &str,
        raw: RawRouting,
    ) -> Result<Arc<RoutingTable>, GatewayError> {
        let outcome = self.routing.update_routing(raw);
        self.record_routing(by, None, &[], outcome.as_ref()).await?;
        let table = outcome.map_err(|(key, message)| GatewayError::invalid(key, message))?;
        tracing::info!(version = table.version, %by, routing = ?table.routing, "routing replaced");
        Ok(table)
    }

    /// Reads the policy file again and swaps it in whole, or keeps the running policy.
    pub async fn reload_policy(&self, by: &str) -> Result<Reloaded, GatewayError> {
        let engine = self.policy.clone();
        let outcome = tokio::task::spawn_blocking(move || engine.reload())
            .await
            .map_err(|error| GatewayError::Internal(format!("the reload task failed: {error}")))?;
        match &outcome {
            Ok(reloaded) => {
                let changed = OperatorAction::PolicyReloaded {
                    previous: &reloaded.previous,
                    snapshot: &reloaded.snapshot,
                };
                self.audit.record_operator(by, &changed).await?;
            }
            Err(error) => {
                tracing::error!(%error, %by, "policy reload refused; the running policy stays");
                self.record_refusal(by, "policy", None, &error.to_string())
                    .await?;
            }
        }
        Ok(outcome?)
    }

    /// Approves or rejects a held tool call or output, in the approver's name.
    pub async fn decide_approval(
        &self,
        ticket: String,
        approve: bool,
        approver: String,
        comment: String,
    ) -> Result<Ticket, GatewayError> {
        let engine = self.policy.clone();
        let ticket =
            tokio::task::spawn_blocking(move || engine.review(&ticket, approve, approver, comment))
                .await
                .map_err(|error| {
                    GatewayError::Internal(format!("the review task failed: {error}"))
                })??;
        if let Some(review) = &ticket.review {
            let decided = OperatorAction::ApprovalDecided {
                ticket: &ticket.id,
                approved: approve,
                comment: &review.comment,
                agent: &ticket.agent,
                request_id: &ticket.request_id,
                run_id: ticket.run_id.as_deref(),
                call_hash: ticket.call_hash(),
            };
            self.audit.record_operator(&review.by, &decided).await?;
        }
        Ok(ticket)
    }

    /// Applies the configuration `file` as re-read (or the reason it could not be):
    /// its providers, routing and prices swapped in whole, or none of them; then the
    /// policy file likewise. Refusals are logged and recorded, not returned: only a
    /// record that could not be written is.
    pub async fn reload_files(
        &self,
        by: &str,
        file: &Path,
        reread: Result<Reread<'_>, String>,
    ) -> Result<(), AuditError> {
        let recorded = match reread {
            Ok(reread) => {
                let outcome = self
                    .routing
                    .reload(&reread.table, &|name| std::env::var(name).ok());
                match &outcome {
                    Ok(table) => {
                        tracing::info!(version = table.version, file = %file.display(), "configuration reloaded");
                        if !reread.restart_only.is_empty() {
                            tracing::warn!(
                                keys = %reread.restart_only.join(", "),
                                "the reloaded file changes settings read at start only: they take effect at the next restart"
                            );
                        }
                    }
                    Err((key, message)) => {
                        tracing::error!(%key, %message, "reload refused; the previous routing stays")
                    }
                }
                self.record_routing(by, Some(file), &reread.restart_only, outcome.as_ref())
                    .await
            }
            Err(error) => {
                tracing::error!(%error, "reload refused; the previous routing stays");
                self.record_refusal(by, "routing", Some(file), &error).await
            }
        };
        let policy = match self.reload_policy(by).await {
            Err(GatewayError::Audit(error)) => Err(error),
            _ => Ok(()),
        };
        recorded.map(drop).and(policy)
    }

    /// Records a routing change or its refusal (`(key, message)`, as validation names
    /// them); `file` when it was re-read from the configuration file, with the keys it
    /// changed that only a restart applies.
    async fn record_routing(
        &self,
        by: &str,
        file: Option<&Path>,
        not_applied: &[String],
        outcome: Result<&Arc<RoutingTable>, &(String, String)>,
    ) -> Result<Receipt, AuditError> {
        match outcome {
            Ok(table) => {
                let changed = OperatorAction::RoutingChanged {
                    version: table.version,
                    routing: &table.routing,
                    file,
                    not_applied,
                };
                self.audit.record_operator(by, &changed).await
            }
            Err((key, message)) => {
                let error = format!("{key}: {message}");
                self.record_refusal(by, "routing", file, &error).await
            }
        }
    }

    async fn record_refusal(
        &self,
        by: &str,
        target: &str,
        file: Option<&Path>,
        error: &str,
    ) -> Result<Receipt, AuditError> {
        let refused = OperatorAction::ChangeRefused {
            target,
            file,
            error,
        };
        self.audit.record_operator(by, &refused).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::query::read_all;
    use crate::audit::tests::config;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn actions_are_recorded_under_their_kind_with_who_acted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new().unwrap().audit.clone();
        let log = AuditLog::open(&config(dir.path()), metrics).unwrap();
        let scope = KillScope::Agent("agent-a".into());
        log.record_operator(
            "alice",
            &OperatorAction::KillSwitchEngaged {
                kill_switch: &scope,
                reason: "runaway loop",
                queued_refused: 2,
            },
        )
        .await
        .unwrap();
        log.record_operator(
            SIGNAL,
            &OperatorAction::ChangeRefused {
                target: "policy",
                file: None,
                error: "rules[0].action: unknown",
            },
        )
        .await
        .unwrap();

        let records = read_all(dir.path()).unwrap();
        assert_eq!(records[0]["kind"], "kill_switch");
        assert_eq!(records[0]["action"], "kill_switch_engaged");
        assert_eq!(records[0]["by"], "alice");
        assert_eq!(records[0]["kill_switch"]["scope"], "agent");
        assert_eq!(records[0]["kill_switch"]["id"], "agent-a");
        assert_eq!(records[0]["queued_refused"], 2);
        assert_eq!(records[1]["kind"], "config_change");
        assert_eq!(records[1]["action"], "change_refused");
        assert_eq!(records[1]["target"], "policy");
        assert_eq!(records[1]["by"], SIGNAL);
    }
}
