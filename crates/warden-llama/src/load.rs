//! Reading a llama model out of a GGUF file: the hyperparameters from its metadata,
//! then every tensor, repacked once for the kernels.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::Device;

use crate::matmul::PackedMatrix;
use crate::ops::RopeTable;
use crate::{Layer, Llama, LlamaConfig};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("metadata `{key}`: {message}")]
    Metadata { key: String, message: String },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Shape(String),
}

impl LoadError {
    pub(super) fn tensor(name: &str, error: impl std::fmt::Display) -> Self {
        LoadError::Tensor {
            name: name.to_string(),
            message: error.to_string(),
        }
    }
}

impl LlamaConfig {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, LoadError> {
        let value = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| LoadError::Metadata {
                    key: key.to_string(),
                    message: "missing".into(),
                })
        };
        let bad = |key: &str, e: candle_core::Error| LoadError::Metadata {
            key: key.to_string(),
            message: e.to_string(),
        };
        let count = |key: &str| {
            value(key).and_then(|v| v.to_u32().map(|n| n as usize).map_err(|e| bad(key, e)))
        };
        let architecture = value("general.architecture")?
            .to_string()
            .map_err(|e| bad("general.architecture", e))?;
        if architecture != "llama" {
            return Err(LoadError::Format(format!(
                "architecture `{architecture}` is not llama"
            )));
        }
        let hidden = count("llama.embedding_length")?;
        let heads = count("llama.attention.head_count")?;
        let head_dim = hidden / heads.max(1);
        let rope_dim = count("llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(LoadError::Format(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim} dimensions) are not supported"
            )));
        }
        let kv_heads = count("llama.attention.head_count_kv").unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(LoadError::Format(format!(
                "{heads} query heads over {kv_heads} key/value heads of {head_dim} dimensions"
            )));
        }
        let eps_key = "llama.attention.layer_norm_rms_epsilon";
        let rope_key = "llama.rope.freq_base";
        Ok(LlamaConfig {
            layers: count("llama.block_count")?,
            hidden,
            ffn: count("llama.feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            eps: value(eps_key)?.to_f32().map_err(|e| bad(eps_key, e))?,
            // ggml's default when a file does not say.
            rope_base: match content.metadata.get(rope_key) {
                Some(v) => v.to_f32().map_err(|e| bad(rope_key, e))?,
                None => 10_000.0,
            },
            context_length: count("llama.context_length")?,
            vocab: 0,
        })
    }
}

impl Llama {
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self, LoadError> {
        let mut config = LlamaConfig::from_gguf(content)?;
        let mut tensor = |name: &str| -> Result<QTensor, LoadError> {
            content
                .tensor(reader, name, &Device::Cpu)
                .map_err(|e| LoadError::tensor(name, e))
        };
        let vector = |t: QTensor, name: &str| -> Result<Vec<f32>, LoadError> {
            t.dequantize(&Device::Cpu)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| LoadError::tensor(name, e))
        };
        let embedding = PackedMatrix::stack("token_embd.weight", &[&tensor("token_embd.weight")?])?;
        config.vocab = embedding.rows();
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(PackedMatrix::stack(
                "output.weight",
                &[&tensor("output.weight")?],
            )?)
        } else {
            None
        };
        let norm = vector(tensor("output_norm.weight")?, "output_norm.weight")?;
        let mut layers = Vec::with_capacity(config.layers);
        for index in 0..config.layers {
            let mut named = |suffix: &str| {
                let name = format!("blk.{index}.{suffix}.weight");
                tensor(&name).map(|t| (name, t))
            };
            let (q, k, v) = (named("attn_q")?, named("attn_k")?, named("attn_v")?);
            let (gate, up) = (named("ffn_gate")?, named("ffn_up")?);
            let (output_name, output) = named("attn_output")?;
            let (down_name, down) = named("ffn_down")?;
            let (attn_norm_name, attn_norm) = named("attn_norm")?;
            let (ffn_norm_name, ffn_norm) = named("ffn_norm")?;
            layers.push(Layer {
                attn_norm: vector(attn_norm, &attn_norm_name)?,
                qkv: PackedMatrix::stack(&q.0, &[&q.1, &k.1, &v.1])?,
                output: PackedMatrix::stack(&output_name, &[&output])?,
                ffn_norm: vector(ffn_norm, &ffn_norm_name)?,
                gate_up: PackedMatrix::stack(&gate.0, &[&gate.1, &up.1])?,
                down: PackedMatrix::stack(&down_name, &[&down])?,
            });
        }
        let model = Llama {
            rope: RopeTable::new(config.head_dim, config.rope_base, config.context_length),
            config,
            embedding,
            layers,
            norm,
            output,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// Every matrix has the shape the metadata promises, so a forward pass cannot index
    /// out of bounds whatever the file says.
    fn check_shapes(&self) -> Result<(), LoadError> {
        let c = &self.config;
        let qkv = (c.heads + 2 * c.kv_heads) * c.head_dim;
        let expect = |name: &str, m: &PackedMatrix, rows: usize, cols: usize| {
            if m.rows() == rows && m.cols() == cols {
                Ok(())
            } else {
                Err(LoadError::Shape(format!(
                    "{name} is {}x{}, the metadata implies {rows}x{cols}",
                    m.rows(),
                    m.cols()
                )))
            }
        };
        expect("token_embd", &self.embedding, c.vocab, c.hidden)?;
        if let Some(output) = &self.output {
            expect("output", output, c.vocab, c.hidden)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            expect(&format!("blk.{i} attention qkv"), &layer.qkv, qkv, c.hidden)?;
            expect(
                &format!("blk.{i} attn_output"),
                &layer.output,
                c.hidden,
                c.heads * c.head_dim,
            )?;
            expect(
                &format!("blk.{i} ffn gate/up"),
                &layer.gate_up,
                2 * c.ffn,
                c.hidden,
            )?;
            expect(&format!("blk.{i} ffn_down"), &layer.down, c.hidden, c.ffn)?;
            for (what, norm) in [
                ("attn_norm", &layer.attn_norm),
                ("ffn_norm", &layer.ffn_norm),
            ] {
                if norm.len() != c.hidden {
                    return Err(LoadError::Shape(format!(
                        "blk.{i}.{what} has {} values",
                        norm.len()
                    )));
                }
            }
        }
        if self.norm.len() != c.hidden {
            return Err(LoadError::Shape("output_norm has the wrong length".into()));
        }
        Ok(())
    }
}
