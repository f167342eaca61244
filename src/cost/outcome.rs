//! Business outcomes (a ticket closed, an invoice matched) that agents attach to their
//! runs with `POST /v1/outcomes`, checked here. They are audit records of kind `outcome`
//! (`audit::record::BusinessOutcome`); reports join them to the run's requests. A run
//! reported twice keeps its latest outcome.

use rust_decimal::Decimal;

use crate::audit::record::{BusinessOutcome, OutcomeStatus};
use crate::auth::Principal;

/// As long as a run id may be in request metadata.
const MAX_RUN_ID_LEN: usize = 512;
const MAX_OUTCOME_LEN: usize = 128;

/// An outcome the agent described wrongly; `field` names the part to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidOutcome {
    pub field: &'static str,
    pub message: String,
}

impl BusinessOutcome {
    pub fn new(
        principal: &Principal,
        run_id: String,
        outcome: String,
        status: OutcomeStatus,
        value: Option<Decimal>,
    ) -> Result<Self, InvalidOutcome> {
        check_text("run_id", &run_id, MAX_RUN_ID_LEN)?;
        check_text("outcome", &outcome, MAX_OUTCOME_LEN)?;
        Ok(Self {
            run_id,
            outcome,
            status,
            value,
            agent: principal.agent_id.clone(),
            tenant: principal.tenant.clone(),
        })
    }
}

fn check_text(field: &'static str, text: &str, max_len: usize) -> Result<(), InvalidOutcome> {
    if text.trim().is_empty() {
        return Err(InvalidOutcome {
            field,
            message: format!("`{field}` must not be empty"),
        });
    }
    if text.len() > max_len || text.chars().any(char::is_control) {
        return Err(InvalidOutcome {
            field,
            message: format!("`{field}` must be at most {max_len} bytes of printable text"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_bad_field() {
        let principal = Principal {
            agent_id: "a".into(),
            tenant: "t".into(),
            role: None,
            autonomy: Default::default(),
        };
        let make = |run: &str, outcome: &str| {
            BusinessOutcome::new(
                &principal,
                run.into(),
                outcome.into(),
                OutcomeStatus::Success,
                None,
            )
        };
        let outcome = make("r1", "ticket_closed").unwrap();
        assert_eq!(
            (outcome.agent.as_str(), outcome.tenant.as_str()),
            ("a", "t")
        );
        let field = |result: Result<BusinessOutcome, InvalidOutcome>| result.unwrap_err().field;
        assert_eq!(field(make(" ", "x")), "run_id");
        assert_eq!(field(make("r", "a\nb")), "outcome");
        assert_eq!(field(make("r", &"x".repeat(129))), "outcome");
    }
}
