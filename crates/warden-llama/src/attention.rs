//! Causal self-attention over the paged cache. Every query row carries its own sequence
//! (block table) and position and attends to that sequence's positions up to its own,
//! so rows of different sequences and lengths share one pass with no padding and no
//! mask: the causal mask is the loop bound.
//!
//! Query heads that share a key/value head (grouped-query attention) are computed
//! together, so a block of keys is read once for all of them.

use std::cell::RefCell;

use crate::cpu::{for_each_chunk, madd, vectorized, Kernel};
use crate::kv_cache::{LayerCache, BLOCK_TOKENS};

/// Where one query row sits: its sequence's blocks and its position there.
#[derive(Clone, Copy)]
pub struct QueryRow<'a> {
    pub table: &'a [u32],
    pub position: usize,
}

#[derive(Clone, Copy)]
pub struct Heads {
    pub query: usize,
    pub kv: usize,
    pub dim: usize,
}

impl Heads {
    fn group(&self) -> usize {
        self.query / self.kv
    }
}

/// `out[row]` (`heads.query * heads.dim` values) for each row, given `queries[row]`
/// (rotated, `query_stride` apart) and the keys and values already in `cache`.
pub fn attend(
    cache: &LayerCache,
    heads: Heads,
    rows: &[QueryRow],
    queries: &[f32],
    query_stride: usize,
    out: &mut [f32],
) {
    thread_local! {
        static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    let group_width = heads.group() * heads.dim;
    let scale = 1.0 / (heads.dim as f32).sqrt();
    for_each_chunk(
        &mut out[..rows.len() * heads.query * heads.dim],
        group_width,
        |item, out| {
            let (row, kv_head) = (item / heads.kv, item % heads.kv);
            let query = &queries[row * query_stride + kv_head * group_width..][..group_width];
            SCORES.with(|scores| {
                vectorized(GroupAttention {
                    cache,
                    heads,
                    kv_head,
                    row: rows[row],
                    query,
                    scale,
                    scores: &mut scores.borrow_mut(),
                    out,
                })
            });
        },
    );
}

/// One row's query heads of one group against that group's cached keys and values.
struct GroupAttention<'a> {
    cache: &'a LayerCache,
    heads: Heads,
    kv_head: usize,
    row: QueryRow<'a>,
    query: &'a [f32],
    scale: f32,
    scores: &'a mut Vec<f32>,
    out: &'a mut [f32],
}

impl Kernel for GroupAttention<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let positions = self.row.position + 1;
        let blocks = &self.row.table[..positions.div_ceil(BLOCK_TOKENS)];
        let dim = self.heads.dim;
        self.scores.resize(positions, 0.0);
        for (query, out) in self
            .query
            .chunks_exact(dim)
            .zip(self.out.chunks_exact_mut(dim))
        {
            for (index, &block) in blocks.iter().enumerate() {
                let block_scores = dot_block::<FMA>(self.cache.keys(block, self.kv_head), query);
                let start = index * BLOCK_TOKENS;
                let valid = (positions - start).min(BLOCK_TOKENS);
                for (score, dot) in self.scores[start..start + valid]
                    .iter_mut()
                    .zip(block_scores)
                {
                    *score = dot * self.scale;
                }
            }
            softmax(self.scores);
            out.fill(0.0);
            for (index, &block) in blocks.iter().enumerate() {
                let start = index * BLOCK_TOKENS;
                let weights = &self.scores[start..positions.min(start + BLOCK_TOKENS)];
                let values = self.cache.values(block, self.kv_head);
                for (weight, value) in weights.iter().zip(values.chunks_exact(dim)) {
                    for (out, v) in out.iter_mut().zip(value) {
                        *out = madd::<FMA>(*weight, *v, *out);
                    }
                }
            }
        }
    }
}

/// The query's dot product with each of a block's keys (`[dim][position]`), with even
/// and odd dimensions summed apart to halve the dependency chain.
#[inline(always)]
fn dot_block<const FMA: bool>(keys: &[f32], query: &[f32]) -> [f32; BLOCK_TOKENS] {
    let mut even = [0f32; BLOCK_TOKENS];
    let mut odd = [0f32; BLOCK_TOKENS];
    for (pair, q) in keys
        .chunks_exact(2 * BLOCK_TOKENS)
        .zip(query.chunks_exact(2))
    {
        let (k0, k1) = pair.split_at(BLOCK_TOKENS);
        for (((e, o), a), b) in even.iter_mut().zip(odd.iter_mut()).zip(k0).zip(k1) {
            *e = madd::<FMA>(q[0], *a, *e);
            *o = madd::<FMA>(q[1], *b, *o);
        }
    }
    std::array::from_fn(|t| even[t] + odd[t])
}

/// candle's `softmax_last_dim`: shift by the maximum, exponentiate, divide by the sum.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
    }
    let sum: f32 = scores.iter().sum();
    for score in scores.iter_mut() {
        *score /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvCache;
    use crate::LlamaConfig;

    /// Plain attention over explicit key and value lists, in f64.
    fn reference(query: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>]) -> Vec<f32> {
        let scale = 1.0 / (query.len() as f64).sqrt();
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                k.iter()
                    .zip(query)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..query.len())
            .map(|d| {
                (weights
                    .iter()
                    .zip(values)
                    .map(|(w, v)| w * f64::from(v[d]))
                    .sum::<f64>()
                    / total) as f32
            })
            .collect()
    }

    #[test]
    fn rows_of_different_sequences_and_lengths_attend_to_their_own_past() {
        let config = LlamaConfig {
            layers: 1,
            hidden: 16,
            ffn: 16,
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            eps: 1e-5,
            rope_base: 10_000.0,
            context_length: 256,
            vocab: 10,
        };
        let mut cache = KvCache::with_budget(&config, KvCache::bytes_per_token(&config) * 256);
        let lengths = [3, BLOCK_TOKENS + 5, 1];
        let value =
            |s: usize, p: usize, i: usize| ((s * 131 + p * 17 + i * 7) % 23) as f32 / 11.0 - 1.0;
        let tables: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&n| cache.allocate(n).unwrap())
            .collect();
        for (s, (&n, table)) in lengths.iter().zip(&tables).enumerate() {
            for p in 0..n {
                let keys: Vec<f32> = (0..8).map(|i| value(s, p, i)).collect();
                let values: Vec<f32> = (0..8).map(|i| value(s + 5, p, i)).collect();
                cache.store(0, table, p, &keys, &values);
            }
        }
        // The last position of each sequence, plus an earlier one of the long sequence.
        let rows: Vec<QueryRow> = vec![
            QueryRow {
                table: &tables[0],
                position: 2,
            },
            QueryRow {
                table: &tables[1],
                position: BLOCK_TOKENS + 4,
            },
            QueryRow {
                table: &tables[1],
                position: 6,
            },
            QueryRow {
                table: &tables[2],
                position: 0,
            },
        ];
        let sequence_of = [0, 1, 1, 2];
        let queries: Vec<f32> = (0..rows.len() * 16)
            .map(|i| ((i * 37) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let heads = Heads {
            query: 4,
            kv: 2,
            dim: 4,
        };
        let mut out = vec![0.0; rows.len() * 16];
        attend(cache.layer(0), heads, &rows, &queries, 16, &mut out);
        for (r, row) in rows.iter().enumerate() {
            let s = sequence_of[r];
            for head in 0..4 {
                let kv = head / 2;
                let keys: Vec<Vec<f32>> = (0..=row.position)
                    .map(|p| (0..4).map(|i| value(s, p, kv * 4 + i)).collect())
                    .collect();
                let values: Vec<Vec<f32>> = (0..=row.position)
                    .map(|p| (0..4).map(|i| value(s + 5, p, kv * 4 + i)).collect())
                    .collect();
                let expected = reference(&queries[r * 16 + head * 4..][..4], &keys, &values);
                for (got, want) in out[r * 16 + head * 4..][..4].iter().zip(&expected) {
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {r} head {head}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
