//! Run budgets and loop detection through the real gateway and model: each budget trips
//! on the request past it, with 429 `run_budget_exceeded` naming the limit, and a tool
//! call proposed once too often never reaches the agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{user, weather_tool, TestServer};
use serde_json::{json, Value};
use warden::config::raw::RawRunLimits;

/// A server whose runs all have the budgets `defaults` (the rest as the file's defaults).
async fn server(defaults: RawRunLimits) -> TestServer {
    TestServer::builder()
        .configure(|config| config.runs.defaults = defaults)
        .start()
        .await
}

fn step(run: &str) -> Value {
    json!({"messages": user("Say hi."), "max_tokens": 4, "temperature": 0, "metadata": {"run_id": run}})
}

/// Asks for the weather with the tool forced, so every step proposes a call.
fn tool_step(run: &str) -> Value {
    json!({
        "messages": user("What is the weather in Paris?"),
        "tools": weather_tool(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 40,
        "metadata": {"run_id": run}
    })
}

/// Checks a refusal names `limit`, and returns its message.
fn refused(status: u16, body: &Value, limit: &str) -> String {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "run_budget_exceeded", "{body}");
    assert_eq!(body["error"]["param"], limit, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(limit), "{message}");
    message
}

async fn records(server: &TestServer, run: &str) -> Vec<Value> {
    let (_, body) = server
        .admin_get(&format!("/admin/audit?run_id={run}"))
        .await;
    serde_json::from_str::<Value>(&body).unwrap()["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn steps_trip_on_the_request_past_the_limit() {
    let server = server(RawRunLimits {
        max_steps: Some(2),
        ..RawRunLimits::default()
    })
    .await;
    for n in 1..=2 {
        let (status, body) = server.chat(step("steps")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warden"]["run"]["steps"], n);
    }
    let (status, body) = server.chat(step("steps")).await;
    let message = refused(status, &body, "max_steps");
    assert!(message.contains("2 of 2"), "{message}");
    // Another run is not affected; nor is a request without a run.
    assert_eq!(server.chat(step("other")).await.0, 200);
    assert_eq!(
        server
            .chat(json!({"messages": user("Hi"), "max_tokens": 4}))
            .await
            .0,
        200
    );
    // The refusal is in the audit log.
    let recorded = records(&server, "steps").await;
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[2]["status"], "refused");
    assert_eq!(recorded[2]["error"]["type"], "run_budget_exceeded");
}

#[tokio::test]
async fn the_tool_call_budget_refuses_requests_that_could_call_a_tool() {
    let server = server(RawRunLimits {
        max_tool_calls: Some(1),
        ..RawRunLimits::default()
    })
    .await;
    let (status, body) = server.chat(tool_step("tools")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(body["warden"]["run"]["tool_calls"], 1);
    let (status, body) = server.chat(tool_step("tools")).await;
    refused(status, &body, "max_tool_calls");
    // Without tools on offer the request cannot exceed the budget.
    assert_eq!(server.chat(step("tools")).await.0, 200);
}

#[tokio::test]
async fn wall_time_trips_once_the_run_is_older_than_its_limit() {
    let server = server(RawRunLimits {
        max_wall_time_s: Some(1),
        ..RawRunLimits::default()
    })
    .await;
    assert_eq!(server.chat(step("clock")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = server.chat(step("clock")).await;
    refused(status, &body, "max_wall_time_s");
}

#[tokio::test]
async fn cost_trips_once_the_run_has_spent_its_budget() {
    // One short request on the local model costs a few millionths of a cent more than
    // this (routing/prices.yaml).
    let server = server(RawRunLimits {
        max_cost_usd: Some("0.0000001".parse().unwrap()),
        ..RawRunLimits::default()
    })
    .await;
    let (status, body) = server.chat(step("spend")).await;
    assert_eq!(status, 200, "{body}");
    let spent: rust_decimal::Decimal = body["warden"]["run"]["cost_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(spent >= "0.0000001".parse().unwrap(), "{spent}");
    let (status, body) = server.chat(step("spend")).await;
    refused(status, &body, "max_cost_usd");
}

#[tokio::test]
async fn the_same_call_proposed_too_often_is_withheld_as_a_loop() {
    let server = server(RawRunLimits {
        max_repeated_tool_calls: Some(2),
        ..RawRunLimits::default()
    })
    .await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (status, body) = server.chat(tool_step("loop")).await;
        assert_eq!(status, 200, "{body}");
        let call = body["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather");
        calls.push(call["function"]["arguments"].clone());
    }
    assert_eq!(calls[0], calls[1], "greedy decoding repeats the call");

    // The third identical proposal is withheld: the agent gets an explanation instead.
    let (status, body) = server.chat(tool_step("loop")).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert!(choice["message"].get("tool_calls").is_none(), "{body}");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.contains("loop_detected"), "{content}");
    let decision = &body["warden"]["policy"]["decisions"][0];
    assert_eq!(decision["code"], "loop_detected");
    assert_eq!(decision["verdict"], "DENY");
    assert_eq!(decision["outcome"], "refused");
    assert_eq!(decision["name"], "get_weather");

    // Streamed, the same: no tool-call chunk, the explanation as content.
    let mut request = tool_step("loop");
    request["stream"] = json!(true);
    let frames = server.stream(request).await;
    assert!(common::streamed_content(&frames).contains("loop_detected"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|chunk| chunk["choices"][0]["delta"].get("tool_calls").is_none()));

    // The audit log has every proposal with its decision, the withheld ones marked.
    let recorded = records(&server, "loop").await;
    let verdicts: Vec<(bool, Value, Value)> = recorded
        .iter()
        .map(|record| {
            let call = &record["tool_calls"][0];
            (
                call["returned"].as_bool().unwrap(),
                call["decision"].clone(),
                call["reason"].clone(),
            )
        })
        .collect();
    let (allowed, looped) = (
        (true, json!("ALLOW"), json!("rule")),
        (false, json!("DENY"), json!("loop_detected")),
    );
    assert_eq!(verdicts, [allowed.clone(), allowed, looped.clone(), looped]);
    assert_eq!(
        recorded[0]["tool_calls"][0]["sha256"],
        recorded[2]["tool_calls"][0]["sha256"]
    );
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains("warden_policy_decisions_total{code=\"loop_detected\",verdict=\"DENY\"} 2"),
        "{metrics}"
    );
}
