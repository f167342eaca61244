//! Autonomy modes, the stages of an agent's rollout: `observe` (only read-only tools
//! run), `suggest` (everything above tier 0 needs approval), `auto_low` (tiers 0-1
//! run, 2-3 need approval), `guarded` (tier 3 denied unless a break-glass rule names
//! the tool). A mode is a ceiling: combined with the rules, the stricter decision wins.

use serde::{Deserialize, Serialize};

use super::decide::Verdict;

/// The highest risk tier; unknown tools are treated as this.
pub const MAX_TIER: u8 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AutonomyMode {
    Observe,
    Suggest,
    AutoLow,
    /// The most autonomous stage, and the default: rules decide, except that
    /// irreversible tools need a break-glass rule.
    #[default]
    Guarded,
}

impl AutonomyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AutonomyMode::Observe => "observe",
            AutonomyMode::Suggest => "suggest",
            AutonomyMode::AutoLow => "auto_low",
            AutonomyMode::Guarded => "guarded",
        }
    }

    /// The most this mode lets a call of `tier` do, with why; `None` when the mode
    /// leaves the decision to the rules.
    pub fn ceiling(self, tier: u8, break_glass: bool) -> Option<(Verdict, String)> {
        let mode = self.as_str();
        match self {
            AutonomyMode::Observe if tier > 0 => Some((
                Verdict::Deny,
                format!("agent mode `{mode}` runs only tier-0 (read-only) tools; this one is tier {tier}"),
            )),
            AutonomyMode::Suggest if tier > 0 => Some((
                Verdict::RequireApproval,
                format!("agent mode `{mode}`: tools above tier 0 need approval; this one is tier {tier}"),
            )),
            AutonomyMode::AutoLow if tier >= 2 => Some((
                Verdict::RequireApproval,
                format!("agent mode `{mode}`: tier-{tier} tools need approval"),
            )),
            AutonomyMode::Guarded if tier >= MAX_TIER && !break_glass => Some((
                Verdict::Deny,
                format!("agent mode `{mode}`: tier-{tier} (irreversible) tools need a break-glass rule"),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_caps_its_tiers() {
        let verdict = |mode: AutonomyMode, tier, glass| mode.ceiling(tier, glass).map(|c| c.0);
        use AutonomyMode::*;
        assert_eq!(verdict(Observe, 0, false), None);
        assert_eq!(verdict(Observe, 1, true), Some(Verdict::Deny));
        assert_eq!(verdict(Suggest, 0, false), None);
        assert_eq!(verdict(Suggest, 1, false), Some(Verdict::RequireApproval));
        assert_eq!(verdict(AutoLow, 1, false), None);
        assert_eq!(verdict(AutoLow, 2, false), Some(Verdict::RequireApproval));
        assert_eq!(verdict(Guarded, 2, false), None);
        assert_eq!(verdict(Guarded, 3, false), Some(Verdict::Deny));
        assert_eq!(verdict(Guarded, 3, true), None);
    }
}
