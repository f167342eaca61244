//! Is a local answer good enough to send? Confident enough (mean and weakest token
//! log-probability above the agent's thresholds), and its tool calls well formed and
//! valid against the schemas the request declared, checked as the tool-call gate
//! checks them (`policy::fits_offered`).

use super::config::Thresholds;
use crate::chat::{FinishReason, GenerationSummary, ToolSpec};
use crate::policy::fits_offered;

use super::Reason;

/// Every reason `check_local_answer` gives.
pub const SHORTFALLS: [Reason; 5] = [
    Reason::LowMeanLogprob,
    Reason::LowTokenLogprob,
    Reason::MalformedToolCall,
    Reason::GenerationDeadline,
    Reason::InvalidToolArguments,
];

/// The reasons to escalate (among `SHORTFALLS`); empty when the answer may be sent.
pub fn check_local_answer(
    summary: &GenerationSummary,
    tools: &[ToolSpec],
    thresholds: &Thresholds,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if let Some(confidence) = summary.confidence {
        if confidence.mean_logprob < thresholds.min_mean_logprob {
            reasons.push(Reason::LowMeanLogprob);
        }
        if confidence.min_logprob < thresholds.min_token_logprob {
            reasons.push(Reason::LowTokenLogprob);
        }
    }
    if !summary.malformed_tool_calls.is_empty() {
        reasons.push(Reason::MalformedToolCall);
    }
    // Cut off mid-answer: what was written may be fine, but it is not the whole answer.
    if summary.finish_reason == FinishReason::Deadline {
        reasons.push(Reason::GenerationDeadline);
    }
    if !summary
        .tool_calls
        .iter()
        .all(|call| fits_offered(call, tools))
    {
        reasons.push(Reason::InvalidToolArguments);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Confidence, MalformedToolCall, Timings, ToolCall, Usage};

    fn summary(mean: f32, min: f32, calls: Vec<ToolCall>, malformed: bool) -> GenerationSummary {
        let malformed = malformed.then(|| MalformedToolCall {
            id: "call_1".into(),
            name: String::new(),
            arguments: String::new(),
            problem: "unclosed".into(),
        });
        GenerationSummary {
            backend: "local".into(),
            model: "m".into(),
            finish_reason: FinishReason::Stop,
            tool_calls: calls,
            malformed_tool_calls: malformed.into_iter().collect(),
            usage: Usage::default(),
            confidence: Some(Confidence {
                mean_logprob: mean,
                min_logprob: min,
            }),
            timings: Timings::default(),
        }
    }

    const THRESHOLDS: Thresholds = Thresholds {
        min_mean_logprob: -1.0,
        min_token_logprob: -8.0,
        local_risk_ceiling: 50,
    };

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            }),
        }]
    }

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "get_weather".into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn confident_well_formed_answers_pass() {
        let answer = summary(-0.3, -2.0, vec![call(r#"{"city":"Paris"}"#)], false);
        assert!(check_local_answer(&answer, &tools(), &THRESHOLDS).is_empty());
    }

    #[test]
    fn each_shortcoming_has_its_reason() {
        let answer = summary(-1.5, -9.0, vec![call(r#"{"city":27}"#)], true);
        assert_eq!(
            check_local_answer(&answer, &tools(), &THRESHOLDS),
            vec![
                Reason::LowMeanLogprob,
                Reason::LowTokenLogprob,
                Reason::MalformedToolCall,
                Reason::InvalidToolArguments
            ]
        );
        let missing_field = summary(-0.1, -0.1, vec![call("{}")], false);
        assert_eq!(
            check_local_answer(&missing_field, &tools(), &THRESHOLDS),
            vec![Reason::InvalidToolArguments]
        );
        let cut_off = GenerationSummary {
            finish_reason: FinishReason::Deadline,
            ..summary(-0.1, -0.1, Vec::new(), false)
        };
        assert_eq!(
            check_local_answer(&cut_off, &tools(), &THRESHOLDS),
            vec![Reason::GenerationDeadline]
        );
    }

    /// Routing reads a call as the gate does: a name differing only in case is the
    /// offered tool, and arguments with a repeated key are not an object it accepts.
    #[test]
    fn calls_are_judged_as_the_tool_call_gate_judges_them() {
        let mut renamed = call(r#"{"city":"Paris"}"#);
        renamed.name = "Get_Weather".into();
        let answer = summary(-0.1, -0.1, vec![renamed], false);
        assert!(check_local_answer(&answer, &tools(), &THRESHOLDS).is_empty());
        let repeated = summary(
            -0.1,
            -0.1,
            vec![call(r#"{"city":"Paris","city":"Rome"}"#)],
            false,
        );
        assert_eq!(
            check_local_answer(&repeated, &tools(), &THRESHOLDS),
            vec![Reason::InvalidToolArguments]
        );
    }
}
