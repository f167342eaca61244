//! What one client, or one unlucky operator, could do to warden: each case that once
//! hurt the others or failed open, reproduced against a real server and shown to hold.
//! A panic on model output, other digits slipping past output safety, an empty policy
//! or configuration reloaded, memory held through the schema cache, CPU work stalling
//! everyone, connections without limits, a refused start rewriting the evidence, and
//! the smaller ones (error shapes, limits, admin and metrics access, deadlines, panics).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::{audit_verify, serve_to_exit, Spawned};
use common::{sse_data, streamed_content, user, TestServer, ADMIN_KEY, KEY_A};
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden::backend::provider::config::ProviderKind;
use warden::backend::{Backend, BackendError, BackendStatus, EventStream};
use warden::chat::{ChatRequest, GenerationEvent};
use warden::config::raw::{MetricsAccess, RawConfig, RawMetrics};
use warden::config::routing::RawProvider;

/// A policy file without an `output` section: output safety must still redact every
/// detector.
const POLICY_WITHOUT_OUTPUT: &str = "tools: {get_weather: {tier: 0}}\n";

/// A server whose `mock-large` model is the mock upstream, under `policy` (written to
/// a file of its own).
async fn with_mock(mock: &MockUpstream, policy: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let server = TestServer::builder()
        .provider(RawProvider {
            timeout_ms: 5000,
            retries: 0,
            ..common::provider("mock", ProviderKind::Openai, &mock.base, &["mock-large"])
        })
        .configure(|config| {
            config.policy.file = Some(policy_file.display().to_string());
            config.policy.approvals_file =
                Some(dir.path().join("approvals.jsonl").display().to_string());
        })
        .start()
        .await;
    (server, dir)
}

fn ask_mock(content: &str) -> Value {
    json!({"model": "mock-large", "messages": user(content)})
}

/// Every record of the test server's audit log.
fn records(server: &TestServer) -> Vec<Value> {
    warden::audit::query::read_all(&server.audit_dir).unwrap()
}

/// The request records, once `count` of them are durable.
async fn request_records(server: &TestServer, count: usize) -> Vec<Value> {
    let written = common::wait_until(
        || {
            records(server)
                .iter()
                .filter(|r| r["kind"] == "request")
                .count()
                >= count
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(written, "{:#?}", records(server));
    records(server)
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect()
}

// 1. A panic on model output.

#[tokio::test]
async fn output_that_once_panicked_the_detectors_is_answered_plain_and_streamed() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::answer("Pay to DE０１ AAAA BBBB CCCC now."));
    let (server, _dir) = with_mock(&mock, POLICY_WITHOUT_OUTPUT).await;
    let (status, body) = server.chat(ask_mock("pay")).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("Pay to"), "{content}");

    let mut streamed = ask_mock("pay");
    streamed["stream"] = json!(true);
    let frames = server.stream(streamed).await;
    assert_eq!(
        frames.last().map(String::as_str),
        Some("[DONE]"),
        "{frames:?}"
    );
    assert_eq!(streamed_content(&frames), content);
    for record in request_records(&server, 2).await {
        assert_eq!(record["status"], "completed", "{record}");
    }
}

// 2. Output safety bypassed by other digits.

#[tokio::test]
async fn fullwidth_and_other_scripts_digits_are_redacted_like_ascii_ones() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::answer(
        "Card: ４１１１ １１１１ １１１１ １１１１, call +１ (４１５) ５５５-２６７１, IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００, card ٤١١١ ١١١١ ١١١١ ١١١١ done.",
    ));
    let (server, _dir) = with_mock(&mock, POLICY_WITHOUT_OUTPUT).await;
    let (status, body) = server.chat(ask_mock("details")).await;
    assert_eq!(status, 200, "{body}");
    let plain = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut streamed = ask_mock("details");
    streamed["stream"] = json!(true);
    let streamed = streamed_content(&server.stream(streamed).await);
    for content in [&plain, &streamed] {
        for masked in ["[REDACTED:card]", "[REDACTED:phone]", "[REDACTED:iban]"] {
            assert!(content.contains(masked), "{masked} missing: {content}");
        }
        for leaked in ["１１１１", "５５５", "３７０４", "١١١١"] {
            assert!(!content.contains(leaked), "{leaked} leaked: {content}");
        }
    }
}

// 3. Output safety failing open on an empty policy file; reloads that drop everything.

#[tokio::test]
async fn an_empty_or_cut_short_policy_is_refused_on_reload_and_output_stays_redacted() {
    let mock = MockUpstream::start().await;
    mock.always(Behaviour::answer(
        "Card 4111 1111 1111 1111 and key sk-proj-abcdefghijklmnopqrstuvwxyz123456 end.",
    ));
    let (server, dir) = with_mock(&mock, POLICY_WITHOUT_OUTPUT).await;
    let policy_file = dir.path().join("policy.yaml");
    let snapshot = || async {
        let (status, body) = server.admin_get("/admin/policy").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["snapshot"].clone()
    };
    let before = snapshot().await;
    let reload = || async {
        let response = server
            .client
            .post(server.url("/admin/policy/reload"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    for (written, why) in [
        ("", "empty"),
        ("# every rule went\n\n", "empty"),
        ("tools: {get_weather: {tier: 0}}", "line break"),
    ] {
        std::fs::write(&policy_file, written).unwrap();
        let (status, body) = reload().await;
        assert_eq!(status, 422, "{written:?}: {body}");
        assert_eq!(body["error"]["code"], "policy_invalid");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert_eq!(snapshot().await, before);
    }
    // The running policy (no output section) still redacts and quarantines by default.
    let (status, body) = server.chat(ask_mock("card")).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("[REDACTED:card]"), "{content}");
    assert!(
        !content.contains("4111") && !content.contains("abcdefghij"),
        "{content}"
    );
    let refusals = records(&server)
        .into_iter()
        .filter(|r| r["action"] == "change_refused" && r["target"] == "policy")
        .count();
    assert_eq!(refusals, 3);
}

#[tokio::test]
async fn an_empty_configuration_is_refused_on_sighup_and_settings_read_at_start_are_named() {
    let audit = common::scratch_dir();
    let builder = TestServer::builder().audit_dir(audit.path());
    let (_dir, path) = builder.write_file();
    let mut server = Spawned::start(&path, &[("WARDEN_ADMIN_KEY", ADMIN_KEY)]);

    // An empty file, as an operator's slip writes it: the text itself is the case.
    std::fs::write(&path, "").unwrap();
    server.signal("HUP");
    let refused = server
        .wait_for_log("reload refused", Duration::from_secs(20))
        .unwrap();
    assert!(refused.contains("empty"), "{refused}");

    let changed = builder
        .slots(3)
        .agent("agent-a", |agent| agent.max_concurrent = Some(2));
    std::fs::write(&path, changed.yaml()).unwrap();
    server.signal("HUP");
    let named = server
        .wait_for_log("next restart", Duration::from_secs(20))
        .unwrap();
    assert!(
        named.contains("local.slots") && named.contains("agents"),
        "{named}"
    );
    let recorded = common::wait_until(
        || {
            warden::audit::query::read_all(audit.path())
                .unwrap_or_default()
                .iter()
                .any(|r| {
                    r["action"] == "routing_changed"
                        && r["not_applied"] == json!(["local.slots", "agents"])
                })
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(
        recorded,
        "{:#?}",
        warden::audit::query::read_all(audit.path())
    );
    // The agents in force are still the ones read at start.
    let status: Value = reqwest::Client::new()
        .get(server.url("/admin/status"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["agents"].as_array().unwrap().len(), 2);
}

// 4. Memory held through the schema cache.

/// An object schema of about `bytes` bytes of JSON, different for every `seed`.
fn schema_of_size(seed: usize, bytes: usize) -> Value {
    let mut properties = serde_json::Map::new();
    let mut size = 0;
    let mut n = 0;
    while size < bytes {
        let name = format!("field_{seed}_{n}");
        let property = json!({"type": "string", "maxLength": n + 1, "description": "x".repeat(40)});
        size += name.len() + property.to_string().len() + 4;
        properties.insert(name, property);
        n += 1;
    }
    json!({"type": "object", "properties": properties})
}

fn offering(schema: Value, model: &str) -> Value {
    json!({
        "model": model,
        "messages": user("hi"),
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": schema}}],
    })
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_large_schemas_leave_memory_within_a_bound() {
    let (_dir, path) = TestServer::builder().write_file();
    let server = Spawned::start(&path, &[]);
    assert!(server.wait_ready(Duration::from_secs(120)).await);
    let client = reqwest::Client::new();
    let send = |body: Value| {
        let request = client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send();
        async move {
            let response = request.await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    // Warm up what every request allocates once, then measure.
    send(offering(schema_of_size(0, 1_000), "no-such-model")).await;
    let before = server.rss_bytes();

    // Far over the per-tool limit: refused by size, never parsed into values or compiled.
    for seed in 0..300 {
        let (status, body) = send(offering(schema_of_size(seed, 800_000), "auto")).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "tools[0].function.parameters");
    }
    let after_large = server.rss_bytes();

    // Just under it: each compiled, and offered to a cache bounded by its budget.
    for seed in 0..300 {
        let (status, body) = send(offering(
            schema_of_size(1_000 + seed, 60_000),
            "no-such-model",
        ))
        .await;
        assert_eq!(status, 404, "{body}");
    }
    let after_cached = server.rss_bytes();
    eprintln!(
        "RSS: {} MiB before, {} MiB after 300 refused 0.8 MB schemas, {} MiB after 300 compiled 60 kB ones",
        before / MIB,
        after_large / MIB,
        after_cached / MIB
    );
    // Refused schemas leave nothing behind but allocator slack. The compiled ones stay
    // within the cache's budget (64 MiB by default, one agent a quarter of it) and
    // the slack of building them.
    assert!(
        after_large < before + 64 * MIB,
        "{} -> {}",
        before / MIB,
        after_large / MIB
    );
    assert!(
        after_cached < before + 192 * MIB,
        "{} -> {}",
        before / MIB,
        after_cached / MIB
    );
}

// 5. CPU work that stalls everyone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_thousand_tools_and_a_huge_prompt_are_refused_while_healthz_answers_at_once() {
    let (_dir, path) = TestServer::builder().write_file();
    let server = Spawned::start(&path, &[]);
    assert!(server.wait_ready(Duration::from_secs(120)).await);
    let tools: Vec<Value> = (0..60_000)
        .map(|i| json!({"type": "function", "function": {"name": format!("tool_{i}")}}))
        .collect();
    let many_tools = json!({"messages": user("hi"), "tools": tools});
    let huge_prompt = json!({"messages": user(&"lorem ipsum dolor ".repeat(200_000))});

    for (body, expected) in [(many_tools, "tools"), (huge_prompt, "messages")] {
        let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = {
            let (url, probing) = (server.url("/healthz"), probing.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut slowest = Duration::ZERO;
                let mut probes = 0;
                while probing.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    slowest = slowest.max(started.elapsed());
                    probes += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (slowest, probes)
            })
        };
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap();
        let took = started.elapsed();
        probing.store(false, std::sync::atomic::Ordering::Relaxed);
        let (slowest, probes) = probe.await.unwrap();
        eprintln!(
            "{expected}: refused in {took:?}; /healthz slowest {slowest:?} over {probes} probes"
        );
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], expected, "{error}");
        assert!(probes > 0);
        assert!(
            slowest < Duration::from_millis(100),
            "/healthz took {slowest:?}"
        );
    }
}

// 6. Connections without limits.

async fn raw_connect(server: &TestServer) -> TcpStream {
    let address = server.base.trim_start_matches("http://").to_string();
    TcpStream::connect(address).await.unwrap()
}

/// Reads until the peer closes (`true`) or `limit` passes (`false`); what it read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (bool, String) {
    let mut read = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, String::from_utf8_lossy(&read).into_owned())
}

#[tokio::test]
async fn slow_headers_are_closed_after_the_header_timeout() {
    let server = TestServer::builder()
        .configure(|config| config.server.header_read_timeout_ms = 500)
        .start()
        .await;
    let mut stream = raw_connect(&server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header line every 200 ms, never the end of the head.
    let trickle = async {
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream
                .write_all(format!("x-slow-{n}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let (closed, _) = read_until_closed(&mut stream, Duration::from_secs(1)).await;
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_and_oversize_bodies_refused_early() {
    let server = TestServer::builder()
        .configure(|config| {
            config.server.idle_timeout_ms = 500;
            config.server.body_read_timeout_ms = 500;
        })
        .start()
        .await;

    let mut idle = raw_connect(&server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: warden\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let (closed, _) = read_until_closed(&mut idle, Duration::from_secs(3)).await;
    assert!(closed, "an idle keep-alive connection stayed open");

    // A declared body over the limit: 413 before a byte of it is sent.
    let mut oversize = raw_connect(&server).await;
    oversize
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: warden\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let (_, answer) = read_until_closed(&mut oversize, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");

    // A body that stops coming: 408 after the body timeout, and on the record.
    let mut stalled = raw_connect(&server).await;
    stalled
        .write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: warden\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"messages\"").as_bytes())
        .await
        .unwrap();
    let (_, answer) = read_until_closed(&mut stalled, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let refused = request_records(&server, 1).await;
    assert_eq!(refused[0]["status"], "refused");
    assert_eq!(refused[0]["error"]["type"], "request_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_keep_a_keyed_request_out() {
    // The test holds both ends of every connection.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let server = TestServer::builder()
        .configure(|config| config.server.max_connections = 500)
        .start()
        .await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        server
            .client
            .get(server.url("/v1/models"))
            .bearer_auth(KEY_A)
            .send(),
    )
    .await
    .expect("the keyed request was kept waiting")
    .unwrap();
    assert_eq!(response.status(), 200);
    eprintln!(
        "served past 2,000 idle connections in {:?}",
        started.elapsed()
    );
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = server.metrics().await;
    let evicted = common::metric(
        &metrics,
        "warden_http_connections_closed_total{reason=\"evicted_idle\"}",
    )
    .unwrap();
    assert!(evicted >= 1_000.0, "{metrics}");
    drop(idle);
}

#[tokio::test]
async fn with_every_connection_busy_a_new_one_is_told_503_at_once() {
    let server = TestServer::builder()
        .configure(|config| {
            config.server.max_connections = 2;
            config.server.body_read_timeout_ms = 10_000;
        })
        .start()
        .await;
    // Two requests in progress: their bodies are still coming.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = raw_connect(&server).await;
        stream
            .write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: warden\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{").as_bytes())
            .await
            .unwrap();
        busy.push(stream);
    }
    // Give the server the time to read both heads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = raw_connect(&server).await;
    let (closed, answer) = read_until_closed(&mut refused, Duration::from_secs(3)).await;
    assert!(closed, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    drop(busy);
}

// 7. A refused start rewriting the evidence.

/// Every file of a folder, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_over_an_edited_record_leaves_the_log_as_it_was() {
    let audit = common::scratch_dir();
    let (_dir, path) = TestServer::builder().audit_dir(audit.path()).write_file();
    {
        let server = Spawned::start(&path, &[]);
        for _ in 0..3 {
            // Refused at validation, and recorded: no model needed to fill the log.
            let response = reqwest::Client::new()
                .post(server.url("/v1/chat/completions"))
                .bearer_auth(KEY_A)
                .header("content-type", "application/json")
                .body("{\"messages\": [")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
        }
    }
    // Edit the last record in place, as someone covering their tracks would.
    let segment = warden::audit::segment::list(audit.path())
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    let mut bytes = std::fs::read(&segment.path).unwrap();
    let records_end = bytes.iter().rposition(|&b| b == b'\n').unwrap();
    let last_start = bytes[..records_end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let field = bytes[last_start..records_end]
        .windows(9)
        .position(|window| window == b"\"refused\"")
        .unwrap();
    bytes[last_start + field + 1] = b'R';
    std::fs::write(&segment.path, &bytes).unwrap();
    let before = snapshot(audit.path());

    let (started, output) = serve_to_exit(&path, Duration::from_secs(60));
    assert!(!started, "{output}");
    assert!(output.contains("damaged"), "{output}");
    assert_eq!(
        snapshot(audit.path()),
        before,
        "the refused start changed the log"
    );
    let (verified, report) = audit_verify(audit.path());
    assert!(!verified, "{report}");
    assert!(!report.contains("torn"), "{report}");
}

// 8. The smaller ones.

#[tokio::test]
async fn bad_paths_long_run_ids_and_the_right_param_are_answered_in_openai_shape() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/v1/approvals/%FF%FE"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_path", "{body}");

    let response = server
        .chat_request()
        .header("x-run-id", "r".repeat(60_000))
        .json(&json!({"messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "x-run-id", "{body}");

    let (status, body) = server
        .chat(json!({"messages": user("hi"), "max_completion_tokens": 100_000}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_completion_tokens", "{body}");

    // Both chat requests are on the record: the one refused before the gateway took
    // it as much as the one the engine refused.
    let refused = request_records(&server, 2).await;
    for record in &refused {
        assert_eq!(record["status"], "refused", "{record}");
        // The record names the refusal by the code the client got.
        assert_eq!(record["error"]["type"], "invalid_value", "{record}");
    }
}

#[tokio::test]
async fn admin_and_metrics_need_the_admin_key_or_a_listener_of_their_own() {
    let server = TestServer::start().await;
    for (key, status) in [(None, 401), (Some(KEY_A), 403), (Some(ADMIN_KEY), 200)] {
        for path in ["/metrics", "/admin/status"] {
            let mut request = server.client.get(server.url(path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            assert_eq!(
                request.send().await.unwrap().status(),
                status,
                "{path} with {key:?}"
            );
        }
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let apart = TestServer::builder()
        .configure(|config| {
            config.server.metrics = RawMetrics {
                access: MetricsAccess::Open,
                listen: Some(format!("127.0.0.1:{port}")),
            };
        })
        .start()
        .await;
    let on_api = apart
        .client
        .get(apart.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), 404);
    let scraped = common::wait_until_async(
        || {
            let request = apart
                .client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send();
            async move { matches!(request.await, Ok(response) if response.status() == 200) }
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(scraped, "the metrics listener did not answer");
}

#[tokio::test]
async fn local_generation_stops_at_its_deadline_with_its_own_reason() {
    let server = TestServer::builder()
        .configure(|config| config.local.max_generation_ms = 1)
        .start()
        .await;
    // A short prompt is read in one step, which also samples the first token: the
    // deadline then ends the answer there.
    let (status, body) = server
        .chat(json!({"model": "smollm2-135m-instruct", "messages": user("Count to fifty."), "max_tokens": 200}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 1);
    assert!(
        body["warden"]["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("generation_deadline")),
        "{body}"
    );
    // A long prompt takes several steps to read: stopped before any answer.
    let (status, body) = server
        .chat(json!({"model": "smollm2-135m-instruct", "messages": user(&"Tell me about the sea. ".repeat(200))}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "generation_deadline");
}

#[test]
fn figures_that_cannot_work_and_missing_files_are_refused_at_start_saying_why_once() {
    type Change = fn(&mut RawConfig);
    let refused: [(Change, &str); 4] = [
        (
            |config| config.local.kv_cache_mib = 1_048_576,
            "local.kv_cache_mib",
        ),
        (
            |config| config.local.threads = Some(100_000),
            "local.threads",
        ),
        (
            |config| config.local.max_generation_ms = u64::MAX,
            "local.max_generation_ms",
        ),
        (
            |config| config.server.header_read_timeout_ms = u64::MAX,
            "server.header_read_timeout_ms",
        ),
    ];
    for (change, key) in refused {
        let (_dir, path) = TestServer::builder().configure(change).write_file();
        let (started, output) = serve_to_exit(&path, Duration::from_secs(60));
        assert!(!started && output.contains(key), "{key}: {output}");
    }

    let missing = Path::new("/nonexistent/warden.yaml");
    let (started, output) = serve_to_exit(missing, Duration::from_secs(60));
    assert!(!started, "{output}");
    assert_eq!(output.matches("No such file").count(), 1, "{output}");
}

/// A backend that panics: when asked, or while its answer streams.
struct PanickingBackend {
    mid_stream: bool,
}

#[async_trait::async_trait]
impl Backend for PanickingBackend {
    fn name(&self) -> &str {
        "panicking"
    }

    fn models(&self) -> Vec<String> {
        vec!["panicking".into()]
    }

    fn status(&self) -> BackendStatus {
        BackendStatus::Ready
    }

    async fn generate(
        &self,
        _request: ChatRequest,
        _ranks_at: Instant,
    ) -> Result<EventStream, BackendError> {
        if !self.mid_stream {
            panic!("a bug before the answer");
        }
        let first = Ok(GenerationEvent::Content {
            text: "Hello".into(),
            logprobs: Vec::new(),
        });
        type Item = Result<GenerationEvent, BackendError>;
        let broken = stream::poll_fn(|_| -> std::task::Poll<Option<Item>> {
            panic!("a bug while streaming")
        });
        Ok(Box::pin(stream::iter([first]).chain(broken)))
    }
}

#[tokio::test]
async fn a_panic_is_answered_500_or_an_error_event_counted_and_recorded_as_internal_error() {
    for mid_stream in [false, true] {
        let config = TestServer::builder().config();
        let base = common::serve(&config, Arc::new(PanickingBackend { mid_stream })).await;
        let client = reqwest::Client::new();
        let body = json!({"model": "panicking", "messages": user("hi")});
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500, "mid_stream: {mid_stream}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "internal_error", "{error}");

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&streamed)
            .send()
            .await
            .unwrap();
        if mid_stream {
            // The status went out with the first chunk: the error comes in-band.
            assert_eq!(response.status(), 200);
            let frames = sse_data(&response.text().await.unwrap());
            let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
            assert_eq!(last["error"]["code"], "internal_error", "{frames:?}");
        } else {
            assert_eq!(response.status(), 500);
        }

        let metrics = common::scrape(&client, &base).await;
        let at = if mid_stream { "response" } else { "handler" };
        let series = format!("warden_panics_total{{at=\"{at}\"}}");
        assert_eq!(common::metric(&metrics, &series), Some(2.0), "{metrics}");
        let audit_dir = config.audit.dir.clone();
        let recorded = common::wait_until(
            || {
                warden::audit::query::read_all(&audit_dir)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| {
                        r["kind"] == "request"
                            && r["error"]["type"] == "internal_error"
                            && r["status"] == "failed"
                    })
                    .count()
                    == 2
            },
            Duration::from_secs(20),
        )
        .await;
        assert!(
            recorded,
            "{:#?}",
            warden::audit::query::read_all(&audit_dir)
        );
    }
}
