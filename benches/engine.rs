//! Local engine throughput: prefill and decode tokens/s for one stream, then the
//! aggregate with every slot busy. Prints a table; `cargo bench --bench engine`.
//!
//! Target (issue 2): at least as fast as candle's own quantized llama on the same Q8_0
//! file, which this bench runs side by side (bare `forward` calls, no sampling, no
//! server) so the ratio holds however busy the machine is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden::backend::local::LocalBackend;
use warden::backend::{collect, Backend};
use warden::chat::{ChatRequest, Generation, Message, Role, Sampling, ToolChoice};
use warden::config::Config;
use warden::model::ModelRef;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

const DECODE_TOKENS: u32 = 128;
const ROUNDS: usize = 3;

fn request(prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "auto".into(),
        messages: vec![Message::text(Role::User, prompt)],
        tools: Vec::new(),
        tool_choice: ToolChoice::Auto,
        sampling: Sampling {
            temperature: 0.8,
            seed: Some(1),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        },
        logprobs: None,
    }
}

/// About 200 prompt tokens once the chat template is applied.
fn long_prompt() -> String {
    "Summarise the following notes about the history of the printing press, its spread across \
     Europe, the economics of early print shops, the guilds that opposed it and the role it \
     played in the Reformation, the scientific revolution and the rise of newspapers. "
        .repeat(3)
}

async fn run(backend: &LocalBackend, request: ChatRequest) -> Generation {
    collect(backend.generate(request).await.unwrap())
        .await
        .unwrap()
}

/// candle's quantized llama driven directly: prefill `prompt_tokens`, then decode.
fn bare_candle(path: &Path, prompt_tokens: usize) -> (f64, f64) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| 1000 + i * 7).collect();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        model.clear_kv_cache();
        let started = Instant::now();
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model.forward(&input, 0).unwrap();
        prefill.push(prompt_tokens as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for step in 0..DECODE_TOKENS as usize - 1 {
            let input = Tensor::new(&[1000u32 + step as u32], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model.forward(&input, prompt_tokens + step).unwrap();
        }
        decode.push(f64::from(DECODE_TOKENS - 1) / started.elapsed().as_secs_f64());
    }
    (median(prefill), median(decode))
}

fn main() {
    let config =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routing/warden.yaml")).unwrap();
    warden::backend::local::use_threads(config.local.threads);
    let model = ModelRef::resolve(&config.local.model, &config.local.models_dir).unwrap();
    let engine = Arc::new(warden::server::load_engine(&model, &config.local).unwrap());
    let ModelRef::Manifest(manifest) = &model else {
        panic!("the bench expects the shipped manifest");
    };
    let model_file = config.local.models_dir.join(
        manifest
            .converted_file()
            .unwrap_or_else(|| manifest.file.clone()),
    );
    let slots = config.local.slots;
    let backend = LocalBackend::loading(model.name(), slots, Duration::from_secs(600));
    backend.set_ready(engine);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    runtime.block_on(async {
        run(&backend, request("Hello", 8)).await; // warm-up

        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        let mut prompt_tokens = 0;
        for _ in 0..ROUNDS {
            let generation = run(&backend, request(&long_prompt(), DECODE_TOKENS)).await;
            let summary = &generation.finished;
            prompt_tokens = summary.usage.prompt_tokens;
            prefill.push(f64::from(summary.usage.prompt_tokens) / (summary.timings.prefill_ms / 1000.0));
            let decoded = f64::from(summary.usage.completion_tokens.saturating_sub(1));
            decode.push(decoded / (summary.timings.decode_ms / 1000.0));
        }

        let started = Instant::now();
        let together = futures::future::join_all(
            (0..slots).map(|_| run(&backend, request("Write a long story about a lighthouse keeper.", DECODE_TOKENS))),
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let generated: u32 = together.iter().map(|g| g.finished.usage.completion_tokens).sum();

        let (warden_prefill, warden_decode) = (median(prefill), median(decode));
        let (candle_prefill, candle_decode) = bare_candle(&model_file, prompt_tokens as usize);
        println!("local engine ({} threads, {slots} slots), tok/s", config.local.threads);
        println!("                                         warden   bare candle   ratio");
        println!(
            "  prefill, single stream ({prompt_tokens}-token prompt): {warden_prefill:>7.1} {candle_prefill:>12.1} {:>7.2}",
            warden_prefill / candle_prefill
        );
        println!(
            "  decode,  single stream ({DECODE_TOKENS} tokens):        {warden_decode:>7.1} {candle_decode:>12.1} {:>7.2}",
            warden_decode / candle_decode
        );
        println!(
            "  decode,  {slots} streams at once (aggregate):     {:>7.1} tok/s ({generated} tokens in {elapsed:.2} s)",
            f64::from(generated) / elapsed
        );
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
