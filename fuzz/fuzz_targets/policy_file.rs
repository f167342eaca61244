//! A policy file, as an operator may write it: compiled or refused naming a key; a
//! compiled one decides calls and screens text. Never a panic or a hang.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warden::chat::ToolCall;
use warden::policy::{AutonomyMode, Policy, Subject};

fuzz_target!(|text: &str| {
    let Ok(policy) = Policy::from_yaml(text, Path::new("fuzz/policy.yaml")) else {
        return;
    };
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let subject = Subject {
        agent: "agent-a",
        tenant: "acme",
        role: Some("support"),
        labels: &labels,
        autonomy: AutonomyMode::Guarded,
    };
    let calls = [
        ("refund", r#"{"amount": 600, "currency": "EUR"}"#),
        (
            "http_get",
            r#"{"url": "https://evil.example/x", "timeout": 99}"#,
        ),
        ("send_email", r#"{"to": ["a@b.c"], "items": [{"qty": 3}]}"#),
        ("Delete_Account", "{}"),
    ];
    for (name, arguments) in calls {
        let call = ToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        let _ = policy.check(&call, None, &subject);
    }
    let _ = policy
        .output()
        .scanner("agent-a")
        .scan("mail bob@example.com, card 4111 1111 1111 1111");
});
