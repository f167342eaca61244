//! A real `warden serve` killed with SIGKILL while requests are in flight, restarted on
//! the same audit folder: the chain still verifies with the `warden audit verify`
//! command, and every request that got a 200 has its record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mock_upstream::{Behaviour, MockUpstream};
use common::process::{audit_verify, Spawned};
use common::{scratch_dir, user, wait_until, TestServer, ADMIN_KEY, KEY_A};
use serde_json::{json, Value};
use warden::backend::provider::config::ProviderKind;
use warden::config::routing::RawProvider;

/// Clients sending one request after another until the server goes away.
const EXTERNAL_CLIENTS: usize = 12;
const LOCAL_CLIENTS: usize = 3;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Request ids of the 200s whose whole answer arrived.
    answered: Mutex<Vec<String>>,
    answered_locally: AtomicUsize,
    /// Requests the kill cut off (the connection broke).
    cut: AtomicUsize,
    /// Any other status: each is a failure of the test's set-up.
    other: Mutex<Vec<String>>,
}

/// Sends `body` until a request fails to get an answer.
async fn client(base: String, body: Value, local: bool, seen: Arc<Seen>) {
    let http = reqwest::Client::new();
    loop {
        let sent = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(_) => break,
        };
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .map(|id| id.to_str().unwrap().to_string());
        let answer = match response.json::<Value>().await {
            Ok(answer) => answer,
            Err(_) => break,
        };
        if status != 200 {
            seen.other
                .lock()
                .unwrap()
                .push(format!("{status}: {answer}"));
            return;
        }
        let request_id = request_id.unwrap();
        assert_eq!(answer["id"], format!("chatcmpl-{request_id}"));
        assert_eq!(answer["warden"]["request_id"], request_id);
        seen.answered.lock().unwrap().push(request_id);
        if local {
            seen.answered_locally.fetch_add(1, Ordering::SeqCst);
        }
    }
    seen.cut.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_restarts_with_a_valid_chain_holding_every_answered_request() {
    // Most requests go to the mock upstream, which answers after a short delay so that
    // many are in flight at any moment; a few go to the real local model.
    let mock = MockUpstream::start().await;
    mock.stop_recording();
    mock.always(Behaviour::Delay(
        Duration::from_millis(40),
        Box::new(Behaviour::answer("Recorded before you read this.")),
    ));
    let audit = scratch_dir();
    let (_dir, config) = TestServer::builder()
        .audit_dir(audit.path())
        .provider(RawProvider {
            retries: 0,
            timeout_ms: 30_000,
            models: vec![common::priced("mock-large", 1, 2)],
            ..common::provider("mock", ProviderKind::Openai, &mock.base, &[])
        })
        .write_file();
    let envs = [("WARDEN_ADMIN_KEY", ADMIN_KEY)];

    let server = Spawned::start(&config, &envs);
    // Local requests are refused until the model has loaded: start the load after.
    assert!(
        server.wait_ready(Duration::from_secs(300)).await,
        "the local model never loaded"
    );
    let seen = Arc::new(Seen::default());
    let external = json!({"model": "mock-large", "messages": user("Hi"), "max_tokens": 16});
    let local = json!({"model": "auto", "messages": user("Say hi."), "max_tokens": 2});
    let clients: Vec<_> = (0..EXTERNAL_CLIENTS + LOCAL_CLIENTS)
        .map(|n| {
            let is_local = n >= EXTERNAL_CLIENTS;
            let body = if is_local { &local } else { &external };
            tokio::spawn(client(
                server.base.clone(),
                body.clone(),
                is_local,
                seen.clone(),
            ))
        })
        .collect();
    let under_load = wait_until(
        || {
            seen.answered.lock().unwrap().len() >= 60
                && seen.answered_locally.load(Ordering::SeqCst) >= 2
        },
        Duration::from_secs(300),
    )
    .await;
    assert!(under_load, "too few answers before the kill");
    server.signal("KILL");
    for client in clients {
        client.await.unwrap();
    }
    drop(server);

    let answered: BTreeSet<String> = seen.answered.lock().unwrap().iter().cloned().collect();
    let cut = seen.cut.load(Ordering::SeqCst);
    assert!(seen.other.lock().unwrap().is_empty(), "{:?}", seen.other);
    // Every client was sending when the server died.
    assert_eq!(cut, EXTERNAL_CLIENTS + LOCAL_CLIENTS);
    let (ok, text) = audit_verify(audit.path());
    assert!(ok, "the log the killed server left: {text}");

    // SIGKILL cannot cut a write(2) to a file short, a power cut can: tear the last line
    // as one would, over the zeros the segment was extended with (if any), to check that
    // start-up moves it aside and carries on.
    let segment = warden::audit::segment::list(audit.path())
        .unwrap()
        .pop()
        .unwrap()
        .path;
    let mut bytes = std::fs::read(&segment).unwrap();
    let zeros = bytes.split_off(warden::audit::segment::written_len(&bytes));
    let last_line = bytes[..bytes.len() - 1]
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap()
        .to_vec();
    let torn = &last_line[..last_line.len() / 2];
    bytes.extend_from_slice(torn);
    bytes.extend(zeros.into_iter().skip(torn.len()));
    std::fs::write(&segment, bytes).unwrap();
    let (ok, _) = audit_verify(audit.path());
    assert!(!ok, "a torn tail is reported until start-up repairs it");

    let server = Spawned::start(&config, &envs);
    let report = server
        .logged("torn line")
        .expect("start-up did not report the torn tail");
    assert!(report.contains(&segment.display().to_string()), "{report}");
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&external)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let after_restart = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(server);

    let (ok, text) = audit_verify(audit.path());
    assert!(ok, "after the restart: {text}");
    let records = warden::audit::query::read_all(audit.path()).unwrap();
    let recorded: BTreeSet<String> = records
        .iter()
        .filter(|record| record["kind"] == "request" && record["status"] == "completed")
        .map(|record| record["request_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = answered.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert!(recorded.contains(&after_restart));
    let repairs: Vec<&Value> = records
        .iter()
        .filter(|record| record["kind"] == "audit_repaired")
        .collect();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert!(Path::new(repairs[0]["moved_to"].as_str().unwrap()).exists());
}
