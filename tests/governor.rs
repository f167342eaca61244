//! The governor through the real server: priorities, kill switches, rate limits, spend
//! caps, clients that leave, the admin view and metrics (with the real local model),
//! and an overload run at three times capacity (with a backend of fixed service time,
//! so the run is about the governor and not the model's speed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixed_service::FixedServiceBackend;
use common::{user, TestServer, ADMIN_KEY, KEY_A, KEY_B};
use futures::StreamExt;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;
use warden::config::raw::{RawQueueCapacity, RawTenant};
use warden::config::routing::RawProvider;
use warden::governor::Priority;

/// Generous: these waits only end early when the server works.
const EVENTUALLY: Duration = Duration::from_secs(120);

fn short() -> Value {
    json!({"messages": user("Hi"), "max_tokens": 2})
}

async fn chat_as(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn snapshot(server: &TestServer) -> Value {
    let response = server
        .client
        .get(server.url("/admin/governor"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn total_queued(snapshot: &Value) -> u64 {
    ["P0", "P1", "P2"]
        .iter()
        .map(|class| snapshot["queued"][class].as_u64().unwrap())
        .sum()
}

async fn kill(server: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = server.url(&format!("/admin/governor/kill/{path}"));
    let request = match body {
        Some(body) => server.client.put(url).json(&body),
        None => server.client.delete(url),
    };
    let response = request.bearer_auth(ADMIN_KEY).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A streamed answer that holds its slot for as long as it is kept and not read.
async fn hold_a_slot(server: &TestServer, key: &str) -> impl Sized {
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"messages": user("Write a very long story about a dragon."), "max_tokens": 3000, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    body
}

async fn wait_for_queued(server: &TestServer, expected: u64) {
    assert!(
        common::wait_until_async(
            || async { total_queued(&snapshot(server).await) == expected },
            EVENTUALLY
        )
        .await,
        "the queue never held {expected}"
    );
}

#[tokio::test]
async fn priority_comes_from_the_header_or_metadata_within_the_agents_ceiling() {
    let server = TestServer::builder()
        .agent("agent-a", |agent| {
            agent.priority_ceiling = Some(Priority::P1);
            agent.default_priority = Some(Priority::P2);
        })
        .start()
        .await;
    let priority_of = |body: &Value| body["warden"]["priority"].as_str().unwrap().to_string();
    let (status, body) = server.chat(short()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(priority_of(&body), "P2");

    let response = server
        .chat_request()
        .header("x-priority", "P0")
        .json(&short())
        .send()
        .await
        .unwrap();
    assert_eq!(priority_of(&response.json().await.unwrap()), "P1");

    let mut with_metadata = short();
    with_metadata["metadata"] = json!({"priority": "P2"});
    let response = server
        .chat_request()
        .header("x-priority", "p1")
        .json(&with_metadata)
        .send()
        .await
        .unwrap();
    assert_eq!(priority_of(&response.json().await.unwrap()), "P1");

    let mut incident = short();
    incident["metadata"] = json!({"priority": "P0"});
    let (_, body) = chat_as(&server, KEY_B, incident).await;
    assert_eq!(priority_of(&body), "P0");

    let response = server
        .chat_request()
        .header("x-priority", "urgent")
        .json(&short())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "x-priority");
    let mut unknown = short();
    unknown["metadata"] = json!({"priority": "P7"});
    let (status, body) = server.chat(unknown).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "metadata.priority");
    assert!(body["error"]["message"].as_str().unwrap().contains("P7"));
}

#[tokio::test]
async fn kill_switches_stop_queued_and_new_requests_until_cleared() {
    let server = TestServer::builder().slots(1).start().await;
    // Only the admin may, with a reason, about someone who exists.
    let response = server
        .client
        .put(server.url("/admin/governor/kill/global"))
        .bearer_auth(KEY_A)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(kill(&server, "global", Some(json!({}))).await.0, 400);
    assert_eq!(
        kill(&server, "global", Some(json!({"reason": " "})))
            .await
            .0,
        400
    );
    let (status, body) = kill(&server, "agents/nobody", Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 404, "{body}");

    // Agent B holds the only slot; agent A's request waits behind it.
    let holder = hold_a_slot(&server, KEY_B).await;
    let queued = {
        let client = server.client.clone();
        let url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(KEY_A)
                .json(&short())
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    wait_for_queued(&server, 1).await;
    let (status, body) = kill(
        &server,
        "agents/agent-a",
        Some(json!({"reason": "runaway loop"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queued_refused"], 1);
    let (status, body) = queued.await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "kill_switch");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("runaway loop"));
    drop(holder);

    let response = server.chat_request().json(&short()).send().await.unwrap();
    assert_eq!(response.status(), 403);
    // An operator clears it, not time.
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "kill_switch");
    assert_eq!(chat_as(&server, KEY_B, short()).await.0, 200);
    let switches = &snapshot(&server).await["kill_switches"];
    assert_eq!(switches["agents"]["agent-a"]["reason"], "runaway loop");

    // A tenant's switch covers its agents only; the global one covers everyone.
    assert_eq!(kill(&server, "agents/agent-a", None).await.0, 200);
    assert_eq!(
        kill(&server, "tenants/acme", Some(json!({"reason": "billing"})))
            .await
            .0,
        200
    );
    assert_eq!(server.chat(short()).await.0, 403);
    assert_eq!(chat_as(&server, KEY_B, short()).await.0, 200);
    let (status, body) = kill(&server, "tenants/acme", None).await;
    assert_eq!((status, body["was_engaged"].as_bool()), (200, Some(true)));
    assert_eq!(
        kill(&server, "global", Some(json!({"reason": "outage"})))
            .await
            .0,
        200
    );
    assert_eq!(chat_as(&server, KEY_B, short()).await.0, 403);
    assert_eq!(kill(&server, "global", None).await.0, 200);
    assert_eq!(server.chat(short()).await.0, 200);
    assert_eq!(chat_as(&server, KEY_B, short()).await.0, 200);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_are_counted() {
    let server = TestServer::builder()
        .agent("agent-a", |agent| agent.requests_per_minute = Some(2))
        .start()
        .await;
    assert_eq!(server.chat(short()).await.0, 200);
    assert_eq!(server.chat(short()).await.0, 200);
    let response = server.chat_request().json(&short()).send().await.unwrap();
    assert_eq!(response.status(), 429);
    // Waiting helps here: the SDKs are left to retry, after the time given.
    assert!(!response.headers().contains_key("x-should-retry"));
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Two a minute: the next one is at most 30 s away.
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Another agent is not limited.
    assert_eq!(chat_as(&server, KEY_B, short()).await.0, 200);

    let metrics = server.metrics().await;
    for series in [
        "warden_governor_rate_limited_total{agent=\"agent-a\",limit=\"requests\"} 1",
        "warden_governor_rejections_total{reason=\"rate_limit_exceeded\"} 1",
        "warden_governor_queue_depth{class=\"P0\"} 0",
        "warden_governor_queue_wait_seconds_count{class=\"P1\"} 3",
        "warden_governor_in_flight{backend=\"local\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }
}

#[tokio::test]
async fn spend_caps_refuse_with_budget_exceeded_once_spent() {
    // Each request costs about 3e-7 USD at routing/prices.yaml's local price.
    let cap: Decimal = "0.0000001".parse().unwrap();
    let server = TestServer::builder()
        .agent("agent-b", |agent| agent.daily_spend_usd = Some(cap))
        .configure(|config| {
            config.governor.tenants.insert(
                "acme".into(),
                RawTenant {
                    daily_spend_usd: None,
                    monthly_spend_usd: Some(cap),
                },
            );
        })
        .start()
        .await;
    for (key, scope) in [(KEY_B, "agent `agent-b`"), (KEY_A, "tenant `acme`")] {
        assert_eq!(chat_as(&server, key, short()).await.0, 200);
        let response = server
            .client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&short())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        // The cap resets at midnight or month's end: hours no client should sleep for.
        assert!(!response.headers().contains_key("retry-after"));
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "budget_exceeded");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(scope), "{message}");
    }
    let view = snapshot(&server).await;
    assert!(view["tenants"]["acme"]["this_month_usd"]
        .as_str()
        .unwrap()
        .starts_with("0.000000"));
}

#[tokio::test]
async fn clients_that_leave_the_queue_or_the_stream_give_their_place_back() {
    let server = TestServer::builder().slots(1).start().await;
    let holder = hold_a_slot(&server, KEY_B).await;
    let leaving = {
        let client = server.client.clone();
        let url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(KEY_A)
                .json(&short())
                .send()
                .await
        })
    };
    wait_for_queued(&server, 1).await;
    // The client goes away while queued: its connection closes.
    leaving.abort();
    wait_for_queued(&server, 0).await;
    let view = snapshot(&server).await;
    assert_eq!(view["in_flight"], 1);

    // The running client goes away too: its permit is back, nothing is left over.
    drop(holder);
    assert!(
        common::wait_until_async(
            || async { snapshot(&server).await["in_flight"] == 0 },
            EVENTUALLY
        )
        .await,
        "the abandoned stream still holds its permit"
    );
    assert!(common::wait_until(|| server.local.busy_slots() == 0, EVENTUALLY).await);
    assert_eq!(server.chat(short()).await.0, 200);
    let view = snapshot(&server).await;
    assert_eq!(
        (view["in_flight"].as_u64(), total_queued(&view)),
        (Some(0), 0)
    );
}

#[tokio::test]
async fn the_admin_view_shows_limits_waits_and_usage() {
    let server = TestServer::builder()
        .slots(2)
        .agent("agent-a", |agent| {
            agent.max_concurrent = Some(3);
            agent.tokens_per_minute = Some(100_000);
        })
        .start()
        .await;
    let response = server
        .client
        .get(server.url("/admin/governor"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (status, body) = server.chat(short()).await;
    assert_eq!(status, 200);
    let tokens = body["usage"]["total_tokens"].as_f64().unwrap();

    let view = snapshot(&server).await;
    assert_eq!(view["in_flight"], 0);
    assert_eq!(view["backends"]["local"]["limit"], 2);
    assert_eq!(view["limits"]["queue_timeout_ms"], 600_000);
    assert_eq!(view["waits"]["P1"]["admitted"], 1);
    let agent = &view["agents"]["agent-a"];
    assert_eq!(agent["tenant"], "acme");
    assert_eq!(agent["max_concurrent"], 3);
    assert_eq!(agent["default_priority"], "P1");
    // The completion's tokens came out of the bucket (it refills slowly meanwhile).
    let available = agent["tokens_available"].as_f64().unwrap();
    assert!(
        available < 100_000.0 && available >= 100_000.0 - tokens,
        "{available}"
    );
    assert!(view["agents"]["agent-b"]["tokens_available"].is_null());
    assert!(view["kill_switches"]["global"].is_null());
}

/// Three times what the backend can serve, in a mix of classes, open loop: every
/// request is answered (200, or 429/503 saying when to retry), P0 waits far less than
/// P2, and P2 still gets served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_at_three_times_capacity_answers_everyone_and_favours_p0() {
    const SERVICE_TIME: Duration = Duration::from_millis(100);
    const SLOTS: usize = 2;
    // Capacity is 20 requests a second; 60 arrive each second for 4 seconds.
    const REQUESTS: usize = 240;
    const INTERVAL: Duration = Duration::from_micros(16_667);
    // 2 in 10 are P0, 3 are P1, 5 are P2.
    const MIX: [&str; 10] = ["P2", "P1", "P2", "P0", "P2", "P1", "P2", "P0", "P1", "P2"];

    let config = TestServer::builder()
        .slots(SLOTS)
        .configure(|config| {
            config.governor.queue_capacity = RawQueueCapacity {
                p0: 16,
                p1: 16,
                p2: 16,
            };
            config.governor.queue_timeout_ms = 5000;
            config.governor.aging_ms = 1000;
        })
        .config();
    let backend = Arc::new(FixedServiceBackend::new(SERVICE_TIME));
    let base = common::serve(&config, backend.clone()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let started = tokio::time::Instant::now();
    let requests = (0..REQUESTS).map(|index| {
        let client = client.clone();
        let url = format!("{base}/v1/chat/completions");
        tokio::spawn(async move {
            tokio::time::sleep_until(started + INTERVAL * index as u32).await;
            let class = MIX[index % MIX.len()];
            let response = client
                .post(url)
                .bearer_auth(KEY_A)
                .header("x-priority", class)
                .json(&short())
                .send()
                .await
                .expect("every request is answered");
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap();
            (class, status, retry_after, body)
        })
    });
    let answers: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers.len(), REQUESTS);

    let mut waits = std::collections::BTreeMap::<&str, Vec<f64>>::new();
    let mut refused = 0;
    for (class, status, retry_after, body) in &answers {
        match status {
            200 => {
                assert_eq!(body["warden"]["priority"], *class);
                let wait = body["warden"]["timings"]["queue_ms"].as_f64().unwrap();
                waits.entry(class).or_default().push(wait);
            }
            429 | 503 => {
                refused += 1;
                assert!(retry_after, "{status} without Retry-After: {body}");
                let code = body["error"]["code"].as_str().unwrap();
                let expected = if *status == 429 {
                    "queue_full"
                } else {
                    "queue_timeout"
                };
                assert_eq!(code, expected, "{body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let median = |class: &str| {
        let mut waits = waits.get(class).cloned().unwrap_or_default();
        assert!(!waits.is_empty(), "no {class} request was served");
        waits.sort_by(f64::total_cmp);
        waits[waits.len() / 2]
    };
    let (p0, p2) = (median("P0"), median("P2"));
    println!(
        "served P0 {} P1 {} P2 {}, refused {refused}; median wait P0 {p0:.1} ms, P2 {p2:.1} ms",
        waits["P0"].len(),
        waits.get("P1").map_or(0, Vec::len),
        waits["P2"].len()
    );
    assert!(refused > 0, "three times capacity must overflow the queues");
    assert!(
        p0 * 4.0 < p2,
        "P0 median wait {p0} ms is not well below P2's {p2} ms"
    );
    assert!(backend.most_running() <= SLOTS);

    let view = reqwest::Client::new()
        .get(format!("{base}/admin/governor"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(view["in_flight"], 0);
    assert_eq!(total_queued(&view), 0);
}

/// A request that escalates holds one permit throughout: it moves from the local engine
/// to the provider and is given back at the end, and the agent pays (in money and in
/// tokens) for every attempt, not only the one served.
#[tokio::test]
async fn an_escalated_request_is_governed_and_charged_for_every_attempt() {
    let mock = common::mock_upstream::MockUpstream::start().await;
    let server = TestServer::builder()
        .agent("agent-a", |agent| {
            agent.tokens_per_minute = Some(60);
            agent.daily_spend_usd = Some(Decimal::from(10));
        })
        .provider(RawProvider {
            api_key_env: Some("TEST_OPENAI_KEY".into()),
            models: vec![common::priced("mock-large", 1, 2)],
            ..common::provider("mock", ProviderKind::Openai, &mock.base, &[])
        })
        .configure(|config| {
            config.routing.escalation_models = vec!["mock-large".into()];
            config.routing.min_mean_logprob = Some(-0.0001);
        })
        .start()
        .await;
    let (status, body) = server
        .chat(json!({"messages": user("What is the capital of France?"), "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warden"]["route"], "escalated");
    let attempts = body["warden"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    let decimal = |value: &Value| -> Decimal { value.as_str().unwrap().parse().unwrap() };
    let tokens: f64 = attempts
        .iter()
        .map(|attempt| {
            attempt["usage"]["prompt_tokens"].as_f64().unwrap()
                + attempt["usage"]["completion_tokens"].as_f64().unwrap()
        })
        .sum();

    let view = snapshot(&server).await;
    assert_eq!(view["in_flight"], 0);
    assert_eq!(view["backends"]["local"]["in_flight"], 0);
    // The provider was counted while it served the request.
    assert_eq!(view["backends"]["mock"]["in_flight"], 0);
    assert!(view["backends"]["mock"]["mean_service_ms"].is_number());
    let agent = &view["agents"]["agent-a"];
    assert_eq!(
        decimal(&agent["spend"]["today_usd"]),
        decimal(&body["warden"]["cost_usd"])
    );
    assert!(decimal(&body["warden"]["cost_usd"]) > decimal(&attempts[1]["cost_usd"]));
    // A token a second flows back in meanwhile; the bucket may run into debt.
    let available = agent["tokens_available"].as_f64().unwrap();
    assert!(
        available < 60.0 - tokens + 30.0 && available >= 60.0 - tokens - 1.0,
        "{available} after {tokens} tokens"
    );
}
