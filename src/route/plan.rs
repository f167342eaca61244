//! Where a request goes, decided before anything runs: a pure function of the model the
//! client named, whether it streams, who sent it, the routing table, the local model's
//! names and the request's risk. The gateway carries the plan out (admission,
//! generation, failover). What can only be learnt while it runs (a full local queue, a
//! failed generation, a weak local answer) the gateway adds to the route's history.

use super::config::Thresholds;
use super::{Reason, Risk, Route, RoutingTable, Target};

/// The model name that lets warden choose where a request runs.
pub const AUTO_MODEL: &str = "auto";

/// What a request is planned to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The route as planned; the gateway may change it (escalated, fallback).
    pub route: Route,
    pub reasons: Vec<Reason>,
    pub steps: Steps,
}

#[derive(Debug, Clone)]
pub enum Steps {
    /// The local model, because the client named it: nothing to escalate to.
    Local,
    /// The local model first. `escalation` takes over a local failure it can take (or
    /// a weak answer); with `verify`, the whole answer is held and checked against
    /// `thresholds` before the client sees any of it.
    LocalFirst {
        escalation: Vec<Target>,
        verify: bool,
        thresholds: Thresholds,
    },
    /// Providers only, tried in order.
    External { targets: Vec<Target> },
}

/// A request no plan can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    /// It must go to a provider and none is configured.
    #[error("this request must be served by an external provider and none is configured")]
    NoProvider,
    /// It asks for a JSON answer and nothing that would serve it can promise one.
    #[error("{0}")]
    JsonNotPromised(String),
    /// Only the local model can serve it (a raw prompt), and it may not.
    #[error("{0}")]
    LocalOnly(String),
}

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The model the client named.
    pub model: &'a str,
    /// The client reads the answer as it comes.
    pub stream: bool,
    pub agent: &'a str,
    /// The answer must be JSON (`response_format`): the local engine holds its output
    /// to it, and only a provider whose API does too may be escalated to.
    pub wants_json: bool,
    /// The prompt is raw text for the local model to continue (`/v1/completions`): no
    /// provider takes it, so nothing escalates.
    pub raw_prompt: bool,
}

/// Plans `request` under `table`, given the local model's `local_models` and the
/// request's `risk`.
pub fn plan(
    request: Request<'_>,
    table: &RoutingTable,
    local_models: &[String],
    risk: &Risk,
) -> Result<Plan, PlanError> {
    if request.raw_prompt {
        return plan_raw_prompt(request, table, local_models, risk);
    }
    if request.model != AUTO_MODEL {
        if local_models.iter().any(|name| name == request.model) {
            return Ok(Plan {
                route: Route::Local,
                reasons: vec![Reason::NamedModel],
                steps: Steps::Local,
            });
        }
        let mut targets = table.targets_for(request.model);
        if targets.is_empty() {
            return Err(PlanError::ModelNotFound(request.model.to_string()));
        }
        if request.wants_json {
            targets = promising_json(targets).ok_or_else(|| {
                PlanError::JsonNotPromised(format!(
                    "no provider of `{}` can promise a JSON answer",
                    request.model
                ))
            })?;
        }
        return Ok(Plan {
            route: Route::External,
            reasons: vec![Reason::NamedModel],
            steps: Steps::External { targets },
        });
    }
    let thresholds = table.routing.thresholds_for(request.agent);
    let mut chain = table.escalation_chain();
    let configured = !chain.is_empty();
    if request.wants_json {
        // The local model is held to the schema by its grammar; an escalation target
        // must promise the same, or the request stays local.
        chain = promising_json(chain).unwrap_or_default();
    }
    if risk.score > thresholds.local_risk_ceiling {
        if chain.is_empty() {
            return Err(if configured {
                PlanError::JsonNotPromised(
                    "the request is too risky for the local model, and no escalation model's \
                     provider can promise a JSON answer (an OpenAI-compatible one can)"
                        .into(),
                )
            } else {
                PlanError::NoProvider
            });
        }
        return Ok(Plan {
            route: Route::External,
            reasons: vec![Reason::RiskAboveCeiling],
            steps: Steps::External { targets: chain },
        });
    }
    let mut reasons = vec![Reason::LocalFirst];
    if chain.is_empty() {
        reasons.push(Reason::NoEscalationTarget);
    }
    // A stream shows the answer as it comes unless the routing says to check it first;
    // with nothing to escalate to there is nothing to check it for.
    let verify = !chain.is_empty() && (!request.stream || table.routing.verify_before_stream);
    Ok(Plan {
        route: Route::Local,
        reasons,
        steps: Steps::LocalFirst {
            escalation: chain,
            verify,
            thresholds,
        },
    })
}

/// A raw prompt goes to the local model or nowhere.
fn plan_raw_prompt(
    request: Request<'_>,
    table: &RoutingTable,
    local_models: &[String],
    risk: &Risk,
) -> Result<Plan, PlanError> {
    let named_local = local_models.iter().any(|name| name == request.model);
    if request.model != AUTO_MODEL && !named_local {
        if table.targets_for(request.model).is_empty() {
            return Err(PlanError::ModelNotFound(request.model.to_string()));
        }
        return Err(PlanError::LocalOnly(format!(
            "`{}` is an external provider's model, and text completions are served by the \
             local model only (`{}`); use /v1/chat/completions for external models",
            request.model,
            local_models.join("`, `")
        )));
    }
    let ceiling = table
        .routing
        .thresholds_for(request.agent)
        .local_risk_ceiling;
    if risk.score > ceiling {
        return Err(PlanError::LocalOnly(format!(
            "the request's risk ({}) is above the local model's ceiling ({ceiling}), and a \
             text completion cannot be escalated; use /v1/chat/completions",
            risk.score
        )));
    }
    Ok(Plan {
        route: Route::Local,
        reasons: vec![if named_local {
            Reason::NamedModel
        } else {
            Reason::RawPrompt
        }],
        steps: Steps::Local,
    })
}

/// The targets whose provider can promise a JSON answer, in order; `None` if none can.
fn promising_json(mut targets: Vec<Target>) -> Option<Vec<Target>> {
    targets.retain(|target| target.provider.constrains_json());
    (!targets.is_empty()).then_some(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::tests::table;

    fn risk(score: u8) -> Risk {
        Risk {
            score,
            reasons: Vec::new(),
        }
    }

    fn ask(model: &str, stream: bool) -> Request<'_> {
        Request {
            model,
            stream,
            agent: "a",
            wants_json: false,
            raw_prompt: false,
        }
    }

    #[test]
    fn a_raw_prompt_stays_local_or_is_refused() {
        let raw = |model| Request {
            raw_prompt: true,
            ..ask(model, false)
        };
        let table = table("  escalation_models: [big]\n");
        let auto = plan(raw(AUTO_MODEL), &table, &local_models(), &risk(0)).unwrap();
        assert!(matches!(auto.steps, Steps::Local));
        assert_eq!(auto.reasons, [Reason::RawPrompt]);
        let named = plan(raw("small"), &table, &local_models(), &risk(0)).unwrap();
        assert_eq!(named.reasons, [Reason::NamedModel]);
        assert!(matches!(
            plan(raw("big"), &table, &local_models(), &risk(0)),
            Err(PlanError::LocalOnly(_))
        ));
        assert!(matches!(
            plan(raw("nothing"), &table, &local_models(), &risk(0)),
            Err(PlanError::ModelNotFound(_))
        ));
        assert!(matches!(
            plan(raw(AUTO_MODEL), &table, &local_models(), &risk(100)),
            Err(PlanError::LocalOnly(_))
        ));
    }

    #[test]
    fn a_json_answer_stays_with_whoever_can_promise_it() {
        let json = |model| Request {
            wants_json: true,
            ..ask(model, false)
        };
        let table = table("  escalation_models: [big]\n");
        let auto = plan(json(AUTO_MODEL), &table, &local_models(), &risk(0)).unwrap();
        assert_eq!(auto.route, Route::Local);
        assert_eq!(targets(&auto.steps), ["big"]);
        let local = plan(json("small"), &table, &local_models(), &risk(0)).unwrap();
        assert!(matches!(local.steps, Steps::Local));
        let named = plan(json("free"), &table, &local_models(), &risk(0)).unwrap();
        assert_eq!(targets(&named.steps), ["free"]);
        let risky = plan(json(AUTO_MODEL), &table, &local_models(), &risk(100)).unwrap();
        assert_eq!(targets(&risky.steps), ["big"]);
    }

    const LOCAL: &[String] = &[];

    fn local_models() -> Vec<String> {
        vec!["small".to_string()]
    }

    fn targets(steps: &Steps) -> Vec<String> {
        match steps {
            Steps::Local => Vec::new(),
            Steps::LocalFirst { escalation, .. } => {
                escalation.iter().map(|t| t.model.clone()).collect()
            }
            Steps::External { targets } => targets.iter().map(|t| t.model.clone()).collect(),
        }
    }

    #[test]
    fn a_named_model_goes_to_whoever_serves_it() {
        let table = table("  escalation_models: [big]\n");
        let local = plan(ask("small", false), &table, &local_models(), &risk(0)).unwrap();
        assert!(matches!(local.steps, Steps::Local));
        assert_eq!(
            (local.route, local.reasons),
            (Route::Local, vec![Reason::NamedModel])
        );
        let external = plan(ask("big", false), &table, &local_models(), &risk(0)).unwrap();
        assert_eq!(external.route, Route::External);
        assert_eq!(targets(&external.steps), ["big"]);
        assert_eq!(
            plan(ask("nothing", false), &table, LOCAL, &risk(0)).unwrap_err(),
            PlanError::ModelNotFound("nothing".into())
        );
    }

    #[test]
    fn risk_above_the_ceiling_skips_the_local_model() {
        let table = table("  escalation_models: [big]\n  local_risk_ceiling: 40\n");
        let risky = plan(ask(AUTO_MODEL, false), &table, LOCAL, &risk(41)).unwrap();
        assert_eq!(risky.route, Route::External);
        assert_eq!(risky.reasons, [Reason::RiskAboveCeiling]);
        assert_eq!(targets(&risky.steps), ["big"]);
        let calm = plan(ask(AUTO_MODEL, false), &table, LOCAL, &risk(40)).unwrap();
        assert_eq!(calm.route, Route::Local);
        let nowhere = table_without_chain();
        assert_eq!(
            plan(ask(AUTO_MODEL, false), &nowhere, LOCAL, &risk(100)).unwrap_err(),
            PlanError::NoProvider
        );
    }

    fn table_without_chain() -> RoutingTable {
        table("  {}\n")
    }

    #[test]
    fn a_local_answer_is_checked_unless_it_streams_unchecked_or_has_nowhere_to_go() {
        let verified = |routing: &str, stream: bool| match plan(
            ask(AUTO_MODEL, stream),
            &table(routing),
            LOCAL,
            &risk(0),
        )
        .unwrap()
        .steps
        {
            Steps::LocalFirst { verify, .. } => verify,
            _ => panic!("an auto request without risk goes local first"),
        };
        let chain = "  escalation_models: [big]\n";
        assert!(verified(chain, false));
        assert!(verified(chain, true));
        let unchecked_streams = "  escalation_models: [big]\n  verify_before_stream: false\n";
        assert!(verified(unchecked_streams, false));
        assert!(!verified(unchecked_streams, true));
        assert!(!verified("  {}\n", false));
        let alone = plan(
            ask(AUTO_MODEL, false),
            &table_without_chain(),
            LOCAL,
            &risk(0),
        )
        .unwrap();
        assert_eq!(
            alone.reasons,
            [Reason::LocalFirst, Reason::NoEscalationTarget]
        );
    }
}
