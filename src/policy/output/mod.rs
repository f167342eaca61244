//! Output safety: detectors for personal data and secrets in generated text, and what
//! the policy does with each per agent: ALLOW, REDACT (masked in place) or QUARANTINE
//! (the content is withheld and a ticket opened for review). `guard` applies them to
//! a stream without ever sending a finding unmasked.

pub mod detectors;
mod folded;
pub mod guard;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use detectors::{Detector, Detectors, Span};
pub use guard::{GuardEnd, OutputGuard, Release};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OutputAction {
    #[default]
    Allow,
    Redact,
    Quarantine,
}

impl OutputAction {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(OutputAction::Allow),
            "redact" => Some(OutputAction::Redact),
            "quarantine" => Some(OutputAction::Quarantine),
            _ => None,
        }
    }
}

/// The action for each detector, in `Detector::ALL` order.
pub type Actions = [OutputAction; Detector::ALL.len()];

pub struct OutputPolicy {
    pub(in crate::policy) detectors: Arc<Detectors>,
    pub(in crate::policy) defaults: Actions,
    pub(in crate::policy) agents: HashMap<String, Actions>,
}

impl OutputPolicy {
    /// The detectors and actions that apply to one agent's output.
    pub fn scanner(&self, agent: &str) -> Scanner {
        Scanner {
            detectors: self.detectors.clone(),
            actions: self.agents.get(agent).copied().unwrap_or(self.defaults),
        }
    }
}

/// What one response is screened with.
#[derive(Clone)]
pub struct Scanner {
    detectors: Arc<Detectors>,
    actions: Actions,
}

/// A stretch of text a detector found, with the action the policy takes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
    pub action: OutputAction,
}

impl Scanner {
    /// Whether any detector does more than allow: if not, text passes untouched.
    pub fn active(&self) -> bool {
        self.actions
            .iter()
            .any(|&action| action != OutputAction::Allow)
    }

    /// Findings that are not allowed, overlapping ones merged (the stricter action
    /// wins), in order.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut findings: Vec<Finding> = self
            .detectors
            .find(text)
            .into_iter()
            .map(|span| Finding {
                start: span.start,
                end: span.end,
                detector: span.detector,
                action: self.actions[span.detector.index()],
            })
            .filter(|finding| finding.action != OutputAction::Allow)
            .collect();
        findings.sort_by_key(|finding| (finding.start, std::cmp::Reverse(finding.end)));
        let mut merged: Vec<Finding> = Vec::with_capacity(findings.len());
        for finding in findings {
            match merged.last_mut() {
                Some(last) if finding.start < last.end => {
                    last.end = last.end.max(finding.end);
                    if finding.action > last.action {
                        last.action = finding.action;
                        last.detector = finding.detector;
                    }
                }
                _ => merged.push(finding),
            }
        }
        merged
    }
}

/// How a redacted stretch reads.
pub fn mask(detector: Detector) -> String {
    format!("[REDACTED:{}]", detector.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner(actions: &[(Detector, OutputAction)]) -> Scanner {
        let mut all = Actions::default();
        for (detector, action) in actions {
            all[detector.index()] = *action;
        }
        Scanner {
            detectors: Arc::new(Detectors::new().unwrap()),
            actions: all,
        }
    }

    #[test]
    fn allowed_detectors_find_nothing_and_overlaps_merge() {
        let text = "mail bob@example.com or call +1 415 555 2671";
        let only_email = scanner(&[(Detector::Email, OutputAction::Redact)]);
        let found = only_email.scan(text);
        assert_eq!(found.len(), 1);
        assert_eq!(&text[found[0].start..found[0].end], "bob@example.com");
        assert!(!scanner(&[]).active());

        // A card number also reads as digits a phone pattern could take: one span,
        // the stricter action.
        let text = "card 4111 1111 1111 1111 ok";
        let both = scanner(&[
            (Detector::Phone, OutputAction::Redact),
            (Detector::Card, OutputAction::Quarantine),
        ]);
        let found = both.scan(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].action, OutputAction::Quarantine);
        assert_eq!(&text[found[0].start..found[0].end], "4111 1111 1111 1111");
    }
}
