//! The `warden policy check` and `warden policy test` commands, run as an operator
//! runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn check_validates_and_reports_dead_rules_and_unnamed_tools() {
    let shipped = warden(&["policy", "check", "routing/policy.yaml"]);
    assert!(shipped.status.success(), "{}", text(&shipped));
    assert!(text(&shipped).contains("valid"));
    assert!(
        !text(&shipped).contains("unreachable"),
        "{}",
        text(&shipped)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "tools: {a: {tier: 0}, b: {tier: 1}}\nrules:\n  - {id: all, match: {tool: \"*\"}, decision: DENY, reason: r}\n  - {id: a, match: {tool: a}, decision: ALLOW, reason: r}\n",
    )
    .unwrap();
    let output = warden(&["policy", "check", file.to_str().unwrap()]);
    assert!(output.status.success());
    assert!(
        text(&output).contains("rule `a` is unreachable: rule `all`"),
        "{}",
        text(&output)
    );

    std::fs::write(&file, "tools: {b: {tier: 1}}\nrules:\n  - {id: a, match: {tool: a}, decision: ALLOW, reason: r}\n").unwrap();
    let output = warden(&["policy", "check", file.to_str().unwrap()]);
    assert!(
        text(&output).contains("no rule names tool `b`"),
        "{}",
        text(&output)
    );

    std::fs::write(&file, "rules:\n  - {id: a, decision: ALLOW, reason: r, match: {args: [{path: x, op: \"=~\", value: 1}]}}\n").unwrap();
    let output = warden(&["policy", "check", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("rules[0].match.args[0]")
            && text(&output).contains("unknown operator"),
        "{}",
        text(&output)
    );
}

#[test]
fn test_runs_the_adversarial_pack_and_fails_on_a_mismatch() {
    let output = warden(&[
        "policy",
        "test",
        "tests/policy/policy.yaml",
        "tests/policy/adversarial.yaml",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(" 0 failed"), "{}", text(&output));

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - {name: wrong on purpose, tool: db_drop, expect: ALLOW}\n  - {name: right, tool: db_query, expect: ALLOW, rule: read-only}\n",
    )
    .unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/policy.yaml");
    let output = warden(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("MISMATCH: decision DENY"),
        "{}",
        text(&output)
    );
    assert!(text(&output).contains("1 of 2 cases"), "{}", text(&output));
}
