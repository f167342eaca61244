//! The audit trail through the real gateway and model: one record per request however it
//! ends, the response's `warden` object embedded whole, hashes instead of text, the
//! admin query, and `warden audit verify` on the files the server wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::audit_verify;
use common::{scratch_dir, sse_data, streamed_content, user, wait_until_async, TestServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warden::backend::provider::config::ProviderKind;
use warden::config::routing::RawProvider;

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The records of one run, through `GET /admin/audit`.
async fn run_records(server: &TestServer, run_id: &str) -> Vec<Value> {
    let (status, body) = server
        .admin_get(&format!("/admin/audit?run_id={run_id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_request_gets_one_record_however_it_ends() {
    let server = TestServer::start().await;
    let run = "run-every-end";

    // Completed, not streamed.
    let response = server
        .chat_request()
        .header("x-run-id", run)
        .json(&json!({"messages": user("Say hello."), "temperature": 0, "max_tokens": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let plain_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let plain: Value = response.json().await.unwrap();

    // Completed, streamed.
    let response = server
        .chat_request()
        .json(&json!({"messages": user("Name a colour."), "stream": true, "max_tokens": 8, "metadata": {"run_id": run}}))
        .send()
        .await
        .unwrap();
    let stream_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().unwrap(), "[DONE]");

    // Refused: a model that does not exist.
    let (status, _) = server
        .chat(json!({"model": "nope", "messages": user("hi"), "metadata": {"run_id": run}}))
        .await;
    assert_eq!(status, 404);

    let records = run_records(&server, run).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let [first, second, third] = &records[..] else {
        unreachable!()
    };

    assert_eq!(first["kind"], "request");
    assert_eq!(first["request_id"], plain_id);
    assert_eq!(first["status"], "completed");
    assert_eq!(first["agent"], "agent-a");
    assert_eq!(first["tenant"], "acme");
    // The response's `warden` object, whole.
    assert_eq!(first["report"], plain["warden"]);
    assert_eq!(first["report"]["run"]["steps"], 1);
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(first["completion"]["sha256"], sha256(content));
    assert_eq!(first["completion"]["bytes"], content.len());
    assert!(first["completion"].get("text").is_none());
    assert!(first["prompt"]["bytes"].as_u64().unwrap() > 0);
    assert!(first["prompt"].get("text").is_none());
    assert_eq!(
        first["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert!(!first.to_string().contains("Say hello"));

    assert_eq!(second["request_id"], stream_id);
    assert_eq!(second["status"], "completed");
    assert_eq!(
        second["completion"]["sha256"],
        sha256(&streamed_content(&frames))
    );
    let final_chunk: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(second["report"], final_chunk["warden"]);

    assert_eq!(third["status"], "refused");
    assert_eq!(third["error"]["type"], "model_not_found");
    assert!(third.get("report").is_none());

    // The chain links them: each record's `prev` is the hash of the one before.
    assert_eq!(second["prev"], first["hash"]);
    assert_eq!(third["prev"], second["hash"]);
    let verified = warden::audit::verify::verify(&server.audit_dir).unwrap();
    assert_eq!(verified.records, 3);
}

#[tokio::test]
async fn a_stream_abandoned_by_its_client_is_recorded_as_cancelled() {
    let server = TestServer::start().await;
    let mut response = server
        .chat_request()
        .json(&json!({"messages": user("Write a long story about a dragon."), "stream": true, "max_tokens": 400, "metadata": {"run_id": "run-left"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Read until content flows, then hang up.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(
            &response.chunk().await.unwrap().unwrap(),
        ));
    }
    drop(response);

    let recorded = wait_until_async(
        || async { run_records(&server, "run-left").await.len() == 1 },
        Duration::from_secs(60),
    )
    .await;
    assert!(recorded, "no record for the abandoned stream");
    let record = &run_records(&server, "run-left").await[0];
    assert_eq!(record["status"], "cancelled");
    assert_eq!(record["error"]["type"], "client_disconnected");
    assert!(record["completion"]["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn text_is_kept_only_when_configured() {
    let server = TestServer::builder()
        .configure(|config| config.audit.store_text = true)
        .start()
        .await;
    let (_, response) = server
        .chat(json!({"messages": user("Say the word banana."), "max_tokens": 8, "temperature": 0}))
        .await;
    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    let record = &records[0];
    assert!(record["prompt"]["text"]
        .as_str()
        .unwrap()
        .contains("Say the word banana."));
    assert_eq!(
        record["completion"]["text"],
        response["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn the_audit_query_needs_the_admin_key_and_filters() {
    let server = TestServer::start().await;
    for run in ["q-1", "q-2", "q-1"] {
        let (status, _) = server
            .chat(json!({"messages": user("Hi"), "max_tokens": 4, "metadata": {"run_id": run}}))
            .await;
        assert_eq!(status, 200);
    }
    let response = server
        .client
        .get(server.url("/admin/audit"))
        .bearer_auth(common::KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    assert_eq!(run_records(&server, "q-1").await.len(), 2);
    let (_, body) = server.admin_get("/admin/audit?agent=agent-a&limit=2").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["has_more"], true);
    let (_, body) = server.admin_get("/admin/audit?agent=agent-b").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["data"],
        json!([])
    );

    let all: Value = serde_json::from_str(&server.admin_get("/admin/audit").await.1).unwrap();
    let third_time = all["data"][2]["time"].as_str().unwrap();
    let (_, body) = server
        .admin_get(&format!("/admin/audit?from={}", urlencode(third_time)))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["seq"], 3);
    let (_, body) = server
        .admin_get(&format!("/admin/audit?to={}", urlencode(third_time)))
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    for (query, param) in [
        ("from=yesterday", Some("from")),
        ("limit=0", Some("limit")),
        ("from=2025-02-01&to=2025-01-01", Some("to")),
        ("bogus=1", None),
        ("limit=many", None),
    ] {
        let (status, body) = server.admin_get(&format!("/admin/audit?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{query}");
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{query}");
        }
    }
}

#[tokio::test]
async fn a_request_every_provider_failed_keeps_its_attempts_in_its_record() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::fail(502));
    let provider = |name: &str| RawProvider {
        retries: 0,
        timeout_ms: 2000,
        models: vec![common::priced("mock-large", 1, 2)],
        ..common::provider(name, ProviderKind::Openai, &mock.base, &["mock-large"])
    };
    let server = TestServer::builder()
        .provider(provider("first"))
        .provider(provider("second"))
        .start()
        .await;
    let response = server
        .chat_request()
        .header("x-run-id", "all-down")
        .json(&json!({"model": "mock-large", "messages": user("Hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "service_unavailable", "{answer}");
    assert_eq!(mock.received().len(), 2);

    let records = run_records(&server, "all-down").await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["status"], "refused");
    // Under the code the client got.
    assert_eq!(record["error"]["type"], "service_unavailable");
    let attempts: Vec<(&str, &str, &str)> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| {
            (
                attempt["backend"].as_str().unwrap(),
                attempt["model"].as_str().unwrap(),
                attempt["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            ("first", "mock-large", "failed"),
            ("second", "mock-large", "failed")
        ]
    );
    assert!(
        record["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("502"),
        "{record}"
    );
    let (ok, text) = audit_verify(&server.audit_dir);
    assert!(ok, "{text}");
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn copy_log(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn audit_verify_passes_the_servers_log_and_names_the_first_tampered_record() {
    let server = TestServer::start().await;
    for n in 0..4 {
        let (status, _) = server
            .chat(json!({"messages": user(&format!("Count to {n}.")), "max_tokens": 4}))
            .await;
        assert_eq!(status, 200);
    }
    let (ok, text) = audit_verify(&server.audit_dir);
    assert!(ok, "{text}");
    assert!(text.contains("ok: 4 records"), "{text}");

    let segment_name = "audit-00000001.jsonl";
    let tampered = |edit: &dyn Fn(Vec<String>) -> Vec<String>| {
        let copy = scratch_dir();
        copy_log(&server.audit_dir, copy.path());
        let segment = copy.path().join(segment_name);
        let lines: Vec<String> = std::fs::read_to_string(&segment)
            .unwrap()
            .lines()
            .filter(|line| !warden::audit::segment::holds_no_record(line))
            .map(str::to_string)
            .collect();
        let text: String = edit(lines).iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&segment, text).unwrap();
        audit_verify(copy.path())
    };

    // An edited cost.
    let (ok, text) = tampered(&|mut lines| {
        let cost = regex::Regex::new(r#""cost_usd":"[0-9.]+""#).unwrap();
        assert!(cost.is_match(&lines[1]));
        lines[1] = cost
            .replace_all(&lines[1], r#""cost_usd":"0""#)
            .into_owned();
        lines
    });
    assert!(!ok);
    assert!(
        text.contains(&format!("{segment_name}: line 2 (seq 2)")),
        "{text}"
    );
    assert!(text.contains("edited"), "{text}");

    // A deleted record.
    let (ok, text) = tampered(&|mut lines| {
        lines.remove(2);
        lines
    });
    assert!(!ok);
    assert!(text.contains("line 3 (seq 4)"), "{text}");

    // Two records swapped.
    let (ok, text) = tampered(&|mut lines| {
        lines.swap(0, 1);
        lines
    });
    assert!(!ok);
    assert!(text.contains("line 1 (seq 2)"), "{text}");

    // A record inserted (a replay of a genuine one).
    let (ok, text) = tampered(&|mut lines| {
        let copy = lines[0].clone();
        lines.insert(3, copy);
        lines
    });
    assert!(!ok);
    assert!(text.contains("line 4 (seq 1)"), "{text}");

    // The last record cut off: HEAD still names it.
    let (ok, text) = tampered(&|mut lines| {
        lines.pop();
        lines
    });
    assert!(!ok);
    assert!(text.contains("HEAD names seq 4"), "{text}");
}

#[tokio::test]
async fn operator_actions_are_on_the_chain_with_who_acted() {
    let server = TestServer::start().await;
    let admin = |method: reqwest::Method, path: &str| {
        server
            .client
            .request(method, server.url(path))
            .bearer_auth(common::ADMIN_KEY)
    };
    let kill = "/admin/governor/kill/agents/agent-b";
    let response = admin(reqwest::Method::PUT, kill)
        .header("x-warden-operator", "alice")
        .json(&json!({"reason": "runaway loop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = admin(reqwest::Method::DELETE, kill).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // A name that cannot be recorded is refused before anything changes.
    let response = admin(reqwest::Method::PUT, kill)
        .header("x-warden-operator", " ")
        .json(&json!({"reason": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "x-warden-operator");
    let response = admin(reqwest::Method::PUT, "/admin/routing")
        .header("x-warden-operator", "bob")
        .json(&json!({"min_mean_logprob": -3.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = admin(reqwest::Method::PUT, "/admin/routing")
        .header("x-warden-operator", "bob")
        .json(&json!({"min_mean_logprob": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let records = warden::audit::query::read_all(&server.audit_dir).unwrap();
    let actions: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["action"].as_str().unwrap_or(""),
                r["by"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("kill_switch", "kill_switch_engaged", "alice"),
            ("kill_switch", "kill_switch_cleared", "admin"),
            ("config_change", "routing_changed", "bob"),
            ("config_change", "change_refused", "bob"),
        ]
    );
    assert_eq!(
        records[0]["kill_switch"],
        json!({"scope": "agent", "id": "agent-b"})
    );
    assert_eq!(records[0]["reason"], "runaway loop");
    assert_eq!(records[1]["was_engaged"], true);
    assert_eq!(records[2]["version"], 2);
    assert_eq!(
        records[2]["routing"]["thresholds"]["min_mean_logprob"],
        -3.5
    );
    assert_eq!(records[3]["target"], "routing");
    assert!(
        records[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("min_mean_logprob"),
        "{}",
        records[3]
    );
    let (ok, text) = audit_verify(&server.audit_dir);
    assert!(ok, "{text}");
}
