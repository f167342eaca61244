//! The llama architecture (SmolLM2 is one), written out for the CPU. A forward pass
//! takes rows from any number of sequences at once, each row with its own position:
//!
//! ```text
//! x = embedding[token]
//! for each layer:
//!     h = rms_norm(x) * attn_norm
//!     q, k, v = h · [Wq; Wk; Wv]            one product for the three projections
//!     q, k = rope(q, position), rope(k, position)
//!     cache[layer][sequence][position] = k, v
//!     x += attention(q, cache[layer][sequence][..=position]) · Wo
//!     h = rms_norm(x) * ffn_norm
//!     x += (silu(h · Wgate) * (h · Wup)) · Wdown    one product for gate and up
//! logits = rms_norm(x) * output_norm · Woutput     only for rows that are sampled
//! hidden = rms_norm(x) * output_norm                for rows whose states are pooled
//! ```
//!
//! Weights stay in the file's quantized formats (see `matmul`); the key/value cache is a
//! preallocated pool of blocks (see `kv_cache`).

pub mod attention;
mod cpu;
pub mod kv_cache;
mod load;
pub mod matmul;
mod ops;
mod workers;

use attention::{Heads, QueryRow};
use kv_cache::KvCache;
use matmul::{matmul, Activations, MatmulScratch, PackedMatrix};
use ops::RopeTable;

pub use load::LoadError;

/// The shape of the network, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope_base: f32,
    /// Positions the model was trained for; the rotary tables cover all of them.
    pub context_length: usize,
    pub vocab: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Query, key and value projections stacked: `heads + 2 * kv_heads` heads of output.
    qkv: PackedMatrix,
    output: PackedMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up projections stacked: `2 * ffn` outputs.
    gate_up: PackedMatrix,
    down: PackedMatrix,
}

pub struct Llama {
    config: LlamaConfig,
    embedding: PackedMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when the output projection is the embedding table itself (tied).
    output: Option<PackedMatrix>,
    rope: RopeTable,
}

/// One sequence's part in a forward pass: `tokens` at positions `position..`, cached in
/// the blocks of `table`, and what the pass returns for it.
#[derive(Clone, Copy)]
pub struct SequenceInput<'a> {
    pub tokens: &'a [u32],
    pub position: usize,
    pub table: &'a [u32],
    pub output: Output,
}

/// What a forward pass returns for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing: the tokens only go into the cache (a prompt's slice before its last).
    Nothing,
    /// The next-token logits after its last token, for sampling.
    Logits,
    /// The normalised final hidden state of every token, for pooling into an
    /// embedding.
    Hidden,
}

/// The results of a forward pass, in input order: `vocab` logits for every input that
/// asked for them and `hidden` values per token of every input that asked for those.
pub struct Outputs<'w> {
    pub logits: &'w [f32],
    pub hidden: &'w [f32],
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("token {0} is outside the vocabulary")]
    UnknownToken(u32),
    #[error("position {position} is past the sequence's cache ({capacity} positions)")]
    PastCache { position: usize, capacity: usize },
    #[error("position {0} is past the model's context")]
    PastContext(usize),
}

/// Buffers a forward pass reuses from one call to the next.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attention: Vec<f32>,
    projected: Vec<f32>,
    gate_up: Vec<f32>,
    activated: Vec<f32>,
    projector: Projector,
    logits: Vec<f32>,
    hidden: Vec<f32>,
}

/// Runs products, reusing their buffers.
#[derive(Default)]
struct Projector {
    activations: Activations,
    scratch: MatmulScratch,
}

impl Projector {
    /// `out = x · w` for `rows` rows.
    fn apply(&mut self, w: &PackedMatrix, x: &[f32], rows: usize, out: &mut [f32]) {
        self.activations.load(x, rows, w.cols());
        matmul(w, &self.activations, out, &mut self.scratch);
    }
}

impl Llama {
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs the rows of `inputs` through the network, storing their keys and values in
    /// `cache`, and returns what each input asked for.
    pub fn forward<'w>(
        &self,
        inputs: &[SequenceInput],
        cache: &mut KvCache,
        work: &'w mut Workspace,
    ) -> Result<Outputs<'w>, ForwardError> {
        let rows = inputs.iter().map(|input| input.tokens.len()).sum();
        workers::on_workers(rows, || self.forward_here(inputs, cache, work))
    }

    fn forward_here<'w>(
        &self,
        inputs: &[SequenceInput],
        cache: &mut KvCache,
        work: &'w mut Workspace,
    ) -> Result<Outputs<'w>, ForwardError> {
        let c = &self.config;
        let rows = self.rows(inputs)?;
        let n = rows.len();
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let qkv_width = q_width + 2 * kv_width;

        work.x.resize(n * c.hidden, 0.0);
        let tokens = inputs.iter().flat_map(|input| input.tokens);
        for (token, x) in tokens.zip(work.x.chunks_exact_mut(c.hidden)) {
            self.embedding.dequantize_row(*token as usize, x);
        }
        for (index, layer) in self.layers.iter().enumerate() {
            work.normed.resize(n * c.hidden, 0.0);
            ops::rms_norm(&work.x, &layer.attn_norm, c.eps, &mut work.normed);
            work.qkv.resize(n * qkv_width, 0.0);
            work.projector
                .apply(&layer.qkv, &work.normed, n, &mut work.qkv);

            for (row, qkv) in rows.iter().zip(work.qkv.chunks_exact_mut(qkv_width)) {
                let (queries, keys_values) = qkv.split_at_mut(q_width);
                let (keys, values) = keys_values.split_at_mut(kv_width);
                self.rope.rotate(queries, row.position);
                self.rope.rotate(keys, row.position);
                cache.store(index, row.table, row.position, keys, values);
            }
            let heads = Heads {
                query: c.heads,
                kv: c.kv_heads,
                dim: c.head_dim,
            };
            work.attention.resize(n * q_width, 0.0);
            attention::attend(
                cache.layer(index),
                heads,
                &rows,
                &work.qkv,
                qkv_width,
                &mut work.attention,
            );
            work.projected.resize(n * c.hidden, 0.0);
            work.projector
                .apply(&layer.output, &work.attention, n, &mut work.projected);
            ops::add_in_place(&mut work.x, &work.projected);

            ops::rms_norm(&work.x, &layer.ffn_norm, c.eps, &mut work.normed);
            work.gate_up.resize(n * 2 * c.ffn, 0.0);
            work.projector
                .apply(&layer.gate_up, &work.normed, n, &mut work.gate_up);
            work.activated.resize(n * c.ffn, 0.0);
            ops::swiglu(&work.gate_up, c.ffn, &mut work.activated);
            work.projector
                .apply(&layer.down, &work.activated, n, &mut work.projected);
            ops::add_in_place(&mut work.x, &work.projected);
        }

        // Every row of the sequences that asked for hidden states, normalised as the
        // output projection would see them.
        let mut hidden_rows = 0;
        let mut start = 0;
        for input in inputs {
            let length = input.tokens.len();
            if input.output == Output::Hidden {
                let (from, to) = (start * c.hidden, (start + length) * c.hidden);
                work.hidden.resize((hidden_rows + length) * c.hidden, 0.0);
                ops::rms_norm(
                    &work.x[from..to],
                    &self.norm,
                    c.eps,
                    &mut work.hidden[hidden_rows * c.hidden..],
                );
                hidden_rows += length;
            }
            start += length;
        }
        work.hidden.truncate(hidden_rows * c.hidden);

        // Only the last row of each sequence that asked for logits goes on.
        let mut last_rows = Vec::new();
        let mut end = 0;
        for input in inputs {
            end += input.tokens.len();
            if input.output == Output::Logits {
                last_rows.push(end - 1);
            }
        }
        let selected = last_rows.len();
        work.logits.resize(selected * c.vocab, 0.0);
        if selected > 0 {
            work.projected.resize(selected * c.hidden, 0.0);
            for (slot, &row) in last_rows.iter().enumerate() {
                work.projected[slot * c.hidden..(slot + 1) * c.hidden]
                    .copy_from_slice(&work.x[row * c.hidden..(row + 1) * c.hidden]);
            }
            ops::rms_norm(
                &work.projected[..selected * c.hidden],
                &self.norm,
                c.eps,
                &mut work.normed,
            );
            let output = self.output.as_ref().unwrap_or(&self.embedding);
            work.projector.apply(
                output,
                &work.normed[..selected * c.hidden],
                selected,
                &mut work.logits,
            );
        }
        Ok(Outputs {
            logits: &work.logits,
            hidden: &work.hidden,
        })
    }

    /// Every row of the pass with its sequence's table and position, checked.
    fn rows<'a>(&self, inputs: &[SequenceInput<'a>]) -> Result<Vec<QueryRow<'a>>, ForwardError> {
        let mut rows = Vec::with_capacity(inputs.iter().map(|i| i.tokens.len()).sum());
        for input in inputs {
            let capacity = input.table.len() * kv_cache::BLOCK_TOKENS;
            for (offset, &token) in input.tokens.iter().enumerate() {
                let position = input.position + offset;
                if token as usize >= self.config.vocab {
                    return Err(ForwardError::UnknownToken(token));
                }
                if position >= capacity {
                    return Err(ForwardError::PastCache { position, capacity });
                }
                if position >= self.rope.positions() {
                    return Err(ForwardError::PastContext(position));
                }
                rows.push(QueryRow {
                    table: input.table,
                    position,
                });
            }
        }
        Ok(rows)
    }
}
