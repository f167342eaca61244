//! The local engine: a quantized llama loaded once from GGUF, and the generation loop
//! that one slot (a clone of the weights with its own KV cache) runs on a blocking
//! thread.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use tokenizers::Tokenizer;

use super::output::OutputGate;
use super::sampler::Sampler;
use super::template::{ChatTemplate, RenderedPrompt};
use super::token_text::{TokenBytes, Utf8Stream};
use super::tokenizer::GgufTokenizer;
use super::tool_parse;
use crate::backend::BackendError;
use crate::chat::{
    ChatRequest, Confidence, FinishReason, GenerationEvent, GenerationSummary, Timings,
    TokenLogprob, TopLogprob, Usage,
};

/// Prompt tokens fed per forward pass: bounds the attention scratch memory of long
/// prompts without slowing short ones.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_name: String,
    pub template: ChatTemplate,
    /// From the manifest; the GGUF's own figure when absent.
    pub context_length: Option<usize>,
    pub default_max_tokens: u32,
    pub device: Device,
}

pub struct Engine {
    pub model_name: String,
    weights: ModelWeights,
    tokenizer: Tokenizer,
    token_bytes: TokenBytes,
    control_ids: HashSet<u32>,
    template: ChatTemplate,
    context_length: usize,
    default_max_tokens: u32,
    device: Device,
}

/// A request made ready for a slot: its tokens and the limits that apply.
pub struct PreparedPrompt {
    pub tokens: Vec<u32>,
    pub answer_prefix: String,
    pub max_tokens: usize,
}

impl Engine {
    pub fn load(path: &Path, options: EngineOptions) -> Result<Self, BackendError> {
        let fail =
            |message: String| BackendError::Unavailable(format!("{}: {message}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| fail(e.to_string()))?;
        let GgufTokenizer {
            tokenizer,
            control_ids,
        } = GgufTokenizer::from_gguf(&content).map_err(|e| fail(e.to_string()))?;
        let control: HashSet<u32> = control_ids.into_iter().collect();
        let vocab = content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| fail("no token list".into()))?;
        let token_bytes = TokenBytes::new(
            vocab
                .iter()
                .map(|v| v.to_string().map_or("", String::as_str)),
            |id| control.contains(&(id as u32)),
        );
        let gguf_context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|n| n as usize);
        // candle's rotary tables end at MAX_SEQ_LEN whatever the model was trained for.
        let context_length = options
            .context_length
            .or(gguf_context)
            .unwrap_or(MAX_SEQ_LEN)
            .min(MAX_SEQ_LEN);
        let weights = ModelWeights::from_gguf(content, &mut file, &options.device)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            model_name: options.model_name,
            weights,
            tokenizer,
            token_bytes,
            control_ids: control,
            template: options.template,
            context_length,
            default_max_tokens: options.default_max_tokens,
            device: options.device,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// A fresh slot: the clone shares the weights and starts with an empty KV cache.
    pub fn new_slot(&self) -> ModelWeights {
        let mut weights = self.weights.clone();
        weights.clear_kv_cache();
        weights
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, BackendError> {
        self.tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| BackendError::Generation(format!("tokenization failed: {e}")))
    }

    pub fn prepare(&self, request: &ChatRequest) -> Result<PreparedPrompt, BackendError> {
        let RenderedPrompt {
            text,
            answer_prefix,
        } = self.template.render(request);
        let tokens = self.tokenize(&text)?;
        // At least one token must fit after the prompt.
        if tokens.len() >= self.context_length {
            return Err(BackendError::ContextLengthExceeded {
                prompt_tokens: tokens.len(),
                context_length: self.context_length,
            });
        }
        let room = self.context_length - tokens.len();
        let asked = request
            .sampling
            .max_tokens
            .unwrap_or(self.default_max_tokens) as usize;
        if asked > self.context_length {
            return Err(BackendError::MaxTokensExceeded {
                max_tokens: asked,
                context_length: self.context_length,
            });
        }
        Ok(PreparedPrompt {
            tokens,
            answer_prefix,
            max_tokens: asked.min(room),
        })
    }

    /// Runs one generation to its end, handing each event to `emit`. Stops early, with
    /// no error, as soon as `emit` reports that nobody is listening any more.
    pub fn generate(
        &self,
        weights: &mut ModelWeights,
        request: &ChatRequest,
        prompt: PreparedPrompt,
        arrived: Instant,
        queue_ms: f64,
        emit: &mut dyn FnMut(GenerationEvent) -> bool,
    ) -> Result<(), BackendError> {
        let failed = |e: candle_core::Error| BackendError::Generation(e.to_string());
        weights.clear_kv_cache();
        let prefill_started = Instant::now();
        let mut logits = self.prefill(weights, &prompt.tokens).map_err(failed)?;
        let prefill_ms = ms_since(prefill_started);
        let decode_started = Instant::now();

        let tools = request.callable_tools();
        let mut sampler = Sampler::new(
            &request.sampling,
            usize::from(request.logprobs.unwrap_or(0)),
        );
        let mut gate = OutputGate::new(
            request.sampling.stop.clone(),
            !tools.is_empty(),
            &prompt.answer_prefix,
        );
        let mut utf8 = Utf8Stream::default();
        let mut pending_logprobs: Vec<TokenLogprob> = Vec::new();
        let mut sampled_logprobs: Vec<f32> = Vec::new();
        let mut first_token_ms = None;
        let mut finish_reason = FinishReason::Length;
        let mut position = prompt.tokens.len();

        while sampled_logprobs.len() < prompt.max_tokens {
            let sampled = sampler.sample(&logits);
            first_token_ms.get_or_insert_with(|| ms_since(arrived));
            if self.control_ids.contains(&sampled.token) {
                finish_reason = FinishReason::Stop;
                break;
            }
            sampled_logprobs.push(sampled.logprob);
            if request.logprobs.is_some() {
                pending_logprobs.push(self.token_logprob(
                    sampled.token,
                    sampled.logprob,
                    &sampled.top,
                ));
            }
            let released = gate.push(&utf8.push(self.token_bytes.get(sampled.token)));
            if !released.is_empty()
                && !emit(GenerationEvent::Content {
                    text: released,
                    logprobs: std::mem::take(&mut pending_logprobs),
                })
            {
                return Ok(());
            }
            if gate.stopped() {
                finish_reason = FinishReason::Stop;
                break;
            }
            if sampled_logprobs.len() == prompt.max_tokens {
                break;
            }
            logits = self
                .forward(weights, &[sampled.token], position)
                .map_err(failed)?;
            position += 1;
        }

        let tail = gate.push(&utf8.finish());
        let (_, held) = gate.finish();
        let parsed = tool_parse::parse(&held, tools);
        if parsed.malformed {
            tracing::debug!(output = %held, "withheld a malformed tool call");
        }
        let text = format!("{tail}{}", parsed.content);
        if (!text.is_empty() || !pending_logprobs.is_empty())
            && !emit(GenerationEvent::Content {
                text,
                logprobs: pending_logprobs,
            })
        {
            return Ok(());
        }
        if !parsed.tool_calls.is_empty() {
            finish_reason = FinishReason::ToolCalls;
        }
        emit(GenerationEvent::Finished(Box::new(GenerationSummary {
            backend: super::BACKEND_NAME.to_string(),
            model: self.model_name.clone(),
            finish_reason,
            tool_calls: parsed.tool_calls,
            malformed_tool_call: parsed.malformed,
            usage: Usage {
                prompt_tokens: prompt.tokens.len() as u32,
                completion_tokens: sampled_logprobs.len() as u32,
                cached_prompt_tokens: 0,
            },
            confidence: Confidence::from_logprobs(sampled_logprobs),
            timings: Timings {
                queue_ms,
                prefill_ms,
                decode_ms: ms_since(decode_started),
                first_token_ms: first_token_ms.unwrap_or_else(|| ms_since(arrived)),
            },
        })));
        Ok(())
    }

    fn prefill(&self, weights: &mut ModelWeights, tokens: &[u32]) -> candle_core::Result<Vec<f32>> {
        let mut logits = Vec::new();
        for (index, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            logits = self.forward(weights, chunk, index * PREFILL_CHUNK)?;
        }
        Ok(logits)
    }

    fn forward(
        &self,
        weights: &mut ModelWeights,
        tokens: &[u32],
        position: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        weights
            .forward(&input, position)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()
    }

    fn token_logprob(&self, token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
        let bytes = self.token_bytes.get(token).to_vec();
        TokenLogprob {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob,
            bytes,
            top_logprobs: top
                .iter()
                .map(|&(id, logprob)| {
                    let bytes = self.token_bytes.get(id).to_vec();
                    TopLogprob {
                        token: String::from_utf8_lossy(&bytes).into_owned(),
                        logprob,
                        bytes,
                    }
                })
                .collect(),
        }
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
