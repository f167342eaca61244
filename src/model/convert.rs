//! Re-quantizes a GGUF's matrices to Q8_0, once, at fetch time: the engine runs Q4_1 and
//! Q8_0 matrices, so a model shipped in another block format is served converted.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::ModelError;

/// GGUF `general.file_type` for "mostly Q8_0".
const FILE_TYPE_MOSTLY_Q8_0: u32 = 7;

pub fn requantize(source: &Path, target: &Path) -> Result<(), ModelError> {
    let fail = |message: String| ModelError::Convert {
        file: source.to_path_buf(),
        message,
    };
    let mut reader = File::open(source).map_err(ModelError::io(source))?;
    let content = gguf_file::Content::read(&mut reader).map_err(|e| fail(e.to_string()))?;

    // Keep the original tensor order so the output reads like the input.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|name| content.tensor_infos[*name].offset);
    let cpu = Device::Cpu;
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        let tensor = if needs_requantizing(&tensor) {
            let weights = tensor
                .dequantize(&cpu)
                .map_err(|e| fail(format!("{name}: {e}")))?;
            QTensor::quantize(&weights, GgmlDType::Q8_0)
                .map_err(|e| fail(format!("{name}: {e}")))?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }

    let file_type = Value::U32(FILE_TYPE_MOSTLY_Q8_0);
    let mut metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != "general.file_type")
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    metadata.sort_by_key(|(key, _)| *key);
    metadata.push(("general.file_type", &file_type));
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, t)| (*name, t)).collect();

    let out = File::create(target).map_err(ModelError::io(target))?;
    let mut writer = BufWriter::new(out);
    gguf_file::write(&mut writer, &metadata, &tensor_refs).map_err(|e| fail(e.to_string()))?;
    writer.flush().map_err(ModelError::io(target))?;
    writer
        .into_inner()
        .map_err(|e| ModelError::Io {
            file: target.to_path_buf(),
            error: e.into_error(),
        })?
        .sync_all()
        .map_err(ModelError::io(target))
}

/// Matrices in other block formats become Q8_0; vectors (norms) and tensors whose
/// rows do not split into Q8_0 blocks stay as they are.
fn needs_requantizing(tensor: &QTensor) -> bool {
    let dims = tensor.shape().dims();
    let is_matrix = dims.len() == 2;
    let row_fits = dims
        .last()
        .is_some_and(|&n| n % GgmlDType::Q8_0.block_size() == 0);
    let already_float_or_q8 = matches!(
        tensor.dtype(),
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_0
    );
    is_matrix && row_fits && !already_float_or_q8
}
