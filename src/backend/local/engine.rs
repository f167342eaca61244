//! The local engine's immutable half: a llama model loaded once from GGUF, its
//! tokenizer and chat template, and the turn of a request into prompt tokens. It is
//! shared by every scheduler (each with its own key/value cache) serving the model.

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use tokenizers::Tokenizer;

use super::constraint::{Constraint, Grammars};
use super::network::{Network, Runner};
use super::template::ChatTemplate;
use super::token_text::TokenBytes;
use super::tokenizer::GgufTokenizer;
use crate::backend::BackendError;
use crate::chat::{ChatRequest, EmbeddingInput, SamplingDefaults, TokenLogprob, TopLogprob};

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_name: String,
    pub template: ChatTemplate,
    /// From the manifest; the GGUF's own figure when absent. Capped at the GGUF's.
    pub context_length: Option<usize>,
    pub default_max_tokens: u32,
    /// What the model's authors recommend drawing with (its manifest's `sampling`).
    pub sampling_defaults: SamplingDefaults,
    pub device: Device,
    /// Which forward pass runs the model (`Runner::for_device` unless a test says).
    pub runner: Runner,
}

pub struct Engine {
    pub model_name: String,
    model: Network,
    tokenizer: Tokenizer,
    token_bytes: TokenBytes,
    control_ids: HashSet<u32>,
    grammars: Grammars,
    template: ChatTemplate,
    context_length: usize,
    default_max_tokens: u32,
    sampling_defaults: SamplingDefaults,
}

/// A request made ready for the scheduler: its tokens, the limits that apply, and the
/// grammar its answer must follow, if any.
pub struct PreparedPrompt {
    pub tokens: Vec<u32>,
    pub max_tokens: usize,
    pub constraint: Option<Constraint>,
    /// The model's, for what the request leaves to it.
    pub sampling_defaults: SamplingDefaults,
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
        let model =
            Network::load(options.runner, content, &mut file, &options.device).map_err(fail)?;
        let end_of_turn = tokenizer
            .token_to_id(options.template.end_of_turn())
            .ok_or_else(|| fail(format!("no `{}` token", options.template.end_of_turn())))?;
        let grammars = Grammars::new(
            model.config().vocab,
            |id| token_bytes.get(id).to_vec(),
            |id| control.contains(&id),
            end_of_turn,
            {
                let tokenizer = tokenizer.clone();
                move |bytes| {
                    token_ids(&tokenizer, String::from_utf8_lossy(bytes).as_ref())
                        .unwrap_or_default()
                }
            },
        )
        .map_err(|e| fail(format!("the grammar engine: {e}")))?;
        let trained = model.context_length();
        let context_length = options.context_length.unwrap_or(trained).min(trained);
        Ok(Self {
            model_name: options.model_name,
            model,
            tokenizer,
            token_bytes,
            control_ids: control,
            grammars,
            template: options.template,
            context_length,
            default_max_tokens: options.default_max_tokens,
            sampling_defaults: options.sampling_defaults,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn network(&self) -> &Network {
        &self.model
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, BackendError> {
        token_ids(&self.tokenizer, text)
            .map_err(|e| BackendError::Generation(format!("tokenization failed: {e}")))
    }

    /// Renders and tokenizes `request`, checks it against `context_length` positions
    /// (the model's, or fewer when the key/value cache budget holds fewer) and compiles
    /// the grammar its answer must follow. Tokenising a long text and compiling a large
    /// schema take a while: call it off the async workers.
    pub fn prepare(
        &self,
        request: &ChatRequest,
        context_length: usize,
    ) -> Result<PreparedPrompt, BackendError> {
        let context_length = context_length.min(self.context_length);
        let text = self.template.render(request);
        // No token stands for more than the longest token's bytes, so a text that long
        // needs at least this many: a prompt sure not to fit is refused by its length,
        // before seconds of tokenising a 4 MB body.
        let fewest_tokens = text.len().div_ceil(self.token_bytes.longest());
        if fewest_tokens >= context_length {
            return Err(BackendError::ContextLengthExceeded {
                prompt_tokens: fewest_tokens,
                context_length,
            });
        }
        let tokens = self.tokenize(&text)?;
        // At least one token must fit after the prompt.
        if tokens.len() >= context_length {
            return Err(BackendError::ContextLengthExceeded {
                prompt_tokens: tokens.len(),
                context_length,
            });
        }
        let room = context_length - tokens.len();
        let asked = request
            .sampling
            .max_tokens
            .unwrap_or(self.default_max_tokens) as usize;
        if asked > context_length {
            return Err(BackendError::MaxTokensExceeded {
                max_tokens: asked,
                context_length,
                field: request.sampling.max_tokens_field,
            });
        }
        let constraint = self.grammars.for_request(request)?;
        Ok(PreparedPrompt {
            tokens,
            max_tokens: asked.min(room),
            constraint,
            sampling_defaults: self.sampling_defaults,
        })
    }

    /// The tokens of each text to embed, as written (no template: the text is what
    /// is embedded), checked against the vocabulary and `context_length` positions.
    /// Tokenising takes a while: call it off the async workers, as `prepare`.
    pub fn embedding_tokens(
        &self,
        inputs: &[EmbeddingInput],
        context_length: usize,
    ) -> Result<Vec<Vec<u32>>, BackendError> {
        let context_length = context_length.min(self.context_length);
        let vocab = self.model.config().vocab;
        let too_long = |index: usize, tokens: usize| BackendError::InvalidInput {
            field: format!("input[{index}]"),
            message: format!(
                "input {index} is {tokens} tokens but the model's context holds {context_length}"
            ),
        };
        let mut all = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            let tokens = match input {
                EmbeddingInput::Text(text) => {
                    // As in `prepare`: refused by its length before it is tokenised.
                    let fewest_tokens = text.len().div_ceil(self.token_bytes.longest());
                    if fewest_tokens > context_length {
                        return Err(too_long(index, fewest_tokens));
                    }
                    self.tokenize(text)?
                }
                EmbeddingInput::Tokens(ids) => {
                    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(BackendError::InvalidInput {
                            field: format!("input[{index}]"),
                            message: format!(
                                "token {id} is outside the model's vocabulary of {vocab}"
                            ),
                        });
                    }
                    ids.clone()
                }
            };
            if tokens.len() > context_length {
                return Err(too_long(index, tokens.len()));
            }
            if tokens.is_empty() {
                return Err(BackendError::InvalidInput {
                    field: format!("input[{index}]"),
                    message: format!("input {index} holds no token"),
                });
            }
            all.push(tokens);
        }
        Ok(all)
    }

    /// Control tokens end the turn.
    pub fn is_control(&self, token: u32) -> bool {
        self.control_ids.contains(&token)
    }

    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.token_bytes.get(token)
    }

    pub fn token_logprob(&self, token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
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

/// `text` as the model's token ids, special tokens read as such.
fn token_ids(tokenizer: &Tokenizer, text: &str) -> tokenizers::Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|encoding| encoding.get_ids().to_vec())
}
