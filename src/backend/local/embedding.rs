//! Embeddings from the local model, as llama.cpp's server makes them from a
//! generative model: each token's final hidden state (normalised as the output
//! projection reads it) pooled over the text into one vector, scaled to unit length so
//! that a dot product is a cosine similarity, as OpenAI's vectors are.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::backend::BackendError;

/// How one text's token states become its vector (`local.embedding_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean over every token: the usual choice for a model not trained for
    /// embeddings, whose last state is tuned to predict the next token.
    Mean,
    /// The last token's state, which a causal model computes having read the whole
    /// text: what embedding models trained from llama-style models use.
    Last,
}

/// Where the engine thread sends one text's vector.
pub type VectorSender = oneshot::Sender<Result<Vec<f32>, BackendError>>;

/// One text's vector while the forward passes read it, a slice of tokens at a time.
pub struct Pooled {
    pooling: Pooling,
    /// The running sum of the states (mean), or the latest state (last).
    state: Vec<f32>,
    tokens: usize,
}

impl Pooled {
    pub fn new(pooling: Pooling, width: usize) -> Self {
        Self {
            pooling,
            state: vec![0.0; width],
            tokens: 0,
        }
    }

    /// Takes in the states of the next tokens, `width` values each.
    pub fn add(&mut self, states: &[f32]) {
        let width = self.state.len();
        match self.pooling {
            Pooling::Mean => {
                for row in states.chunks_exact(width) {
                    for (sum, value) in self.state.iter_mut().zip(row) {
                        *sum += value;
                    }
                }
            }
            Pooling::Last => {
                if let Some(last) = states.rchunks_exact(width).next() {
                    self.state.copy_from_slice(last);
                }
            }
        }
        self.tokens += states.len() / width;
    }

    /// The vector, of unit length (a text whose states sum to zero stays zero).
    pub fn finish(mut self) -> Vec<f32> {
        if self.pooling == Pooling::Mean && self.tokens > 0 {
            let count = self.tokens as f32;
            self.state.iter_mut().for_each(|value| *value /= count);
        }
        let norm = self
            .state
            .iter()
            .map(|&value| f64::from(value) * f64::from(value))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            self.state
                .iter_mut()
                .for_each(|value| *value = (f64::from(*value) / norm) as f32);
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pooling: Pooling, slices: &[&[f32]]) -> Vec<f32> {
        let mut pooled = Pooled::new(pooling, 2);
        for slice in slices {
            pooled.add(slice);
        }
        pooled.finish()
    }

    #[test]
    fn slices_pool_as_one_text_and_come_out_unit_length() {
        // Tokens (3, 0), (1, 4), (2, 2): mean (2, 2), last (2, 2); in one slice or
        // three, the same vector.
        let whole = pool(Pooling::Mean, &[&[3.0, 0.0, 1.0, 4.0, 2.0, 2.0]]);
        let sliced = pool(Pooling::Mean, &[&[3.0, 0.0], &[1.0, 4.0, 2.0, 2.0]]);
        assert_eq!(whole, sliced);
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert!((whole[0] - half).abs() < 1e-6 && (whole[1] - half).abs() < 1e-6);

        let last = pool(Pooling::Last, &[&[3.0, 0.0, 1.0, 4.0], &[0.0, 5.0]]);
        assert_eq!(last, vec![0.0, 1.0]);
        // Mean (4/3, 3), of length 3.283.
        let mean = pool(Pooling::Mean, &[&[3.0, 0.0, 1.0, 4.0], &[0.0, 5.0]]);
        assert!((mean[0] - 0.40613).abs() < 1e-4 && (mean[1] - 0.91381).abs() < 1e-4);
    }

    #[test]
    fn a_zero_state_stays_zero() {
        assert_eq!(pool(Pooling::Mean, &[&[0.0, 0.0]]), vec![0.0, 0.0]);
    }
}
