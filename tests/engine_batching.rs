//! Continuous batching through the real server: requests of different lengths join a
//! running batch one after another and leave it as they finish, and each one still gets
//! exactly the answer it gets alone. Also the per-sequence network used on
//! accelerators, run here on the CPU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{streamed_content, user, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use warden::backend::local::network::{Network, Runner};
use warden::backend::local::LocalBackend;
use warden::backend::{collect, Backend};
use warden::chat::{ChatRequest, Message, Role, Sampling, ToolChoice};
use warden::config::LocalConfig;
use warden::model::ModelRef;

/// Questions of different prompt lengths with different answer lengths: the longest
/// first, so the others join a batch that is already decoding, and the short ones
/// leave while the long ones carry on.
const REQUESTS: [(&str, u32); 8] = [
    (
        "Write a short story about a lighthouse keeper and a storm.",
        120,
    ),
    ("What is the capital of France?", 12),
    (
        "Name three primary colours and say why they are called primary.",
        60,
    ),
    ("What do bees make?", 4),
    (
        "Explain in a few sentences how a compiler turns source code into a program.",
        90,
    ),
    ("What is 12 times 12?", 8),
    (
        "Describe autumn in a forest, with its colours, sounds and smells.",
        45,
    ),
    ("Who wrote Romeo and Juliet?", 25),
];

/// `question` for the backend itself, answered greedily.
fn request(question: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "auto".into(),
        messages: vec![Message::text(Role::User, question)],
        tools: Vec::new(),
        tool_choice: ToolChoice::Auto,
        sampling: Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        },
        logprobs: None,
        response_format: Default::default(),
        raw_prompt: false,
        choices: 1,
        parallel_tool_calls: None,
    }
}

/// The test configuration's `local` section, and the model it names.
fn test_model() -> (LocalConfig, ModelRef) {
    let local = TestServer::builder().config().local;
    let model = ModelRef::resolve(&local.model, &local.models_dir).unwrap();
    (local, model)
}

fn ask(question: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"messages": user(question), "temperature": 0, "max_tokens": max_tokens, "stream": stream})
}

#[tokio::test]
async fn eight_overlapping_requests_of_different_lengths_each_get_their_own_answer() {
    let server = Arc::new(TestServer::builder().slots(8).start().await);
    // Alone, one after another: the reference answers.
    let mut alone = Vec::new();
    for (question, max_tokens) in REQUESTS {
        let (status, body) = server.chat(ask(question, max_tokens, false)).await;
        assert_eq!(status, 200, "{body}");
        alone.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Overlapping: each request is sent once the one before has streamed its first
    // chunk, so it joins a batch that is mid-generation.
    let most_running = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (server, most_running, done) = (server.clone(), most_running.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                most_running.fetch_max(server.local.busy_slots(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut previous_started: Option<oneshot::Receiver<()>> = None;
    let mut tasks = Vec::new();
    for (question, max_tokens) in REQUESTS {
        let (started, next) = oneshot::channel();
        let wait_for = previous_started.replace(next);
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            if let Some(previous) = wait_for {
                previous.await.unwrap();
            }
            let response = server
                .chat_request()
                .json(&ask(question, max_tokens, true))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            let mut text = String::new();
            let mut started = Some(started);
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
            }
            streamed_content(&common::sse_data(&text))
        }));
    }
    let together: Vec<String> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    for (((question, _), expected), got) in REQUESTS.iter().zip(&alone).zip(&together) {
        assert_eq!(got, expected, "{question}");
    }
    assert!(alone[1].contains("Paris"), "{}", alone[1]);
    let most_running = most_running.load(Ordering::Relaxed);
    eprintln!("at most {most_running} sequences decoded together");
    assert!(most_running >= 2, "the requests never shared a batch");
    assert!(common::wait_until(|| server.local.busy_slots() == 0, Duration::from_secs(60)).await);
}

/// On CUDA or Metal the engine runs candle's quantized llama with one model copy (and
/// key/value cache) per sequence. Run on the CPU here: overlapping requests, joining
/// while others decode, each get the answer they get alone.
#[tokio::test]
async fn the_per_sequence_network_of_accelerators_keeps_sequences_apart() {
    let (local, model) = test_model();
    let engine =
        warden::server::load_engine_with(&model, &local, Device::Cpu, Runner::Candle).unwrap();
    assert!(matches!(engine.network(), Network::Candle { .. }));
    let backend = Arc::new(LocalBackend::loading(
        "smollm2-135m-instruct",
        4,
        Duration::from_secs(120),
    ));
    backend.set_ready(Arc::new(engine));
    let questions = &REQUESTS[..4];
    let mut alone = Vec::new();
    for (question, max_tokens) in questions {
        let events = backend
            .generate(request(question, *max_tokens), Instant::now())
            .await
            .unwrap();
        alone.push(collect(events).await.unwrap().content);
    }
    let together = futures::future::join_all(questions.iter().map(|(question, max_tokens)| {
        let (backend, request) = (backend.clone(), request(question, *max_tokens));
        async move {
            collect(backend.generate(request, Instant::now()).await.unwrap())
                .await
                .unwrap()
                .content
        }
    }))
    .await;
    assert_eq!(together, alone);
    assert!(alone[1].contains("Paris"), "{}", alone[1]);
}

/// While the key/value cache is full, the engine lets waiting requests in by the place
/// the governor gave them (`ranks_at`), not by when they reached it: a request ranked
/// earlier but arriving later goes first.
#[tokio::test]
async fn requests_waiting_for_cache_room_go_in_the_governor_s_order() {
    let (local, model) = test_model();
    let engine = warden::server::load_engine(&model, &local).unwrap();
    let backend = Arc::new(
        LocalBackend::loading("smollm2-135m-instruct", 4, Duration::from_secs(120))
            .with_kv_cache_bytes(8 * 1024 * 1024),
    );
    backend.set_ready(Arc::new(engine));
    // Each request reserves over half the cache, so only one runs at a time.
    let cache_tokens = backend.capacity().unwrap().cache_tokens;
    let max_tokens = u32::try_from(cache_tokens / 2 + 1).unwrap();
    let wait_for_waiting = |count: usize| {
        let backend = backend.clone();
        async move {
            for _ in 0..600 {
                if backend.capacity().unwrap().waiting == count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{count} requests never waited together");
        }
    };

    // A long answer nobody reads holds the cache: its sequence stalls once its event
    // buffer is full.
    let holder = backend
        .generate(request(REQUESTS[0].0, max_tokens), Instant::now())
        .await
        .unwrap();
    let (admitted, mut order) = tokio::sync::mpsc::unbounded_channel();
    let start = |label: &'static str, ranks_at: Instant| {
        let (backend, admitted) = (backend.clone(), admitted.clone());
        let asked = request("What is the capital of France?", max_tokens);
        tokio::spawn(async move {
            let events = backend.generate(asked, ranks_at).await.unwrap();
            admitted.send(label).unwrap();
            collect(events).await.unwrap();
        })
    };
    let now = Instant::now();
    let late_rank = start("ranked later, arrived first", now + Duration::from_secs(10));
    wait_for_waiting(1).await;
    let early_rank = start("ranked earlier, arrived second", now);
    wait_for_waiting(2).await;

    drop(holder);
    late_rank.await.unwrap();
    early_rank.await.unwrap();
    drop(admitted);
    let mut admissions = Vec::new();
    while let Some(label) = order.recv().await {
        admissions.push(label);
    }
    assert_eq!(
        admissions,
        [
            "ranked earlier, arrived second",
            "ranked later, arrived first"
        ]
    );
}

/// Four requests of one prompt longer than a prefill slice, at once: the first reads it,
/// the others copy what it read, even when it finishes in the pass that read its last
/// token, and each answer is the one the prompt gets alone.
#[tokio::test]
async fn requests_of_one_prompt_read_it_once_and_answer_as_alone() {
    let (local, model) = test_model();
    let engine = warden::server::load_engine(&model, &local).unwrap();
    let backend = Arc::new(LocalBackend::loading(
        "smollm2-135m-instruct",
        4,
        Duration::from_secs(120),
    ));
    backend.set_ready(Arc::new(engine));
    let facts: Vec<String> = (0..30)
        .map(|i| format!("Fact {i}: the lighthouse on island {i} is painted red and white."))
        .collect();
    let question = format!(
        "{} Which colour is the lighthouse on island 7?",
        facts.join(" ")
    );
    for max_tokens in [1, 6] {
        let alone = collect(
            backend
                .generate(request(&question, max_tokens), Instant::now())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let prompt_tokens = alone.finished.usage.prompt_tokens;
        assert!(
            prompt_tokens as usize > warden::backend::local::scheduler::PREFILL_TOKENS_PER_STEP,
            "{prompt_tokens}"
        );
        let together = futures::future::join_all((0..4).map(|_| {
            let (backend, request) = (backend.clone(), request(&question, max_tokens));
            async move {
                collect(backend.generate(request, Instant::now()).await.unwrap())
                    .await
                    .unwrap()
            }
        }))
        .await;
        let mut copied: Vec<u32> = together
            .iter()
            .map(|answer| answer.finished.usage.cached_prompt_tokens)
            .collect();
        copied.sort_unstable();
        assert_eq!(
            copied,
            [0, prompt_tokens - 1, prompt_tokens - 1, prompt_tokens - 1]
        );
        for answer in &together {
            assert_eq!(answer.content, alone.content, "max_tokens {max_tokens}");
        }
    }
}
