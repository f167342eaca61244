//! The forward pass the scheduler runs. On the CPU it is warden's own llama
//! (`warden-llama`), which takes rows of many sequences in one pass. On an accelerator
//! (CUDA, Metal), where warden has no kernels of its own, it is candle's quantized
//! llama: sequences still join and leave the batch at any token, but each runs its own
//! pass with the key/value cache kept inside its copy of the model (copies share the
//! weight tensors).

use std::fs::File;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use super::llama::{Llama, LlamaConfig};

/// Which forward pass runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// warden's own batched pass; CPU only.
    Own,
    /// candle's quantized llama, one sequence per pass; any device.
    Candle,
}

impl Runner {
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Runner::Own
        } else {
            Runner::Candle
        }
    }
}

pub enum Network {
    Own(Llama),
    Candle {
        weights: ModelWeights,
        config: LlamaConfig,
        device: Device,
    },
}

impl Network {
    pub fn load(
        runner: Runner,
        content: gguf_file::Content,
        file: &mut File,
        device: &Device,
    ) -> Result<Self, String> {
        match runner {
            Runner::Own if !device.is_cpu() => Err(format!(
                "device {device:?}: warden's own forward pass runs on the CPU"
            )),
            Runner::Own => Llama::load(&content, file)
                .map(Network::Own)
                .map_err(|e| e.to_string()),
            Runner::Candle => {
                let mut config = LlamaConfig::from_gguf(&content).map_err(|e| e.to_string())?;
                config.vocab = content
                    .tensor_infos
                    .get("token_embd.weight")
                    .and_then(|info| info.shape.dims2().ok())
                    .map(|(rows, _)| rows)
                    .ok_or("no token embedding table (token_embd.weight)")?;
                let weights =
                    ModelWeights::from_gguf(content, file, device).map_err(|e| e.to_string())?;
                Ok(Network::Candle {
                    weights,
                    config,
                    device: device.clone(),
                })
            }
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        match self {
            Network::Own(model) => model.config(),
            Network::Candle { config, .. } => config,
        }
    }

    /// Positions a sequence may reach: candle's rotary tables stop at `MAX_SEQ_LEN`.
    pub fn context_length(&self) -> usize {
        match self {
            Network::Own(model) => model.config().context_length,
            Network::Candle { config, .. } => config.context_length.min(MAX_SEQ_LEN),
        }
    }

    /// What a new sequence carries through the passes of a per-sequence network.
    pub fn new_sequence(&self) -> Option<SequenceModel> {
        match self {
            Network::Own(_) => None,
            Network::Candle {
                weights, device, ..
            } => Some(SequenceModel {
                weights: weights.clone(),
                device: device.clone(),
            }),
        }
    }
}

/// One sequence's copy of candle's model, holding that sequence's key/value cache.
pub struct SequenceModel {
    weights: ModelWeights,
    device: Device,
}

impl SequenceModel {
    /// Reads `tokens` at `position..`; appends the logits after the last one to `out`
    /// when `logits` is asked for.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        position: usize,
        logits: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), candle_core::Error> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let result = self.weights.forward(&input, position)?;
        if logits {
            out.extend(result.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(())
    }
}
