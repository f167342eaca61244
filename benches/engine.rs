//! Local engine throughput beside llama.cpp's: prefill of a 200-token prompt and decode
//! of 128 tokens for one stream, measured as llama.cpp's `llama-bench` measures them
//! (`pp200`, `tg128`: random tokens, bare forward passes, decode from an empty cache),
//! then the aggregate rate of 1, 2 and 4 streams decoding at once through the real
//! scheduler. `cargo bench --bench engine`.
//!
//! With `LLAMA_BENCH=/path/to/llama-bench` in the environment, llama.cpp runs in the same
//! process run on the same GGUF file (the one the engine loads) with the same thread
//! count, and the ratios are printed: figures from one run on one machine state, which
//! is the only comparison a shared, noisy machine allows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use warden::backend::local::llama::kv_cache::KvCache;
use warden::backend::local::llama::{Llama, SequenceInput, Workspace};
use warden::backend::local::LocalBackend;
use warden::backend::{collect, Backend};
use warden::chat::{ChatRequest, Message, Role, Sampling, ToolChoice};
use warden::config::Config;
use warden::model::ModelRef;

const PROMPT_TOKENS: usize = 200;
const DECODE_TOKENS: usize = 128;
/// Repetitions of each single-stream test, as `llama-bench -r 3`.
const ROUNDS: usize = 3;
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
    // The file the engine runs (the manifest's conversion, when it asks for one).
    let file = config.local.models_dir.join(
        manifest
            .converted_file()
            .unwrap_or_else(|| manifest.file.clone()),
    );

    println!(
        "local engine on {} with {threads} threads (load average before: {})",
        file.display(),
        load_average()
    );
    let (prefill, decode) = single_stream(&file);
    let streams = aggregate(&model, &config);
    let llama_cpp = match std::env::var_os("LLAMA_BENCH") {
        Some(binary) => Some(llama_bench(Path::new(&binary), &file, threads)),
        None => None,
    };

    println!();
    println!(
        "{:<34} {:>15} {:>15} {:>8}",
        "tok/s", "warden", "llama.cpp", "ratio"
    );
    let rows = [
        (format!("prefill, {PROMPT_TOKENS}-token prompt"), prefill, 0),
        (format!("decode, {DECODE_TOKENS} tokens"), decode, 1),
    ];
    for (name, ours, index) in rows {
        match &llama_cpp {
            Some(Ok(theirs)) => println!(
                "{name:<34} {:>15} {:>15} {:>7.2}x",
                ours.to_string(),
                theirs[index].to_string(),
                ours.mean / theirs[index].mean
            ),
            _ => println!("{name:<34} {:>15}", ours.to_string()),
        }
    }
    match &llama_cpp {
        None => println!(
            "llama.cpp: not run; set LLAMA_BENCH to a llama-bench binary to compare on the same file"
        ),
        Some(Err(why)) => println!("llama.cpp: {why}"),
        Some(Ok(_)) => {}
    }
    println!();
    println!(
        "streams decoding at once through the scheduler (up to {DECODE_TOKENS} tokens each, sampled):"
    );
    let single = streams[0].1;
    for (count, rate) in &streams {
        println!(
            "  {count} stream{}: {rate:>7.1} tok/s aggregate decode, {:.2}x one stream",
            if *count == 1 { " " } else { "s" },
            rate / single
        );
    }
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
    // One warm-up round, as llama-bench does, then the measured ones.
    for round in 0..=ROUNDS {
        let prompt: Vec<u32> = (0..PROMPT_TOKENS).map(|_| random_token()).collect();
        let table = cache.allocate(PROMPT_TOKENS).unwrap();
        let started = Instant::now();
        let input = SequenceInput {
            tokens: &prompt,
            position: 0,
            table: &table,
            logits: true,
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
                logits: true,
            };
            let logits = model.forward(&[input], &mut cache, &mut work).unwrap();
            token = argmax(logits);
        }
        let decode_rate = DECODE_TOKENS as f64 / started.elapsed().as_secs_f64();
        cache.release(table);
        if round > 0 {
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
/// local backend (continuous batching), for each `n` in `STREAMS`.
fn aggregate(model: &ModelRef, config: &Config) -> Vec<(usize, f64)> {
    let engine = Arc::new(warden::server::load_engine(model, &config.local).unwrap());
    let slots = STREAMS.iter().copied().max().unwrap_or(1);
    let backend = LocalBackend::loading(model.name(), slots, Duration::from_secs(600));
    backend.set_ready(engine);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        generate(&backend, 1, 8).await; // warm-up
        let mut rates = Vec::new();
        for n in STREAMS {
            let started = Instant::now();
            let streams = generate(&backend, n, DECODE_TOKENS as u32).await;
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
            rates.push((n, f64::from(decoded) / (elapsed - last_first_token)));
        }
        rates
    })
}

/// Runs `n` story requests at once; returns each one's generated tokens and the
/// milliseconds to its first token.
async fn generate(backend: &LocalBackend, n: usize, max_tokens: u32) -> Vec<(u32, f64)> {
    let requests = (0..n).map(|stream| {
        let request = ChatRequest {
            model: "auto".into(),
            messages: vec![Message::text(
                Role::User,
                "Write a long story about a lighthouse keeper.",
            )],
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            // Sampled rather than greedy, so that the streams differ and run long.
            sampling: Sampling {
                temperature: 0.8,
                seed: Some(stream as u64 + 1),
                max_tokens: Some(max_tokens),
                ..Sampling::default()
            },
            logprobs: None,
        };
        async move {
            let generation = collect(backend.generate(request).await.unwrap())
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
    // A llama.cpp build keeps its shared libraries beside its binaries.
    let library_path = binary.parent().map(Path::to_path_buf).unwrap_or_default();
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(existing) => {
            let mut paths = vec![library_path];
            paths.extend(std::env::split_paths(&existing));
            std::env::join_paths(paths).map_err(|e| e.to_string())?
        }
        None => library_path.into_os_string(),
    };
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

/// The one-minute load average, where the system reports one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
