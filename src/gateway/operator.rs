//! What operators did, on the same chain as the requests they affect: kill switches,
//! routing and policy changes (through the admin API or SIGHUP, refused ones included)
//! and approval decisions. Each is appended before the operator is answered, so an
//! action that was acknowledged is on the record.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::audit::{AuditError, AuditLog, Receipt};
use crate::governor::KillScope;
use crate::policy::{PolicyError, Reloaded};
use crate::route::config::RoutingConfig;
use crate::route::RoutingTable;

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
    pub async fn record_operator(
        &self,
        by: &str,
        action: &OperatorAction<'_>,
    ) -> Result<Receipt, AuditError> {
        self.append_event(action.kind(), &OperatorRecord { by, action })
            .await
    }

    /// Records a routing change or its refusal (`(key, message)`, as validation names
    /// them); `file` when it was re-read from the configuration file, with the keys it
    /// changed that only a restart applies.
    pub async fn record_routing_change(
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
                self.record_operator(by, &changed).await
            }
            Err((key, message)) => {
                let error = format!("{key}: {message}");
                self.record_refusal(by, "routing", file, &error).await
            }
        }
    }

    /// Records a policy reload or its refusal.
    pub async fn record_policy_reload(
        &self,
        by: &str,
        outcome: &Result<Reloaded, PolicyError>,
    ) -> Result<Receipt, AuditError> {
        match outcome {
            Ok(reloaded) => {
                let changed = OperatorAction::PolicyReloaded {
                    previous: &reloaded.previous,
                    snapshot: &reloaded.snapshot,
                };
                self.record_operator(by, &changed).await
            }
            Err(error) => {
                self.record_refusal(by, "policy", None, &error.to_string())
                    .await
            }
        }
    }

    pub async fn record_refusal(
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
        self.record_operator(by, &refused).await
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
