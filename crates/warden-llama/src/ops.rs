//! The model's elementwise steps: RMS normalisation, rotary position embedding, the
//! SwiGLU activation and residual addition, each over a batch of rows. Each one repeats
//! candle's arithmetic (operation order included), so that the model's numbers follow
//! candle's `quantized_llama` as closely as float rounding allows.

use crate::cpu::for_each_chunk;

/// Rows per parallel piece for the cheap elementwise steps: enough work to be worth a
/// hand-off, few enough pieces to balance a prompt's rows across cores.
const ROWS_PER_PIECE: usize = 8;

/// `out[row] = x[row] / rms(x[row]) * weight`, rows of `weight.len()` values.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for_each_chunk(&mut out[..x.len()], width * ROWS_PER_PIECE, |piece, out| {
        let first = piece * ROWS_PER_PIECE;
        for (row, out) in out.chunks_exact_mut(width).enumerate() {
            let x = &x[(first + row) * width..(first + row + 1) * width];
            let sum2: f32 = x.iter().map(|v| v * v).sum();
            let scale = (sum2 / width as f32 + eps).sqrt();
            for ((out, x), w) in out.iter_mut().zip(x).zip(weight) {
                *out = *x / scale * *w;
            }
        }
    });
}

/// `x[i] += y[i]`: the residual connection.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += *y;
    }
}

/// `out = silu(gate) * up` for rows laid out `[gate (width) | up (width)]`.
pub fn swiglu(gate_up: &[f32], width: usize, out: &mut [f32]) {
    for_each_chunk(out, width * ROWS_PER_PIECE, |piece, out| {
        let first = piece * ROWS_PER_PIECE;
        for (row, out) in out.chunks_exact_mut(width).enumerate() {
            let start = (first + row) * 2 * width;
            let (gate, up) = gate_up[start..start + 2 * width].split_at(width);
            for ((out, g), u) in out.iter_mut().zip(gate).zip(up) {
                *out = *g / (1.0 + (-*g).exp()) * *u;
            }
        }
    });
}

/// Cosines and sines of every position's rotation angles, for the whole context.
pub struct RopeTable {
    pairs: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles `position * base^(-2i / head_dim)`, computed in f32 as candle does.
    pub fn new(head_dim: usize, base: f32, positions: usize) -> Self {
        let pairs = head_dim / 2;
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let angles =
            || (0..positions).flat_map(|position| theta.iter().map(move |t| position as f32 * t));
        Self {
            pairs,
            cos: angles().map(f32::cos).collect(),
            sin: angles().map(f32::sin).collect(),
        }
    }

    pub fn positions(&self) -> usize {
        self.cos.len() / self.pairs.max(1)
    }

    /// Rotates each head of `heads` (consecutive `head_dim`-long vectors) in place by
    /// `position`'s angles, pairing neighbouring values as GGUF llama weights expect.
    pub fn rotate(&self, heads: &mut [f32], position: usize) {
        let at = position * self.pairs;
        let (cos, sin) = (
            &self.cos[at..at + self.pairs],
            &self.sin[at..at + self.pairs],
        );
        for head in heads.chunks_exact_mut(self.pairs * 2) {
            for ((pair, cos), sin) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos - b * sin;
                pair[1] = a * sin + b * cos;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Every value of candle's result, flattened.
    fn values(result: candle_core::Result<Tensor>) -> Vec<f32> {
        result
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn rms_norm_matches_candle() {
        let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let weight: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 64.0).collect();
        let mut ours = vec![0.0; x.len()];
        rms_norm(&x, &weight, 1e-5, &mut ours);
        let expected = values(candle_nn::ops::rms_norm(
            &Tensor::from_vec(x, (3, 64), &Device::Cpu).unwrap(),
            &Tensor::new(weight.as_slice(), &Device::Cpu).unwrap(),
            1e-5,
        ));
        assert_eq!(ours, expected);
    }

    #[test]
    fn rotation_matches_candles_interleaved_rope() {
        let (heads, head_dim, position) = (2, 8, 5);
        let table = RopeTable::new(head_dim, 10_000.0, 16);
        let x: Vec<f32> = (0..heads * head_dim)
            .map(|i| i as f32 * 0.1 - 0.4)
            .collect();
        let mut ours = x.clone();
        table.rotate(&mut ours, position);
        let pairs = head_dim / 2;
        let cos = Tensor::from_vec(
            table.cos[position * pairs..(position + 1) * pairs].to_vec(),
            (1, pairs),
            &Device::Cpu,
        )
        .unwrap();
        let sin = Tensor::from_vec(
            table.sin[position * pairs..(position + 1) * pairs].to_vec(),
            (1, pairs),
            &Device::Cpu,
        )
        .unwrap();
        let input = Tensor::from_vec(x, (1, heads, 1, head_dim), &Device::Cpu).unwrap();
        let expected = values(candle_nn::rotary_emb::rope_i(&input, &cos, &sin));
        assert_eq!(ours, expected);
    }

    #[test]
    fn swiglu_is_silu_of_gate_times_up() {
        let gate_up = [1.0f32, -2.0, 3.0, 4.0];
        let mut out = [0.0; 2];
        swiglu(&gate_up, 2, &mut out);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        assert_eq!(out, [silu(1.0) * 3.0, silu(-2.0) * 4.0]);
    }
}
