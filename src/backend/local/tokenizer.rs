//! Builds a byte-level BPE tokenizer from a GGUF file's own metadata, so a model needs
//! no second file. candle's `TokenizerFromGguf` mishandles the `smollm` pre-tokenizer
//! (it adds a prefix space, which breaks ChatML), hence this builder.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF `token_type` of control tokens (`<|im_start|>` and friends).
const TOKEN_TYPE_CONTROL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata lacks `{0}`")]
    Missing(&'static str),
    #[error("GGUF metadata `{key}` is malformed: {reason}")]
    Malformed { key: &'static str, reason: String },
    #[error("tokenizer model `{0}` is not supported (only byte-level BPE, `gpt2`)")]
    Unsupported(String),
    #[error("building the tokenizer failed: {0}")]
    Build(String),
}

/// The tokenizer and what generation needs to know about its special tokens.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Control tokens: generating any of them ends the turn.
    pub control_ids: Vec<u32>,
}

impl GgufTokenizer {
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let model = string(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(model.to_string()));
        }
        let tokens = string_array(content, "tokenizer.ggml.tokens")?;
        let merges = string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Malformed {
                        key: "tokenizer.ggml.merges",
                        reason: format!("merge `{merge}` is not two symbols"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_types = token_types(content, tokens.len())?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let control_ids: Vec<u32> = token_types
            .iter()
            .enumerate()
            .filter(|(_, kind)| **kind == TOKEN_TYPE_CONTROL)
            .map(|(id, _)| id as u32)
            .collect();
        let specials: Vec<AddedToken> = control_ids
            .iter()
            .map(|&id| AddedToken::from(tokens[id as usize].to_string(), true))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        Ok(Self {
            tokenizer,
            control_ids,
        })
    }
}

fn value<'a>(content: &'a Content, key: &'static str) -> Result<&'a Value, TokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::Missing(key))
}

fn string<'a>(content: &'a Content, key: &'static str) -> Result<&'a str, TokenizerError> {
    value(content, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|e| TokenizerError::Malformed {
            key,
            reason: e.to_string(),
        })
}

fn string_array<'a>(
    content: &'a Content,
    key: &'static str,
) -> Result<Vec<&'a str>, TokenizerError> {
    let malformed = |reason: String| TokenizerError::Malformed { key, reason };
    value(content, key)?
        .to_vec()
        .map_err(|e| malformed(e.to_string()))?
        .iter()
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .map_err(|e| malformed(e.to_string()))
        })
        .collect()
}

fn token_types(content: &Content, expected: usize) -> Result<Vec<i32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let malformed = |reason: String| TokenizerError::Malformed { key: KEY, reason };
    let types = value(content, KEY)?
        .to_vec()
        .map_err(|e| malformed(e.to_string()))?
        .iter()
        .map(|v| v.to_i32().map_err(|e| malformed(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if types.len() != expected {
        return Err(malformed(format!(
            "{} types for {expected} tokens",
            types.len()
        )));
    }
    Ok(types)
}
