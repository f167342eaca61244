//! Replaying recorded decisions under a candidate threshold: which local answers would
//! have been served, which escalated, and what that would have cost.
//!
//! Only requests the local model answered are judged again; the others (risk above the
//! ceiling, a named external model, a prompt too long) went external before any
//! threshold applied and keep what they cost. An answer that would now escalate but was
//! served locally at the time has no external price on record, so its escalation is
//! priced from the escalation model's prices applied to the local answer's token
//! counts, and counted as estimated.

use rust_decimal::Decimal;

use super::records::{Decision, Log};

/// Prices an escalation that never happened.
pub trait EscalationPricing {
    fn estimate(&self, decision: &Decision) -> Option<Decimal>;
}

/// A candidate: the mean-logprob threshold under test, and the per-token threshold for
/// each agent (held where the configuration puts it).
pub struct Candidate<'a> {
    pub min_mean_logprob: f32,
    pub min_token_logprob: &'a dyn Fn(&str) -> f32,
}

/// What one candidate would have done to the recorded traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub min_mean_logprob: f32,
    pub requests: usize,
    /// Requests the local model answered, judged again by the candidate.
    pub judged: usize,
    pub served_locally: usize,
    pub escalated: usize,
    pub cost: Decimal,
    /// Escalations priced by estimate, and those no price covered (counted as free).
    pub estimated: usize,
    pub unpriced: usize,
    /// Of the answers the candidate serves locally that were also served locally at the
    /// time and whose run has an outcome: how many, and how many succeeded.
    pub outcomes_known: usize,
    pub outcomes_succeeded: usize,
}

impl Replayed {
    pub fn local_share(&self) -> Option<f64> {
        ratio(self.served_locally, self.requests)
    }

    pub fn escalation_rate(&self) -> Option<f64> {
        ratio(self.escalated, self.judged)
    }

    pub fn local_success_rate(&self) -> Option<f64> {
        ratio(self.outcomes_succeeded, self.outcomes_known)
    }
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

pub fn replay(log: &Log, candidate: &Candidate<'_>, pricing: &dyn EscalationPricing) -> Replayed {
    let mut replayed = Replayed {
        min_mean_logprob: candidate.min_mean_logprob,
        requests: log.decisions.len(),
        judged: 0,
        served_locally: 0,
        escalated: 0,
        cost: Decimal::ZERO,
        estimated: 0,
        unpriced: 0,
        outcomes_known: 0,
        outcomes_succeeded: 0,
    };
    for decision in &log.decisions {
        let Some(answer) = decision.local else {
            replayed.served_locally += usize::from(decision.served_locally());
            replayed.cost += decision.external_cost;
            continue;
        };
        replayed.judged += 1;
        let passes = !answer.faulty
            && answer.confidence.mean_logprob >= candidate.min_mean_logprob
            && answer.confidence.min_logprob >= (candidate.min_token_logprob)(&decision.agent);
        replayed.cost += answer.cost;
        if passes {
            replayed.served_locally += 1;
            if let (true, Some(succeeded)) = (decision.served_locally(), log.outcome(decision)) {
                replayed.outcomes_known += 1;
                replayed.outcomes_succeeded += usize::from(succeeded);
            }
        } else {
            replayed.escalated += 1;
            if decision.answered_externally {
                replayed.cost += decision.external_cost;
            } else {
                match pricing.estimate(decision) {
                    Some(cost) => {
                        replayed.estimated += 1;
                        replayed.cost += cost;
                    }
                    None => replayed.unpriced += 1,
                }
            }
        }
    }
    replayed
}

/// The default candidates: the thresholds below which each further tenth of the judged
/// answers falls (so the table spans the traffic actually seen), plus the one in force.
pub fn default_candidates(log: &Log, current: f32) -> Vec<f32> {
    let mut means: Vec<f32> = log
        .decisions
        .iter()
        .filter_map(|decision| decision.local.map(|answer| answer.confidence.mean_logprob))
        .collect();
    means.sort_by(f32::total_cmp);
    let mut candidates = vec![current];
    if !means.is_empty() {
        for tenth in 1..10 {
            let value = means[(means.len() * tenth / 10).min(means.len() - 1)];
            candidates.push((value * 100.0).round() / 100.0);
        }
    }
    candidates.sort_by(|a, b| b.total_cmp(a));
    candidates.dedup();
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Confidence, Usage};
    use crate::route::Route;
    use crate::tune::records::LocalAnswer;

    /// Prices an estimated escalation at one cent per request.
    struct Cent;

    impl EscalationPricing for Cent {
        fn estimate(&self, _: &Decision) -> Option<Decimal> {
            Some(Decimal::new(1, 2))
        }
    }

    fn answered(route: Route, mean: f32, external_cost: Decimal, run: &str) -> Decision {
        Decision {
            agent: "a".into(),
            run_id: Some(run.into()),
            route,
            local: Some(LocalAnswer {
                confidence: Confidence {
                    mean_logprob: mean,
                    min_logprob: -2.0,
                },
                usage: Usage::default(),
                cost: Decimal::new(1, 4),
                faulty: false,
            }),
            external_cost,
            answered_externally: route == Route::Escalated,
        }
    }

    fn log() -> Log {
        let mut log = Log {
            decisions: vec![
                answered(Route::Local, -0.2, Decimal::ZERO, "good"),
                answered(Route::Local, -0.8, Decimal::ZERO, "bad"),
                answered(Route::Escalated, -1.5, Decimal::new(3, 2), "x"),
                Decision {
                    agent: "a".into(),
                    run_id: None,
                    route: Route::External,
                    local: None,
                    external_cost: Decimal::new(5, 2),
                    answered_externally: true,
                },
            ],
            ..Log::default()
        };
        log.outcomes.insert("good".into(), true);
        log.outcomes.insert("bad".into(), false);
        log
    }

    fn run(threshold: f32) -> Replayed {
        run_on(&log(), threshold)
    }

    fn run_on(log: &Log, threshold: f32) -> Replayed {
        let token = |_: &str| -5.0;
        let candidate = Candidate {
            min_mean_logprob: threshold,
            min_token_logprob: &token,
        };
        replay(log, &candidate, &Cent)
    }

    #[test]
    fn a_lenient_threshold_serves_more_locally_and_saves_the_recorded_escalation() {
        let lenient = run(-2.0);
        assert_eq!((lenient.served_locally, lenient.escalated), (3, 0));
        // Three local answers, and the external-only request.
        assert_eq!(lenient.cost, Decimal::new(3, 4) + Decimal::new(5, 2));
        assert_eq!(lenient.local_success_rate(), Some(0.5));
        assert_eq!(lenient.escalation_rate(), Some(0.0));
    }

    #[test]
    fn a_strict_threshold_prices_unrecorded_escalations_by_estimate() {
        let strict = run(-0.5);
        assert_eq!((strict.served_locally, strict.escalated), (1, 2));
        assert_eq!(strict.estimated, 1);
        assert_eq!(
            strict.cost,
            Decimal::new(3, 4) + Decimal::new(1, 2) + Decimal::new(3, 2) + Decimal::new(5, 2)
        );
        assert_eq!(strict.local_success_rate(), Some(1.0));
        assert_eq!(strict.local_share(), Some(0.25));
    }

    #[test]
    fn the_per_token_threshold_and_tool_faults_still_escalate() {
        let mut log = log();
        log.decisions.truncate(1);
        let strict_token = |_: &str| -1.0;
        let candidate = Candidate {
            min_mean_logprob: -3.0,
            min_token_logprob: &strict_token,
        };
        assert_eq!(replay(&log, &candidate, &Cent).escalated, 1);
        if let Some(answer) = log.decisions[0].local.as_mut() {
            answer.faulty = true;
        }
        assert_eq!(run_on(&log, -3.0).escalated, 1);
    }

    #[test]
    fn default_candidates_span_the_recorded_confidence_and_include_the_current() {
        let candidates = default_candidates(&log(), -1.0);
        assert!(candidates.contains(&-1.0));
        assert!(candidates.contains(&-0.2) && candidates.contains(&-1.5));
        assert!(candidates.windows(2).all(|pair| pair[0] > pair[1]));
    }
}
