//! Policy decision latency with a 1,000-rule policy: one tool call decided as the
//! gateway decides it (name normalised, arguments parsed strictly, canonicalised and
//! hashed, rules matched, constraints applied, autonomy mode combined), single thread.
//! `cargo bench --bench policy`.
//!
//! Target (issue 5): p50 under 5 µs per call. Besides criterion's estimates, prints
//! p50 and p99 over individually timed calls, throughput, and what compiling a
//! request's declared schema costs the first time it is seen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warden::chat::{ToolCall, ToolSpec};
use warden::policy::{AutonomyMode, Policy, Subject};

const TOOLS: usize = 249;
const SAMPLES: usize = 200_000;

/// 249 tools with four rules each, plus four glob rules: 1,000 rules.
fn policy_yaml() -> String {
    let mut yaml = String::from("default: DENY\ntenants: {acme: {domains: [acme.com]}}\ntools:\n");
    for i in 0..TOOLS {
        let _ = writeln!(
            yaml,
            "  tool_{i:03}: {{tier: {}, tags: [t{}]}}",
            i % 3,
            i % 7
        );
    }
    yaml.push_str("rules:\n");
    for pattern in ["db_*", "admin_*", "*_delete", "internal_*"] {
        let _ = writeln!(
            yaml,
            "  - {{id: glob-{pattern}, match: {{tool: \"{pattern}\"}}, decision: DENY, reason: r}}"
        );
    }
    for i in 0..TOOLS {
        let _ = write!(
            yaml,
            "  - {{id: big-{i}, match: {{tool: tool_{i:03}, args: [{{path: amount, op: \">\", value: 500}}]}}, decision: REQUIRE_APPROVAL, reason: r}}\n\
             \x20 - {{id: prod-{i}, match: {{tool: tool_{i:03}, agent: [ops-1, ops-2], labels: {{env: prod}}}}, decision: DENY, reason: r}}\n\
             \x20 - {{id: mail-{i}, match: {{tool: tool_{i:03}, args: [{{path: to, op: host_in, value: $tenant.domains}}]}}, decision: ALLOW, reason: r}}\n\
             \x20 - {{id: capped-{i}, match: {{tool: tool_{i:03}}}, decision: ALLOW_WITH_CONSTRAINTS, constraints: {{max: {{amount: 1000}}}}, reason: r}}\n"
        );
    }
    yaml
}

/// A mix of calls reaching different rules: approval, own-domain mail, constrained,
/// constraint violation.
fn calls() -> Vec<ToolCall> {
    let call = |name: &str, arguments: &str| ToolCall {
        id: "call_bench".into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    vec![
        call("tool_017", r#"{"amount": 900, "order_id": "A-1"}"#),
        call(
            "Tool_123",
            r#"{"to": "bob@acme.com", "subject": "hi", "body": "hello there"}"#,
        ),
        call(
            "tool_200",
            r#"{"amount": "120.50", "items": [{"sku": "x", "qty": 2}]}"#,
        ),
        call("tool_248", r#"{"amount": 5000}"#),
    ]
}

fn subject(labels: &BTreeMap<String, String>) -> Subject<'_> {
    Subject {
        agent: "support-bot",
        tenant: "acme",
        role: Some("support"),
        labels,
        autonomy: AutonomyMode::Guarded,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(
    policy: &Policy,
    labels: &BTreeMap<String, String>,
    name: &str,
    calls: &[ToolCall],
    declared: Option<&[ToolSpec]>,
) {
    let subject = subject(labels);
    let mut times = Vec::with_capacity(SAMPLES);
    let started = Instant::now();
    for i in 0..SAMPLES {
        let call = &calls[i % calls.len()];
        let t = Instant::now();
        black_box(policy.check(black_box(call), declared, &subject));
        times.push(t.elapsed());
    }
    let wall = started.elapsed();
    times.sort();
    println!(
        "policy decision, 1000 rules, {name}: p50 {:.2} µs, p99 {:.2} µs, throughput {:.0} calls/s on one thread",
        percentile(&times, 0.50).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        SAMPLES as f64 / wall.as_secs_f64()
    );
}

/// What the schema cache saves: a request's schema is compiled on first sight only.
fn first_sight_compile(schema: &serde_json::Value) {
    const ROUNDS: u32 = 2_000;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        black_box(jsonschema::validator_for(black_box(schema)).unwrap());
    }
    let compile = started.elapsed() / ROUNDS;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        black_box(warden::schema::compiled(black_box(schema)).unwrap());
    }
    let cached = started.elapsed() / ROUNDS;
    println!(
        "declared schema: compiled on first sight {:.2} µs, found in the cache afterwards {:.2} µs",
        compile.as_secs_f64() * 1e6,
        cached.as_secs_f64() * 1e6
    );
}

fn bench(c: &mut Criterion) {
    let policy = Policy::from_yaml(&policy_yaml(), Path::new("bench-policy.yaml")).unwrap();
    assert_eq!(policy.rules().len(), 1000);
    let labels = BTreeMap::from([("env".to_string(), "staging".to_string())]);
    let known = calls();
    let unknown = vec![ToolCall {
        id: "call_bench".into(),
        name: "mystery_tool".into(),
        arguments: r#"{"amount": 1}"#.into(),
    }];
    let declared: Vec<ToolSpec> = known
        .iter()
        .map(|call| ToolSpec {
            name: call.name.to_lowercase(),
            description: None,
            parameters: serde_json::json!({"type": "object", "properties": {"amount": {"type": ["number", "string"]}}}),
        })
        .collect();

    report(&policy, &labels, "catalog tools", &known, None);
    report(
        &policy,
        &labels,
        "unknown tool (only glob rules apply)",
        &unknown,
        None,
    );
    report(
        &policy,
        &labels,
        "catalog tools + request schema",
        &known,
        Some(&declared),
    );

    first_sight_compile(&declared[0].parameters);

    let subject = subject(&labels);
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    for (index, call) in known.iter().enumerate() {
        group.bench_function(format!("decide/1000-rules/call-{index}"), |b| {
            b.iter(|| policy.check(black_box(call), None, &subject))
        });
    }
    group.bench_function("decide/1000-rules/unknown-tool", |b| {
        b.iter(|| policy.check(black_box(&unknown[0]), None, &subject))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
