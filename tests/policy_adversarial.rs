//! The adversarial pack (tests/policy/adversarial.yaml) decided under
//! tests/policy/policy.yaml, and tool calls split across streamed pieces (put back
//! together by the assembler both provider dialects use): every case must get exactly
//! its expected decision. Zero bypasses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warden::backend::provider::assemble::{Assembled, DeltaError, ToolCallDeltas};
use warden::chat::{ToolCall, ToolSpec};
use warden::policy::{cases, AutonomyMode, Policy, ReasonCode, Subject, Verdict};

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn policy() -> Policy {
    Policy::load(&repo("tests/policy/policy.yaml")).unwrap()
}

#[test]
fn every_adversarial_case_is_decided_as_expected() {
    let file = cases::load(&repo("tests/policy/adversarial.yaml")).unwrap();
    let results = cases::run(&policy(), &file);
    assert!(results.len() >= 40, "the pack has {} cases", results.len());
    let failures: Vec<_> = results.iter().filter(|r| r.mismatch.is_some()).collect();
    assert!(failures.is_empty(), "{}", cases::table(&results));
    // The pack must exercise every decision.
    for verdict in [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::RequireApproval,
        Verdict::AllowWithConstraints,
    ] {
        assert!(results.iter().any(|r| r.got == verdict), "{verdict:?}");
    }
}

/// A call delivered in pieces, as a provider streams it.
struct Piece<'a> {
    index: usize,
    id: Option<&'a str>,
    name: Option<&'a str>,
    arguments: Option<&'a str>,
}

fn piece<'a>(
    index: usize,
    id: Option<&'a str>,
    name: Option<&'a str>,
    arguments: Option<&'a str>,
) -> Piece<'a> {
    Piece {
        index,
        id,
        name,
        arguments,
    }
}

fn assemble(pieces: &[Piece]) -> Assembled {
    let mut deltas = ToolCallDeltas::default();
    for p in pieces {
        deltas.push(p.index, p.id, p.name, p.arguments);
    }
    deltas.finish()
}

fn decide(call: &ToolCall) -> (Verdict, ReasonCode, Option<String>) {
    let labels = BTreeMap::new();
    let subject = Subject {
        agent: "support-bot",
        tenant: "acme",
        role: Some("support"),
        labels: &labels,
        autonomy: AutonomyMode::Guarded,
    };
    let offered: Vec<ToolSpec> = ["send_email", "refund", "http_get"]
        .iter()
        .map(|name| ToolSpec {
            name: name.to_string(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        })
        .collect();
    let checked = policy().check(call, Some(&offered), &subject);
    (
        checked.decision.verdict,
        checked.decision.code,
        checked.decision.rule,
    )
}

#[test]
fn calls_split_across_streamed_pieces_are_decided_whole() {
    let id = Some("call_1");
    let cases: Vec<(&str, Vec<Piece>, Verdict, Option<&str>)> = vec![
        (
            "name split mid-word",
            vec![
                piece(0, id, Some("send_"), None),
                piece(0, None, Some("email"), Some("{\"to\": \"eve@evil.com\"}")),
            ],
            Verdict::Deny,
            Some("email-other"),
        ),
        (
            "invisible character in its own piece",
            vec![
                piece(0, id, Some("send"), None),
                piece(0, None, Some("\u{200b}"), None),
                piece(0, None, Some("_email"), Some("{\"to\":\"eve@evil.com\"}")),
            ],
            Verdict::Deny,
            Some("email-other"),
        ),
        (
            "address split across pieces",
            vec![
                piece(0, id, Some("send_email"), Some("{\"to\": \"bob@ac")),
                piece(0, None, None, Some("me.com.evil")),
                piece(0, None, None, Some(".com\"}")),
            ],
            Verdict::Deny,
            Some("email-other"),
        ),
        (
            "escape sequence split in two",
            vec![
                piece(0, id, Some("send_email"), Some("{\"to\": \"bob\\u00")),
                piece(0, None, None, Some("40acme.com\"}")),
            ],
            Verdict::Allow,
            Some("email-own-domain"),
        ),
        (
            "duplicate key in a later piece",
            vec![
                piece(0, id, Some("refund"), Some("{\"amount\": 1,")),
                piece(0, None, None, Some(" \"amount\": 900}")),
            ],
            Verdict::Deny,
            None,
        ),
        (
            "number split across pieces",
            vec![
                piece(0, id, Some("refund"), Some("{\"amount\": 6")),
                piece(0, None, None, Some("00}")),
            ],
            Verdict::RequireApproval,
            Some("refund-large"),
        ),
        (
            "URL split at the user-info sign",
            vec![
                piece(
                    0,
                    id,
                    Some("http_get"),
                    Some("{\"url\": \"https://api.acme.com"),
                ),
                piece(0, None, None, Some("@evil.com/\"}")),
            ],
            Verdict::Deny,
            None,
        ),
    ];
    for (name, pieces, verdict, rule) in cases {
        let Assembled { calls, malformed } = assemble(&pieces);
        assert_eq!(malformed, [], "{name}");
        assert_eq!(calls.len(), 1, "{name}");
        let (got, _, got_rule) = decide(&calls[0]);
        assert_eq!(got, verdict, "{name}");
        assert_eq!(got_rule.as_deref(), rule, "{name}");
        // The same call delivered whole gets the same decision.
        let whole = ToolCall {
            id: "call_1".into(),
            name: pieces.iter().filter_map(|p| p.name).collect(),
            arguments: pieces.iter().filter_map(|p| p.arguments).collect(),
        };
        assert_eq!(decide(&whole), decide(&calls[0]), "{name}");
    }
}

#[test]
fn interleaved_calls_stay_apart_and_contradictions_are_refused() {
    let Assembled { calls, malformed } = assemble(&[
        piece(0, Some("call_a"), Some("refund"), Some("{\"amount\":")),
        piece(1, Some("call_b"), Some("send_email"), Some("{\"to\":")),
        piece(0, None, None, Some(" 20}")),
        piece(1, None, None, Some(" \"eve@evil.com\"}")),
    ]);
    assert_eq!(malformed, []);
    assert_eq!(calls[0].id, "call_a");
    assert_eq!(decide(&calls[0]).0, Verdict::Allow);
    assert_eq!(calls[1].id, "call_b");
    assert_eq!(decide(&calls[1]).0, Verdict::Deny);

    // A second call smuggled in under the first one's index: neither goes out, and the
    // call is passed on as malformed, for the gate to refuse and record.
    let problem = |assembled: &Assembled| {
        assert_eq!(assembled.calls, []);
        assert_eq!(assembled.malformed.len(), 1);
        assembled.malformed[0].problem.clone()
    };
    let smuggled = assemble(&[
        piece(0, Some("call_a"), Some("refund"), Some("{\"amount\": 20}")),
        piece(0, Some("call_b"), Some("send_email"), Some("{}")),
    ]);
    assert_eq!(
        problem(&smuggled),
        DeltaError::IdChanged {
            index: 0,
            first: "call_a".into(),
            second: "call_b".into()
        }
        .to_string()
    );
    assert_eq!(smuggled.malformed[0].id, "call_a");
    let nameless = assemble(&[piece(0, Some("call_a"), None, Some("{}"))]);
    assert_eq!(problem(&nameless), DeltaError::MissingName(0).to_string());
    let far = assemble(&[piece(100_000, None, Some("x"), None)]);
    assert_eq!(
        problem(&far),
        DeltaError::IndexOutOfRange(100_000).to_string()
    );
    // Arguments cut short are still a call: policy refuses them for what they are.
    let unfinished = assemble(&[piece(
        0,
        Some("call_a"),
        Some("refund"),
        Some("{\"amount\": 2"),
    )]);
    assert_eq!(unfinished.malformed, []);
    assert_eq!(
        decide(&unfinished.calls[0]).1,
        ReasonCode::MalformedArguments
    );
}
