//! Local engine throughput beside llama.cpp's: prefill of a 200-token prompt and decode
//! of 128 tokens for one stream, measured as llama.cpp's `llama-bench` measures them
//! (`pp200`, `tg128`: random tokens, bare forward passes, decode from an empty cache),
//! then the aggregate rate of 1, 2 and 4 streams decoding at once through the real
//! scheduler, and that rate again with each answer held to a JSON schema (the
//! grammar's mask on every token); last, four requests of one long prompt beside four of
//! prompts that differ from their first word, where only the first four can share one
//! reading of the prompt. `cargo bench --bench engine`.
//!
//! Single-stream figures are taken on the file the engine serves and, should the
//! manifest convert it, on the file as shipped too.
//!
//! With `LLAMA_BENCH=/path/to/llama-bench`, llama.cpp runs on each file with the same
//! thread count and the ratios are printed. With `LLAMA_SERVER=/path/to/llama-server`,
//! a llama.cpp server with 4 parallel slots answers 1, 2 and 4 concurrent requests like
//! the engine's, for the same aggregate decode rate. Figures from one run on one machine
//! state: the only comparison a shared, noisy machine allows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use warden::backend::local::llama::kv_cache::KvCache;
use warden::backend::local::llama::{Llama, Output, SequenceInput, Workspace};
use warden::backend::local::LocalBackend;
use warden::backend::{collect, Backend};
use warden::chat::{ChatRequest, Message, ResponseFormat, Role, Sampling};
use warden::config::Config;
use warden::model::ModelRef;

const PROMPT_TOKENS: usize = 200;
const DECODE_TOKENS: usize = 128;
/// Repetitions of each single-stream test, as `llama-bench -r 3`.
const ROUNDS: usize = 3;
const WARM_UP_ROUNDS: usize = 2;
const STREAMS: [usize; 3] = [1, 2, 4];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("routing/warden.yaml")).unwrap();
    let threads = config.local.threads;
    warden::backend::local::use_threads(threads);
    let threads: usize = std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(threads);
    let model = ModelRef::resolve(&config.local.model, &config.local.models_dir).unwrap();
    let ModelRef::Manifest(manifest) = &model else {
        panic!("the bench expects the shipped manifest");
    };
    let shipped = config.local.models_dir.join(&manifest.file);
    let served = manifest.converted_file().map_or_else(
        || shipped.clone(),
        |file| config.local.models_dir.join(file),
    );
    let mut files = vec![("served", served.clone())];
    if shipped != served {
        files.push(("shipped", shipped));
    }
    let llama_bench_binary = std::env::var_os("LLAMA_BENCH");
    let llama_server_binary = std::env::var_os("LLAMA_SERVER");

    println!(
        "local engine with {threads} threads (load average before: {})",
        load_average()
    );
    println!();
    println!(
        "{:<44} {:>15} {:>15} {:>8}",
        "single stream, tok/s", "warden", "llama.cpp", "ratio"
    );
    for (role, file) in &files {
        let (prefill, decode) = single_stream(file);
        let theirs = llama_bench_binary
            .as_ref()
            .map(|binary| llama_bench(Path::new(binary), file, threads));
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        println!("{role} file {name}");
        let rows = [
            (
                format!("  prefill, {PROMPT_TOKENS}-token prompt"),
                prefill,
                0,
            ),
            (format!("  decode, {DECODE_TOKENS} tokens"), decode, 1),
        ];
        for (row, ours, index) in rows {
            match &theirs {
                Some(Ok(theirs)) => println!(
                    "{row:<44} {:>15} {:>15} {:>7.2}x",
                    ours.to_string(),
                    theirs[index].to_string(),
                    ours.mean / theirs[index].mean
                ),
                _ => println!("{row:<44} {:>15}", ours.to_string()),
            }
        }
        if let Some(Err(why)) = &theirs {
            println!("  llama.cpp: {why}");
        }
    }
    if llama_bench_binary.is_none() {
        println!("llama.cpp: not run; set LLAMA_BENCH to a llama-bench binary to compare");
    }

    let engine = Arc::new(warden::server::load_engine(&model, &config.local).unwrap());
    let slots = STREAMS.iter().copied().max().unwrap_or(1);
    let backend = LocalBackend::loading(model.name(), slots, Duration::from_secs(600));
    backend.set_ready(engine);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ours = aggregate(&runtime, &backend, &ResponseFormat::Text);
    let theirs = llama_server_binary
        .as_ref()
        .map(|binary| llama_server(Path::new(binary), &served, threads));
    println!();
    println!(
        "streams decoding at once (up to {DECODE_TOKENS} tokens each, sampled), aggregate tok/s:"
    );
    let single = ours[0].1;
    for (index, (count, rate, fewest)) in ours.iter().enumerate() {
        let versus = match &theirs {
            Some(Ok(server)) => format!(
                "; llama.cpp server (4 slots) {:.1}, {:.2}x",
                server[index],
                rate / server[index]
            ),
            _ => String::new(),
        };
        println!(
            "  {count} stream{}: {rate:>7.1}, {:.2}x one stream (shortest {fewest} tokens){versus}",
            if *count == 1 { " " } else { "s" },
            rate / single
        );
    }
    match &theirs {
        None => println!(
            "llama.cpp server: not run; set LLAMA_SERVER to a llama-server binary to compare"
        ),
        Some(Err(why)) => println!("llama.cpp server: {why}"),
        Some(Ok(_)) => {}
    }
    constrained(&runtime, &backend);
    shared_prompt(&runtime, &backend);
    println!("load average after: {}", load_average());
}

/// A mean and standard deviation over rounds, printed as llama-bench prints them.
#[derive(Clone, Copy)]
struct Rate {
    mean: f64,
    deviation: f64,
}

impl Rate {
    fn of(samples: &[f64]) -> Self {
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>()
            / (samples.len().max(2) - 1) as f64;
        Rate {
            mean,
            deviation: variance.sqrt(),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} ± {:.1}", self.mean, self.deviation)
    }
}

/// `pp200` and `tg128` on the engine's own forward pass: one pass over 200 random
/// tokens, then 128 one-token passes from position 0, each round on a fresh cache.
fn single_stream(file: &Path) -> (Rate, Rate) {
    let mut reader = std::fs::File::open(file).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let model = Llama::load(&content, &mut reader).unwrap();
    let config = model.config().clone();
    let positions = PROMPT_TOKENS + DECODE_TOKENS;
    let mut cache = KvCache::with_budget(&config, KvCache::bytes_per_token(&config) * positions);
    let mut work = Workspace::default();
    // llama-bench's prompts are random tokens; a fixed generator keeps runs comparable.
    let mut state = 0x2545_f491_u32;
    let mut random_token = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state % config.vocab as u32
    };

    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    // Warm-up rounds (llama-bench has one), then the measured ones. The engine's first
    // passes of each size try each of its worker pools once (1 and 2 workers here), so
    // it gets two.
    for round in 0..WARM_UP_ROUNDS + ROUNDS {
        let prompt: Vec<u32> = (0..PROMPT_TOKENS).map(|_| random_token()).collect();
        let table = cache.allocate(PROMPT_TOKENS).unwrap();
        let started = Instant::now();
        let input = SequenceInput {
            tokens: &prompt,
            position: 0,
            table: &table,
            output: Output::Logits,
        };
        model.forward(&[input], &mut cache, &mut work).unwrap();
        let prefill_rate = PROMPT_TOKENS as f64 / started.elapsed().as_secs_f64();
        cache.release(table);

        let table = cache.allocate(DECODE_TOKENS).unwrap();
        let mut token = random_token();
        let started = Instant::now();
        for position in 0..DECODE_TOKENS {
            let input = SequenceInput {
                tokens: &[token],
                position,
                table: &table,
                output: Output::Logits,
            };
            let outputs = model.forward(&[input], &mut cache, &mut work).unwrap();
            token = argmax(outputs.logits);
        }
        let decode_rate = DECODE_TOKENS as f64 / started.elapsed().as_secs_f64();
        cache.release(table);
        if round >= WARM_UP_ROUNDS {
            prefill.push(prefill_rate);
            decode.push(decode_rate);
        }
    }
    (Rate::of(&prefill), Rate::of(&decode))
}

fn argmax(logits: &[f32]) -> u32 {
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index);
    best as u32
}

/// Aggregate decode tokens per second of `n` requests generating at once through the
/// local backend (continuous batching), answers held to `format`, for each `n` in
/// `STREAMS`; and the fewest tokens a stream generated (a stream that stops early
/// leaves the others decoding in a smaller batch).
fn aggregate(
    runtime: &tokio::runtime::Runtime,
    backend: &LocalBackend,
    format: &ResponseFormat,
) -> Vec<(usize, f64, u32)> {
    runtime.block_on(async {
        generate(backend, 1, 8, format).await; // warm-up
        let mut rates = Vec::new();
        for n in STREAMS {
            let started = Instant::now();
            let streams = generate(backend, n, DECODE_TOKENS as u32, format).await;
            let elapsed = started.elapsed().as_secs_f64();
            // Decoding only: from the moment every stream has its first token (all
            // prompts read) to the last token, over the tokens generated after each
            // stream's first.
            let last_first_token = streams
                .iter()
                .map(|(_, first_token_ms)| first_token_ms / 1000.0)
                .fold(0.0, f64::max);
            let decoded: u32 = streams
                .iter()
                .map(|(tokens, _)| tokens.saturating_sub(1))
                .sum();
            let fewest = streams.iter().map(|(tokens, _)| *tokens).min().unwrap_or(0);
            rates.push((n, f64::from(decoded) / (elapsed - last_first_token), fewest));
        }
        rates
    })
}

/// Decode with the answer held to a JSON schema beside decode without, in alternating
/// rounds on one engine: the rate each gets and what the grammar's mask costs a token.
/// The story must be longer than the tokens allowed, so that every held stream, like
/// every free one, decodes all of them (a stream that ends early would leave the others
/// in a smaller batch, and the comparison would be of batch sizes).
fn constrained(runtime: &tokio::runtime::Runtime, backend: &LocalBackend) {
    let story = ResponseFormat::JsonSchema {
        name: "story".into(),
        schema: serde_json::json!({"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 40},
            "story": {"type": "string", "minLength": 2000}},
            "required": ["title", "story"], "additionalProperties": false}),
        strict: true,
    };
    let mut free = vec![Vec::new(); STREAMS.len()];
    let mut held = vec![Vec::new(); STREAMS.len()];
    let (mut fewest_free, mut fewest_held) = (u32::MAX, u32::MAX);
    for _ in 0..ROUNDS {
        for (rates, format, fewest) in [
            (&mut free, &ResponseFormat::Text, &mut fewest_free),
            (&mut held, &story, &mut fewest_held),
        ] {
            for (index, (_, rate, shortest)) in
                aggregate(runtime, backend, format).into_iter().enumerate()
            {
                rates[index].push(rate);
                *fewest = (*fewest).min(shortest);
            }
        }
    }
    println!();
    println!(
        "decode held to a JSON schema beside free decode ({ROUNDS} alternating rounds; \
         shortest stream {} and {} tokens), aggregate tok/s:",
        fewest_free, fewest_held
    );
    for (index, count) in STREAMS.iter().enumerate() {
        let (free, held) = (Rate::of(&free[index]), Rate::of(&held[index]));
        // A step of `count` streams yields `count` tokens and computes `count` masks,
        // so the extra time per token is the mask's cost.
        let mask_ms = (1.0 / held.mean - 1.0 / free.mean) * 1000.0;
        println!(
            "  {count} stream{}: free {free}, schema {held}, {:.2}x; mask {mask_ms:.2} ms a token",
            if *count == 1 { " " } else { "s" },
            held.mean / free.mean
        );
    }
}

/// Four one-token answers to one prompt of some 760 tokens (the choices of a request for
/// `n`, or agents sharing a long system prompt) beside four to prompts that differ from
/// their first word: seconds until all four have answered, alternating rounds.
fn shared_prompt(runtime: &tokio::runtime::Runtime, backend: &LocalBackend) {
    let text: Vec<String> = (0..40)
        .map(|i| format!("Item {i}: the quick brown fox jumps over the lazy dog number {i}."))
        .collect();
    let text = text.join(" ");
    let same: Vec<String> = vec![text.clone(); 4];
    let different: Vec<String> = (0..4).map(|k| format!("Variant {k}. {text}")).collect();
    let (mut shared_seconds, mut separate_seconds) = (Vec::new(), Vec::new());
    let mut reused = 0;
    for _ in 0..ROUNDS {
        for (prompts, seconds) in [
            (&same, &mut shared_seconds),
            (&different, &mut separate_seconds),
        ] {
            let started = Instant::now();
            let answers =
                runtime.block_on(futures::future::join_all(prompts.iter().map(|prompt| {
                    let mut request =
                        ChatRequest::new("auto", vec![Message::text(Role::User, prompt.clone())]);
                    request.sampling.max_tokens = Some(1);
                    async move {
                        collect(backend.generate(request, Instant::now()).await.unwrap())
                            .await
                            .unwrap()
                    }
                })));
            seconds.push(started.elapsed().as_secs_f64());
            if prompts == &same {
                reused = answers
                    .iter()
                    .map(|answer| answer.finished.usage.cached_prompt_tokens)
                    .sum::<u32>();
            }
        }
    }
    let (shared, separate) = (Rate::of(&shared_seconds), Rate::of(&separate_seconds));
    println!();
    println!(
        "four answers at once ({ROUNDS} alternating rounds), seconds: one prompt {shared} \
         ({reused} of its tokens copied, not read), four prompts {separate}; {:.2}x faster",
        separate.mean / shared.mean
    );
}

/// Runs `n` story requests at once, their answers held to `format`; returns each one's
/// generated tokens and the milliseconds to its first token.
async fn generate(
    backend: &LocalBackend,
    n: usize,
    max_tokens: u32,
    format: &ResponseFormat,
) -> Vec<(u32, f64)> {
    let requests = (0..n).map(|stream| {
        let mut request = ChatRequest::new(
            "auto",
            vec![Message::text(
                Role::User,
                "Write a long story about a lighthouse keeper.",
            )],
        );
        // Sampled rather than greedy, so that the streams differ and run long.
        request.sampling = Sampling {
            temperature: Some(0.8),
            seed: Some(stream as u64 + 1),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        };
        request.response_format = format.clone();
        async move {
            let generation = collect(backend.generate(request, Instant::now()).await.unwrap())
                .await
                .unwrap();
            let summary = generation.finished;
            (
                summary.usage.completion_tokens,
                summary.timings.first_token_ms,
            )
        }
    });
    futures::future::join_all(requests).await
}

/// llama.cpp's `pp200` and `tg128` on `file`, or why they could not be had.
fn llama_bench(binary: &Path, file: &Path, threads: usize) -> Result<[Rate; 2], String> {
    let library_path = library_path(binary)?;
    let output = Command::new(binary)
        .args(["-m".as_ref(), file.as_os_str()])
        .args(["-t", &threads.to_string()])
        .args(["-p", &PROMPT_TOKENS.to_string()])
        .args(["-n", &DECODE_TOKENS.to_string()])
        .args(["-r", &ROUNDS.to_string(), "-o", "json"])
        .env("LD_LIBRARY_PATH", library_path)
        .output()
        .map_err(|e| format!("could not run {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let tests: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("llama-bench's JSON output did not parse: {e}"))?;
    let find = |prompt: usize, generated: usize| {
        tests
            .iter()
            .find(|t| t["n_prompt"] == prompt && t["n_gen"] == generated)
            .and_then(|t| {
                Some(Rate {
                    mean: t["avg_ts"].as_f64()?,
                    deviation: t["stddev_ts"].as_f64()?,
                })
            })
            .ok_or_else(|| {
                format!("llama-bench printed no test with n_prompt {prompt}, n_gen {generated}")
            })
    };
    Ok([find(PROMPT_TOKENS, 0)?, find(0, DECODE_TOKENS)?])
}

/// `LD_LIBRARY_PATH` with the binary's own folder first: a llama.cpp build keeps its
/// shared libraries beside its binaries.
fn library_path(binary: &Path) -> Result<std::ffi::OsString, String> {
    let own = binary.parent().map(Path::to_path_buf).unwrap_or_default();
    match std::env::var_os("LD_LIBRARY_PATH") {
        Some(existing) => {
            let mut paths = vec![own];
            paths.extend(std::env::split_paths(&existing));
            std::env::join_paths(paths).map_err(|e| e.to_string())
        }
        None => Ok(own.into_os_string()),
    }
}

/// A llama.cpp server on `file` with 4 parallel slots, asked for 1, 2 and 4 completions
/// at once of the prompt the engine's streams get: the aggregate decode rate of each
/// (tokens generated over the longest request's decode time, from the server's own
/// timings), or why it could not be had.
fn llama_server(binary: &Path, file: &Path, threads: usize) -> Result<Vec<f64>, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let slots = STREAMS.iter().copied().max().unwrap_or(1);
    let mut child = Command::new(binary)
        .args(["-m".as_ref(), file.as_os_str()])
        .args(["-t", &threads.to_string(), "-np", &slots.to_string()])
        .args([
            "-c",
            &(slots * 512).to_string(),
            "--port",
            &port.to_string(),
        ])
        .env("LD_LIBRARY_PATH", library_path(binary)?)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("could not run {}: {e}", binary.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let rates = runtime.block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let health = http.get(format!("{base}/health")).send().await;
            if matches!(&health, Ok(response) if response.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the server never became healthy".to_string());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let completion = |seed: usize| {
            let request = http.post(format!("{base}/completion")).json(&serde_json::json!({
                // The engine's prompt: its system prompt and ChatML.
                "prompt": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
                           <|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n\
                           <|im_start|>assistant\n",
                "n_predict": DECODE_TOKENS,
                "temperature": 0.8,
                "seed": seed,
                "cache_prompt": false,
            }));
            async move {
                let answer: serde_json::Value = request
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let timings = &answer["timings"];
                match (timings["predicted_n"].as_f64(), timings["predicted_ms"].as_f64()) {
                    (Some(tokens), Some(ms)) => Ok((tokens, ms)),
                    _ => Err(format!("no timings in the server's answer: {answer}")),
                }
            }
        };
        completion(0).await?; // warm-up
        let mut rates = Vec::new();
        for n in STREAMS {
            let answers = futures::future::join_all((1..=n).map(completion)).await;
            let answers = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
            let tokens: f64 = answers.iter().map(|(tokens, _)| tokens).sum();
            let longest_ms = answers.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
            rates.push(tokens / (longest_ms / 1000.0));
        }
        Ok(rates)
    });
    let _ = child.kill();
    let _ = child.wait();
    rates
}

/// The one-minute load average, where the system reports one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
