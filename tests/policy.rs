//! Tool-call policy through the real gateway and the real local model: every decision
//! type, approvals (bound to the call's hash, surviving a restart, private to their
//! agent), streaming, output safety, hot reload, autonomy modes and replay of recorded
//! decisions. Calls from external providers and risk signals: `policy_upstream.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{repo_path, sse_data, streamed_content, user, TestServer, ADMIN_KEY, KEY_A, KEY_B};
use serde_json::{json, Value};
use warden::audit::{AuditConfig, AuditLog};
use warden::backend::local::LocalBackend;
use warden::config::raw::RawPolicySettings;
use warden::config::PolicyConfig;
use warden::gateway::operator::Operations;
use warden::governor::{Governor, GovernorSettings};
use warden::policy::AutonomyMode;
use warden::route::{RoutingState, RoutingTable};

/// A gateway on its own policy file and approvals store.
struct Gateway {
    base: String,
    client: reqwest::Client,
    audit_dir: PathBuf,
}

async fn serve(policy: &Path, approvals: &Path, autonomy_b: AutonomyMode) -> Gateway {
    let config = TestServer::builder()
        .agent("agent-b", |agent| agent.autonomy = autonomy_b)
        .configure(|config| {
            config.policy = RawPolicySettings {
                file: Some(policy.display().to_string()),
                approvals_file: Some(approvals.display().to_string()),
            };
        })
        .config();
    let local = Arc::new(LocalBackend::loading(
        "smollm2-135m-instruct",
        2,
        config.local.queue_timeout,
    ));
    local.set_ready(common::engine());
    Gateway {
        base: common::serve(&config, local).await,
        client: reqwest::Client::new(),
        audit_dir: config.audit.dir.clone(),
    }
}

fn test_policy() -> PathBuf {
    repo_path("tests/policy/server.yaml")
}

fn tools() -> Value {
    let function = |name: &str, description: &str, properties: Value, required: Value| {
        json!({"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}})
    };
    json!([
        function(
            "get_weather",
            "Get the current weather for a city",
            json!({"city": {"type": "string"}}),
            json!(["city"])
        ),
        function(
            "send_email",
            "Send an e-mail",
            json!({"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}),
            json!(["to"])
        ),
        function(
            "http_get",
            "Fetch a URL",
            json!({"url": {"type": "string"}}),
            json!(["url"])
        ),
        function(
            "refund",
            "Refund an order",
            json!({"order_id": {"type": "string"}, "amount": {"type": "number"}}),
            json!(["order_id"])
        ),
    ])
}

fn asking(tool: &str, prompt: &str) -> Value {
    json!({
        "messages": user(prompt),
        "tools": tools(),
        "tool_choice": {"type": "function", "function": {"name": tool}},
        "temperature": 0
    })
}

impl Gateway {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = common::send(&self.client, &self.base, method, path, key, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn chat(&self, key: &str, body: Value) -> Value {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/v1/chat/completions",
                key,
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, key, None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    async fn snapshot(&self) -> String {
        let (status, body) = self.get("/admin/policy", ADMIN_KEY).await;
        assert_eq!(status, 200, "{body}");
        body["snapshot"].as_str().unwrap().to_string()
    }
}

fn decision(body: &Value) -> &Value {
    let decisions = body["warden"]["policy"]["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no policy decisions: {body}"));
    assert_eq!(decisions.len(), 1, "{body}");
    &decisions[0]
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn every_decision_type_through_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = serve(
        &test_policy(),
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Guarded,
    )
    .await;
    let snapshot = gateway.snapshot().await;

    // ALLOW: a read-only tool.
    let body = gateway
        .chat(
            KEY_A,
            asking("get_weather", "What is the weather in Paris?"),
        )
        .await;
    let allowed = decision(&body);
    assert_eq!(allowed["verdict"], "ALLOW", "{body}");
    assert_eq!(allowed["rule"], "read-only");
    assert_eq!(allowed["outcome"], "delivered");
    assert_eq!(allowed["snapshot"], snapshot.as_str());
    assert_eq!(allowed["call_hash"].as_str().unwrap().len(), 64);
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], allowed["arguments"]);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // ALLOW_WITH_CONSTRAINTS: an allowlisted host, with the timeout filled in.
    let body = gateway
        .chat(
            KEY_A,
            asking("http_get", "Fetch https://api.example.com/status"),
        )
        .await;
    assert_eq!(
        decision(&body)["verdict"],
        "ALLOW_WITH_CONSTRAINTS",
        "{body}"
    );
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["url"], "https://api.example.com/status");
    assert_eq!(arguments["timeout_s"], 10);

    // ...and a host off the list: the constraint turns it into DENY, named.
    let body = gateway
        .chat(KEY_A, asking("http_get", "Fetch https://evil.com/steal"))
        .await;
    let refused = decision(&body);
    assert_eq!(refused["verdict"], "DENY", "{body}");
    assert_eq!(refused["code"], "constraint_violated");
    assert_eq!(refused["constraint"], "allowed_hosts.url");
    assert_eq!(refused["rule"], "http-get-allowlisted");
    assert_eq!(refused["outcome"], "refused");
    assert!(
        body["choices"][0]["message"]["tool_calls"].is_null(),
        "{body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let told = content(&body);
    assert!(
        told.contains("`http_get`") && told.contains("allowed_hosts.url"),
        "{told}"
    );
    assert!(
        told.contains(refused["call_id"].as_str().unwrap()),
        "{told}"
    );

    // DENY by rule.
    let body = gateway
        .chat(
            KEY_A,
            asking("send_email", "Send an email to eve@evil.com saying hello."),
        )
        .await;
    let refused = decision(&body);
    assert_eq!(refused["verdict"], "DENY", "{body}");
    assert_eq!(refused["rule"], "email-elsewhere");
    assert_eq!(refused["snapshot"], snapshot.as_str());
    assert!(body["choices"][0]["message"]["tool_calls"].is_null());
    assert!(content(&body).contains("rule `email-elsewhere`"), "{body}");

    // REQUIRE_APPROVAL.
    let body = gateway
        .chat(KEY_A, asking("refund", "Refund order 42."))
        .await;
    let held = decision(&body);
    assert_eq!(held["verdict"], "REQUIRE_APPROVAL", "{body}");
    assert_eq!(held["rule"], "refund-review");
    assert_eq!(held["outcome"], "held");
    let ticket = held["ticket"].as_str().unwrap();
    assert!(ticket.starts_with("apr_"));
    assert_eq!(body["warden"]["policy"]["tickets"], json!([ticket]));
    assert!(
        content(&body).contains(&format!("GET /v1/approvals/{ticket}")),
        "{body}"
    );
    assert!(body["choices"][0]["message"]["tool_calls"].is_null());

    let metrics = common::scrape(&gateway.client, &gateway.base).await;
    assert!(
        metrics.contains(
            "warden_policy_decisions_total{code=\"constraint_violated\",verdict=\"DENY\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn approvals_bind_the_exact_call_survive_a_restart_and_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = dir.path().join("approvals.jsonl");
    let first = serve(&test_policy(), &approvals, AutonomyMode::Guarded).await;
    let body = first
        .chat(KEY_A, asking("refund", "Refund order 42."))
        .await;
    let held = decision(&body).clone();
    let ticket = held["ticket"].as_str().unwrap().to_string();
    let hash = held["call_hash"].as_str().unwrap().to_string();

    let (status, pending) = first.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "pending");
    assert!(
        pending["tool_call"].is_null(),
        "an unapproved call is never shown: {pending}"
    );
    let (status, other) = first.get(&format!("/v1/approvals/{ticket}"), KEY_B).await;
    assert_eq!(status, 404, "{other}");
    assert_eq!(other["error"]["code"], "approval_not_found");
    let (status, _) = first.get("/admin/approvals", KEY_A).await;
    assert_eq!(status, 403);
    let (_, listed) = first
        .get("/admin/approvals?status=pending&agent=agent-a", ADMIN_KEY)
        .await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == ticket.as_str()),
        "{listed}"
    );
    let (status, body) = first
        .post(
            &format!("/admin/approvals/{ticket}/approve"),
            ADMIN_KEY,
            json!({"approver": " "}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "approver");

    // A restart: a new gateway on the same files.
    let second = serve(&test_policy(), &approvals, AutonomyMode::Guarded).await;
    let (status, survived) = second.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(survived["status"], "pending");
    let (status, approved) = second
        .post(
            &format!("/admin/approvals/{ticket}/approve"),
            ADMIN_KEY,
            json!({"approver": "alice", "comment": "order 42 checked"}),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["review"]["by"], "alice");
    assert_eq!(approved["review"]["comment"], "order 42 checked");
    let (status, again) = second
        .post(
            &format!("/admin/approvals/{ticket}/reject"),
            ADMIN_KEY,
            json!({"approver": "bob"}),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    // The decision is on the audit chain, by the approver; the refused second one is not.
    let records = warden::audit::query::read_all(&second.audit_dir).unwrap();
    let decisions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "approval").collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["action"], "approval_decided");
    assert_eq!(decisions[0]["by"], "alice");
    assert_eq!(decisions[0]["ticket"], ticket.as_str());
    assert_eq!(decisions[0]["approved"], true);
    assert_eq!(decisions[0]["call_hash"], hash.as_str());
    assert_eq!(decisions[0]["comment"], "order 42 checked");

    // The agent reads back exactly the call that was approved.
    let (_, granted) = second.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert_eq!(granted["status"], "approved");
    assert_eq!(granted["call_hash"], hash.as_str());
    assert_eq!(granted["tool_call"]["function"]["name"], "refund");
    assert_eq!(
        granted["tool_call"]["function"]["arguments"],
        held["arguments"]
    );

    // Proposed again, the same call is released once under the ticket...
    let body = second
        .chat(KEY_A, asking("refund", "Refund order 42."))
        .await;
    let released = decision(&body);
    assert_eq!(released["outcome"], "released", "{body}");
    assert_eq!(released["ticket"], ticket.as_str());
    assert_eq!(released["call_hash"], hash.as_str());
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], held["arguments"]);
    let (_, spent) = second.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert_eq!(spent["status"], "redeemed");

    // ...and only once.
    let body = second
        .chat(KEY_A, asking("refund", "Refund order 42."))
        .await;
    assert_eq!(decision(&body)["outcome"], "held", "{body}");
    assert_ne!(decision(&body)["ticket"], ticket.as_str());

    // A changed call is not approved.
    let body = second
        .chat(KEY_A, asking("refund", "Refund order 44."))
        .await;
    let changed = decision(&body);
    assert_eq!(changed["outcome"], "held", "{body}");
    assert_ne!(changed["call_hash"], hash.as_str());
    let other_ticket = changed["ticket"].as_str().unwrap();
    let (_, rejected) = second
        .post(
            &format!("/admin/approvals/{other_ticket}/reject"),
            ADMIN_KEY,
            json!({"approver": "alice", "comment": "no"}),
        )
        .await;
    assert_eq!(rejected["status"], "rejected");
    let (_, seen) = second
        .get(&format!("/v1/approvals/{other_ticket}"), KEY_A)
        .await;
    assert_eq!(seen["status"], "rejected");
    assert!(seen["tool_call"].is_null());
}

#[tokio::test]
async fn streams_are_decided_and_screened_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = serve(
        &test_policy(),
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Guarded,
    )
    .await;
    let stream = |body: Value| async {
        let mut body = body;
        body["stream"] = json!(true);
        let response = gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.base))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sse_data(&response.text().await.unwrap())
    };

    let frames = stream(asking("http_get", "Fetch https://evil.com/steal")).await;
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"]["tool_calls"].is_null()),
        "{frames:?}"
    );
    assert!(streamed_content(&frames).contains("allowed_hosts.url"));
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["warden"]["policy"]["decisions"][0]["verdict"], "DENY");

    let frames = stream(asking("get_weather", "What is the weather in Paris?")).await;
    let calls: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");

    // A card number the model repeats is masked the same way streamed or not.
    let request = json!({"messages": user("Repeat exactly: my card is 4111 1111 1111 1111"), "temperature": 0, "max_tokens": 60});
    let plain = gateway.chat(KEY_A, request.clone()).await;
    let frames = stream(request).await;
    let streamed = streamed_content(&frames);
    assert_eq!(streamed, content(&plain));
    assert!(streamed.contains("[REDACTED:card]"), "{streamed}");
    assert!(
        !streamed.contains("4111") && !streamed.contains("1111 1111"),
        "{streamed}"
    );
    assert_eq!(
        plain["warden"]["policy"]["output"],
        json!([{"detector": "card", "action": "redact", "count": 1}])
    );
}

#[tokio::test]
async fn quarantined_output_waits_for_review() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = serve(
        &test_policy(),
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Guarded,
    )
    .await;
    let body = gateway
        .chat(KEY_A, json!({"messages": user("Repeat exactly: the key is sk-proj-abcdefghijklmnopqrstuvwxyz123456"), "temperature": 0, "max_tokens": 60}))
        .await;
    let told = content(&body);
    assert!(!told.contains("sk-proj"), "{told}");
    let ticket = body["warden"]["policy"]["tickets"][0].as_str().unwrap();
    assert!(told.contains(ticket), "{told}");
    let (_, pending) = gateway.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert_eq!(pending["kind"], "output");
    assert!(pending["content"].is_null());
    let (status, _) = gateway
        .post(
            &format!("/admin/approvals/{ticket}/approve"),
            ADMIN_KEY,
            json!({"approver": "sec-team"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, released) = gateway.get(&format!("/v1/approvals/{ticket}"), KEY_A).await;
    assert!(
        released["content"].as_str().unwrap().contains("sk-proj-"),
        "{released}"
    );
}

const WEATHER_ALLOWED: &str = "tools: {get_weather: {tier: 0}}\nrules:\n  - {id: weather, match: {tool: get_weather}, decision: ALLOW, reason: fine}\n";
const WEATHER_DENIED: &str = "tools: {get_weather: {tier: 0}}\nrules:\n  - {id: no-weather, match: {tool: get_weather}, decision: DENY, reason: not today}\n";

#[tokio::test]
async fn reload_swaps_the_policy_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, WEATHER_ALLOWED).unwrap();
    let gateway = serve(
        &file,
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Guarded,
    )
    .await;
    let before = gateway.snapshot().await;

    std::fs::write(&file, WEATHER_DENIED.replace("DENY", "MAYBE")).unwrap();
    let (status, _) = gateway.post("/admin/policy/reload", KEY_A, json!({})).await;
    assert_eq!(status, 403);
    let (status, refused) = gateway
        .post("/admin/policy/reload", ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "policy_invalid");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("policy.yaml") && message.contains("rules[0].decision"),
        "{message}"
    );
    assert_eq!(gateway.snapshot().await, before);
    let body = gateway
        .chat(
            KEY_A,
            asking("get_weather", "What is the weather in Paris?"),
        )
        .await;
    assert_eq!(decision(&body)["verdict"], "ALLOW");

    std::fs::write(&file, WEATHER_DENIED).unwrap();
    let (status, reloaded) = gateway
        .post("/admin/policy/reload", ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["previous"], before.as_str());
    assert_eq!(reloaded["changed"], true);
    let after = gateway.snapshot().await;
    assert_ne!(after, before);
    // Both attempts are on the audit chain: the refusal with its reason, then the change.
    let records = warden::audit::query::read_all(&gateway.audit_dir).unwrap();
    let changes: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "config_change")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["action"], "change_refused");
    assert_eq!(changes[0]["target"], "policy");
    assert!(changes[0]["error"]
        .as_str()
        .unwrap()
        .contains("rules[0].decision"));
    assert_eq!(changes[1]["action"], "policy_reloaded");
    assert_eq!(changes[1]["by"], "admin");
    assert_eq!(changes[1]["previous"], before.as_str());
    assert_eq!(changes[1]["snapshot"], after.as_str());
    let body = gateway
        .chat(
            KEY_A,
            asking("get_weather", "What is the weather in Paris?"),
        )
        .await;
    assert_eq!(decision(&body)["verdict"], "DENY");
    assert_eq!(decision(&body)["snapshot"], after.as_str());
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, WEATHER_ALLOWED).unwrap();
    let metrics = warden::metrics::Metrics::new().unwrap();
    let config = PolicyConfig {
        file: file.clone(),
        file_named: true,
        approvals_file: dir.path().join("a.jsonl"),
    };
    let engine =
        Arc::new(warden::policy::PolicyEngine::open(&config, metrics.policy.clone()).unwrap());
    // The server's one SIGHUP handler, as `warden serve` installs it: the routing part
    // finds no configuration file here and stays; the policy is reloaded regardless.
    let server_config = TestServer::builder().config();
    let table = RoutingTable::build(&server_config.table_source(), 1, None, &|_| None).unwrap();
    let audit = AuditLog::open(
        &AuditConfig {
            dir: dir.path().join("audit"),
            fsync: true,
            commit_delay: Duration::ZERO,
            max_batch: 64,
            segment_bytes: 1 << 20,
            store_text: false,
        },
        metrics.audit.clone(),
    )
    .unwrap();
    let governor = Governor::new(
        GovernorSettings::from_config(&server_config),
        metrics.governor.clone(),
    );
    let operations = Operations::new(
        governor,
        Arc::new(RoutingState::new(table)),
        engine.clone(),
        audit.clone(),
    );
    warden::server::reload_on_hangup(Arc::new(server_config.clone()), operations).unwrap();
    let before = engine.current().snapshot().to_string();
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    std::fs::write(&file, "rules: [{id: x}]").unwrap();
    hangup();
    std::fs::write(&file, WEATHER_DENIED).unwrap();
    hangup();
    let changed = common::wait_until(
        || engine.current().snapshot() != before,
        Duration::from_secs(60),
    )
    .await;
    assert!(changed, "SIGHUP did not reload the policy");
    let expected = warden::policy::Policy::from_yaml(WEATHER_DENIED, &file).unwrap();
    assert_eq!(engine.current().snapshot(), expected.snapshot());
    // Each reload is on the audit chain, by the signal: the policy that changed, and the
    // routing the missing configuration file left as it was.
    let by_signal = |records: &[Value], action: &str, target: &str| {
        records.iter().any(|r| {
            r["kind"] == "config_change"
                && r["by"] == "signal:SIGHUP"
                && r["action"] == action
                && (target.is_empty() || r["target"] == target)
        })
    };
    let audit_dir = dir.path().join("audit");
    let recorded = common::wait_until(
        || {
            let records = warden::audit::query::read_all(&audit_dir).unwrap_or_default();
            by_signal(&records, "policy_reloaded", "")
                && by_signal(&records, "change_refused", "routing")
        },
        Duration::from_secs(60),
    )
    .await;
    let records = warden::audit::query::read_all(&audit_dir).unwrap();
    assert!(recorded, "{records:?}");
    drop(audit);
}

#[tokio::test]
async fn autonomy_modes_and_rules_combine_stricter_wins() {
    let dir = tempfile::tempdir().unwrap();
    // Agent B is in `observe`: only tier-0 tools run.
    let gateway = serve(
        &test_policy(),
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Observe,
    )
    .await;
    let request = asking("refund", "Refund order 43.");
    let as_a = gateway.chat(KEY_A, request.clone()).await;
    assert_eq!(decision(&as_a)["verdict"], "ALLOW", "{as_a}");
    assert_eq!(decision(&as_a)["rule"], "refund-43");
    let as_b = gateway.chat(KEY_B, request).await;
    let capped = decision(&as_b);
    assert_eq!(capped["verdict"], "DENY", "{as_b}");
    assert_eq!(capped["code"], "autonomy");
    assert_eq!(capped["rule"], "refund-43");
    assert_eq!(as_b["warden"]["policy"]["autonomy"], "observe");
    let weather = gateway
        .chat(
            KEY_B,
            asking("get_weather", "What is the weather in Paris?"),
        )
        .await;
    assert_eq!(decision(&weather)["verdict"], "ALLOW");
}

#[tokio::test]
async fn replay_shows_what_a_candidate_policy_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = serve(
        &test_policy(),
        &dir.path().join("approvals.jsonl"),
        AutonomyMode::Guarded,
    )
    .await;
    for (tool, prompt) in [
        ("get_weather", "What is the weather in Paris?"),
        ("refund", "Refund order 43."),
    ] {
        let body = gateway.chat(KEY_A, asking(tool, prompt)).await;
        assert_eq!(decision(&body)["verdict"], "ALLOW", "{body}");
    }
    // An outcome puts a line without a report into the log, as real logs have.
    let outcome = gateway
        .client
        .post(format!("{}/v1/outcomes", gateway.base))
        .bearer_auth(KEY_A)
        .json(&json!({"run_id": "run-replay", "outcome": "ticket_closed", "status": "success"}))
        .send()
        .await
        .unwrap();
    assert!(outcome.status().is_success(), "{}", outcome.status());
    let candidate = dir.path().join("candidate.yaml");
    let current = std::fs::read_to_string(test_policy()).unwrap();
    std::fs::write(
        &candidate,
        current.replace(
            "decision: ALLOW\n    reason: order 43",
            "decision: REQUIRE_APPROVAL\n    reason: order 43",
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["policy", "replay", "--policy"])
        .arg(&candidate)
        .arg("--log")
        .arg(&gateway.audit_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("`refund`: ALLOW (rule refund-43) -> REQUIRE_APPROVAL (rule refund-43)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 decisions re-taken") && stdout.contains("1 would change"),
        "{stdout}"
    );
}
