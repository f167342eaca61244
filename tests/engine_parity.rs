//! warden's own forward pass against candle's `quantized_llama` on the same GGUF file,
//! over 20 prompts of 16 greedy tokens each, and batched against unbatched.
//!
//! Two references, both candle's `quantized_llama` on the file the engine serves:
//! - **f32**: its matrices dequantized to f32 (`CANDLE_DEQUANTIZE_ALL`), which is the
//!   arithmetic warden's kernels do (the file's exact weights times f32 activations).
//!   Tokens must be identical at every step, logits within `MAX_KL` / `MAX_ABS_LOGIT`.
//! - **quantized** (candle's default): it rounds activations to 8 bits before each
//!   product, so its logits sit up to ~2 away from f32 and jump on float noise (its own
//!   prompt-at-once and token-by-token runs of one prompt differ by up to 0.4). Exact
//!   token equality with it is ill-posed where its top choices are that close. The
//!   criterion: tokens identical up to the first step where they differ, and there
//!   candle's preference for its token over warden's (the gap between their logits in
//!   candle's own output) must be smaller than twice candle's measured deviation from
//!   the f32 reference at that step: candle's rounding alone could swap the two.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use warden::backend::local::llama::kv_cache::KvCache;
use warden::backend::local::llama::{Llama, Output, SequenceInput, Workspace};
use warden::backend::local::network::Network;
use warden::backend::local::Engine;
use warden::chat::{ChatRequest, Message, Role, Sampling, ToolChoice};
use warden::model::{ensure_available, FetchOptions, ModelRef};

/// Greedy tokens compared per prompt.
const GENERATED: usize = 16;

/// Tolerance against the f32 reference, at every step of every prompt: the KL
/// divergence of the next-token distributions (nats) and the largest absolute logit
/// difference. Only summation order separates the two, so the bounds are tight.
const MAX_KL: f64 = 1e-5;
const MAX_ABS_LOGIT: f32 = 0.02;

const PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "List the planets of the solar system.",
    "What does a compiler do?",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet turtle.",
    "Describe a cat in five words.",
    "What is the largest ocean on Earth?",
    "How many legs does a spider have?",
    "Write one sentence about autumn.",
    "What is the square root of 81?",
    "Name a famous painter.",
    "What do bees make?",
];

/// candle reads `CANDLE_DEQUANTIZE_ALL` once per thread, when it first builds a
/// quantized matrix: loads happen on a fresh thread, one at a time, so the f32
/// reference's setting never reaches another load.
static CANDLE_LOADS: Mutex<()> = Mutex::new(());

fn candle_model(dequantized: bool) -> ModelWeights {
    let _one_at_a_time = CANDLE_LOADS.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if dequantized {
                    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
                }
                let mut file = std::fs::File::open(served_file()).unwrap();
                let content = gguf_file::Content::read(&mut file).unwrap();
                let model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu);
                std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
                model.unwrap()
            })
            .join()
            .unwrap()
    })
}

/// The file the engine serves (the manifest's, converted as it asks).
fn served_file() -> PathBuf {
    let config = common::TestServer::builder().config();
    let ModelRef::Manifest(manifest) =
        ModelRef::resolve(&config.local.model, &config.local.models_dir).unwrap()
    else {
        panic!("the test model is a manifest");
    };
    ensure_available(
        &manifest,
        &FetchOptions::new(config.local.models_dir.clone()),
    )
    .unwrap()
}

fn prompt_tokens(engine: &Engine, question: &str) -> Vec<u32> {
    let request = ChatRequest {
        model: "auto".into(),
        messages: vec![Message::text(Role::User, question)],
        tools: Vec::new(),
        tool_choice: ToolChoice::Auto,
        sampling: Sampling::default(),
        logprobs: None,
        response_format: Default::default(),
        raw_prompt: false,
        choices: 1,
        parallel_tool_calls: None,
    };
    engine.prepare(&request, usize::MAX).unwrap().tokens
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(index, _)| index as u32)
        .unwrap()
}

/// Tokens and the logits before each: greedy, or `forced` tokens when given.
struct Run {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Runs `prompt` then `GENERATED` tokens through `forward(tokens, position)`: greedy, or
/// the `forced` tokens when given.
fn run(
    mut forward: impl FnMut(&[u32], usize) -> Vec<f32>,
    prompt: &[u32],
    forced: Option<&[u32]>,
) -> Run {
    let mut run = Run {
        tokens: Vec::new(),
        logits: vec![forward(prompt, 0)],
    };
    for step in 0..GENERATED {
        let token = forced.map_or_else(|| argmax(&run.logits[step]), |f| f[step]);
        run.tokens.push(token);
        if step + 1 < GENERATED {
            let next = forward(&[token], prompt.len() + step);
            run.logits.push(next);
        }
    }
    run
}

fn candle_run(model: &mut ModelWeights, prompt: &[u32], forced: Option<&[u32]>) -> Run {
    model.clear_kv_cache();
    let forward = |tokens: &[u32], position: usize| -> Vec<f32> {
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model
            .forward(&input, position)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    run(forward, prompt, forced)
}

/// warden's own pass, which the engine runs on the CPU.
fn llama(engine: &Engine) -> &Llama {
    match engine.network() {
        Network::Own(model) => model,
        Network::Candle { .. } => panic!("the test engine runs on the CPU"),
    }
}

fn our_run(engine: &Engine, prompt: &[u32]) -> Run {
    let config = llama(engine).config();
    let length = prompt.len() + GENERATED;
    let mut cache = KvCache::with_budget(config, KvCache::bytes_per_token(config) * (length + 64));
    let table = cache.allocate(length).unwrap();
    let mut work = Workspace::default();
    let forward = |tokens: &[u32], position: usize| -> Vec<f32> {
        let input = SequenceInput {
            tokens,
            position,
            table: &table,
            output: Output::Logits,
        };
        llama(engine)
            .forward(&[input], &mut cache, &mut work)
            .unwrap()
            .logits
            .to_vec()
    };
    run(forward, prompt, None)
}

/// One prompt run through warden (greedy) and both references.
struct Comparison {
    question: &'static str,
    ours: Run,
    /// The f32 reference, fed warden's tokens.
    exact: Run,
    /// candle's default path, greedy.
    quantized: Run,
}

/// The runs every test below reads, computed once (they are the slow part).
fn comparisons() -> &'static [Comparison] {
    static RUNS: OnceLock<Vec<Comparison>> = OnceLock::new();
    RUNS.get_or_init(|| {
        let engine = common::engine();
        let mut exact = candle_model(true);
        let mut quantized = candle_model(false);
        PROMPTS
            .iter()
            .map(|&question| {
                let prompt = prompt_tokens(&engine, question);
                let ours = our_run(&engine, &prompt);
                Comparison {
                    question,
                    exact: candle_run(&mut exact, &prompt, Some(&ours.tokens)),
                    quantized: candle_run(&mut quantized, &prompt, None),
                    ours,
                }
            })
            .collect()
    })
}

fn engine_text(engine: &Engine, tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|&t| String::from_utf8_lossy(engine.token_bytes(t)).into_owned())
        .collect()
}

/// KL(p || q) of the softmaxes of two logit vectors, in nats.
fn kl_divergence(reference: &[f32], ours: &[f32]) -> f64 {
    let log_softmax = |logits: &[f32]| -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
    };
    let (p, q) = (log_softmax(reference), log_softmax(ours));
    p.iter().zip(&q).map(|(p, q)| p.exp() * (p - q)).sum()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn greedy_tokens_equal_the_f32_reference_on_20_prompts() {
    let engine = common::engine();
    for c in comparisons() {
        let reference: Vec<u32> = c.exact.logits.iter().map(|l| argmax(l)).collect();
        assert_eq!(
            c.ours.tokens,
            reference,
            "{}\n  ours: {:?}\n  f32:  {:?}",
            c.question,
            engine_text(&engine, &c.ours.tokens),
            engine_text(&engine, &reference)
        );
    }
}

#[test]
fn greedy_tokens_follow_candles_quantized_llama_until_its_own_noise_decides() {
    let engine = common::engine();
    let mut identical = 0;
    for c in comparisons() {
        let Some(step) = (0..GENERATED).find(|&s| c.ours.tokens[s] != c.quantized.tokens[s]) else {
            identical += 1;
            continue;
        };
        // Up to `step` both read the same tokens, so the f32 reference's logits there
        // are the ones candle's rounding departs from.
        let candle = &c.quantized.logits[step];
        let noise = max_abs(candle, &c.exact.logits[step]);
        let preference =
            candle[c.quantized.tokens[step] as usize] - candle[c.ours.tokens[step] as usize];
        let context = format!(
            "{} diverges at step {step}: ours {:?}, candle {:?}",
            c.question,
            engine_text(&engine, &c.ours.tokens),
            engine_text(&engine, &c.quantized.tokens)
        );
        assert!(
            preference < 2.0 * noise,
            "{context}; candle prefers its token by {preference}, beyond its noise {noise}"
        );
        eprintln!(
            "{context}: candle prefers its token by {preference:.3} < 2 x its deviation from f32 {noise:.3}"
        );
    }
    eprintln!(
        "{identical} of {} prompts identical to candle's quantized path",
        PROMPTS.len()
    );
}

#[test]
fn logits_stay_within_tolerance_of_the_f32_reference() {
    let (mut ours_kl, mut ours_abs, mut candle_kl, mut candle_abs) = (0f64, 0f32, 0f64, 0f32);
    for c in comparisons() {
        for (ours, exact) in c.ours.logits.iter().zip(&c.exact.logits) {
            ours_kl = ours_kl.max(kl_divergence(exact, ours));
            ours_abs = ours_abs.max(max_abs(exact, ours));
        }
        // candle's own greedy path, compared where it still reads warden's tokens.
        let shared = (0..GENERATED)
            .find(|&s| c.ours.tokens[s] != c.quantized.tokens[s])
            .map_or(GENERATED, |s| s + 1);
        for (quantized, exact) in c.quantized.logits.iter().zip(&c.exact.logits).take(shared) {
            candle_kl = candle_kl.max(kl_divergence(exact, quantized));
            candle_abs = candle_abs.max(max_abs(exact, quantized));
        }
    }
    eprintln!(
        "against f32, worst step of 20 prompts: warden KL {ours_kl:.2e} max|Δlogit| {ours_abs:.2e}; \
         candle's 8-bit-activation path KL {candle_kl:.2e} max|Δlogit| {candle_abs:.2e}"
    );
    assert!(ours_kl < MAX_KL, "KL {ours_kl}");
    assert!(
        ours_abs < MAX_ABS_LOGIT,
        "max abs logit difference {ours_abs}"
    );
}

/// Sequences join one step apart and stop after different numbers of tokens; each
/// step is one forward pass over everyone still running (prompts read in one go,
/// next to others' single decode tokens).
#[test]
fn batched_and_unbatched_runs_give_the_same_tokens_and_logits() {
    let engine = common::engine();
    let config = llama(&engine).config();
    let prompts: Vec<Vec<u32>> = PROMPTS[..6]
        .iter()
        .map(|q| prompt_tokens(&engine, q))
        .collect();
    let lengths = [GENERATED, 5, 13, 1, GENERATED, 9];
    let alone: Vec<Run> = prompts.iter().map(|p| our_run(&engine, p)).collect();

    let mut cache = KvCache::with_budget(config, KvCache::bytes_per_token(config) * 4096);
    let tables: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| cache.allocate(p.len() + GENERATED).unwrap())
        .collect();
    let mut work = Workspace::default();
    // Per sequence: tokens fed so far (prompt, then generated) and the logits seen.
    let mut fed: Vec<usize> = vec![0; prompts.len()];
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut seen: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for step in 0.. {
        let active: Vec<usize> = (0..prompts.len())
            .filter(|&s| s <= step && generated[s].len() < lengths[s])
            .collect();
        if active.is_empty() && step >= prompts.len() {
            break;
        }
        let pending: Vec<Vec<u32>> = active
            .iter()
            .map(|&s| {
                let all: Vec<u32> = prompts[s].iter().chain(&generated[s]).copied().collect();
                all[fed[s]..].to_vec()
            })
            .collect();
        let inputs: Vec<SequenceInput> = active
            .iter()
            .zip(&pending)
            .map(|(&s, tokens)| SequenceInput {
                tokens,
                position: fed[s],
                table: &tables[s],
                output: Output::Logits,
            })
            .collect();
        if inputs.is_empty() {
            continue;
        }
        let logits = llama(&engine)
            .forward(&inputs, &mut cache, &mut work)
            .unwrap()
            .logits
            .to_vec();
        for ((&s, tokens), logits) in active
            .iter()
            .zip(&pending)
            .zip(logits.chunks_exact(config.vocab))
        {
            fed[s] += tokens.len();
            seen[s].push(logits.to_vec());
            generated[s].push(argmax(logits));
        }
    }
    for (s, alone) in alone.iter().enumerate() {
        assert_eq!(generated[s], alone.tokens[..lengths[s]], "sequence {s}");
        for (step, logits) in seen[s].iter().enumerate() {
            assert!(
                logits == &alone.logits[step],
                "sequence {s}, step {step}: logits differ"
            );
        }
    }
}
