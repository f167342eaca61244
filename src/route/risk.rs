//! A request's risk, scored 0-100 before any model sees it. Above the agent's local
//! ceiling the request goes straight to an external provider.

use serde::Serialize;

use crate::config::RoutingConfig;
use crate::gateway::RequestMetadata;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Risk {
    pub score: u8,
    /// What contributed, as `label:<key>=<value>` codes.
    pub reasons: Vec<String>,
}

/// The score is the highest contribution, not a sum: two mild signals do not make a
/// dangerous request.
pub fn assess_risk(metadata: &RequestMetadata, routing: &RoutingConfig) -> Risk {
    let mut risk = Risk::default();
    for (key, value) in &metadata.labels {
        let label = format!("{key}={value}");
        if let Some(&score) = routing.label_risk.get(&label) {
            risk.score = risk.score.max(score);
            risk.reasons.push(format!("label:{label}"));
        }
    }
    risk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::{validate_routing, RawRouting};

    #[test]
    fn the_highest_label_wins() {
        let raw = RawRouting {
            label_risk: [
                ("sensitivity=high".to_string(), 80),
                ("env=prod".to_string(), 30),
            ]
            .into(),
            ..RawRouting::default()
        };
        let routing = validate_routing(raw, &[], &[], "routing.").unwrap();
        let metadata = RequestMetadata {
            labels: [
                ("env".to_string(), "prod".to_string()),
                ("sensitivity".to_string(), "high".to_string()),
            ]
            .into(),
            ..RequestMetadata::default()
        };
        let risk = assess_risk(&metadata, &routing);
        assert_eq!(risk.score, 80);
        assert_eq!(
            risk.reasons,
            vec!["label:env=prod", "label:sensitivity=high"]
        );
        assert_eq!(
            assess_risk(&RequestMetadata::default(), &routing),
            Risk::default()
        );
    }
}
