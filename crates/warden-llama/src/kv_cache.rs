//! The key/value cache: one pool, allocated once from a memory budget, cut into blocks
//! of `BLOCK_TOKENS` positions that sequences borrow and give back. A sequence's blocks
//! need not be adjacent (its block table maps positions to blocks), so sequences of any
//! length share the pool without copying and without fragmenting it.
//!
//! Within a block, keys are stored transposed (`[head][dim][position]`) and values
//! straight (`[head][position][dim]`): attention then reads both along the block's
//! positions, the layout its vector loops want.

use crate::LlamaConfig;

/// Positions per block: two 16-lane vectors of attention scores.
pub const BLOCK_TOKENS: usize = 32;

/// Which pool blocks hold a sequence's positions, in order.
pub type BlockTable = Vec<u32>;

pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    layers: Vec<LayerCache>,
    free: Vec<u32>,
    blocks: usize,
}

/// One layer's keys and values for every block of the pool.
pub struct LayerCache {
    kv_heads: usize,
    head_dim: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    /// Bytes of cache one position takes across all layers (keys and values, f32).
    pub fn bytes_per_token(config: &LlamaConfig) -> usize {
        config.layers * 2 * config.kv_heads * config.head_dim * std::mem::size_of::<f32>()
    }

    /// A pool of as many whole blocks as `budget_bytes` holds. The memory is reserved
    /// now but only touched as blocks are used.
    pub fn with_budget(config: &LlamaConfig, budget_bytes: usize) -> Self {
        let blocks = budget_bytes / (Self::bytes_per_token(config) * BLOCK_TOKENS);
        let per_layer = blocks * BLOCK_TOKENS * config.kv_heads * config.head_dim;
        Self {
            kv_heads: config.kv_heads,
            head_dim: config.head_dim,
            layers: (0..config.layers)
                .map(|_| LayerCache {
                    kv_heads: config.kv_heads,
                    head_dim: config.head_dim,
                    keys: vec![0.0; per_layer],
                    values: vec![0.0; per_layer],
                })
                .collect(),
            // Popped from the end: low blocks first, so a light load touches little memory.
            free: (0..blocks as u32).rev().collect(),
            blocks,
        }
    }

    /// Positions the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.blocks * BLOCK_TOKENS
    }

    /// Positions that could still be allocated.
    pub fn free_tokens(&self) -> usize {
        self.free.len() * BLOCK_TOKENS
    }

    /// Blocks for `tokens` positions, or `None` (and nothing taken) if too few are free.
    pub fn allocate(&mut self, tokens: usize) -> Option<BlockTable> {
        let needed = tokens.div_ceil(BLOCK_TOKENS);
        if needed > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - needed))
    }

    pub fn release(&mut self, table: BlockTable) {
        self.free.extend(table);
    }

    /// Copies whole blocks, every layer's keys and values: block `from[i]` into block
    /// `to[i]`. A sequence whose prompt starts as another's does takes that part of
    /// the other's cache this way instead of computing it again.
    pub fn copy_blocks(&mut self, from: &[u32], to: &[u32]) {
        let block_len = self.kv_heads * self.head_dim * BLOCK_TOKENS;
        for layer in &mut self.layers {
            for (&source, &target) in from.iter().zip(to) {
                let (source, target) = (source as usize * block_len, target as usize * block_len);
                layer.keys.copy_within(source..source + block_len, target);
                layer.values.copy_within(source..source + block_len, target);
            }
        }
    }

    pub fn layer(&self, layer: usize) -> &LayerCache {
        &self.layers[layer]
    }

    /// Stores position `position`'s keys and values (`[kv_head][dim]` each) for `layer`.
    pub fn store(
        &mut self,
        layer: usize,
        table: &[u32],
        position: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let (kv_heads, head_dim) = (self.kv_heads, self.head_dim);
        let cache = &mut self.layers[layer];
        let block = table[position / BLOCK_TOKENS] as usize;
        let slot = position % BLOCK_TOKENS;
        for head in 0..kv_heads {
            let base = (block * kv_heads + head) * head_dim * BLOCK_TOKENS;
            let (key, value) = (
                &keys[head * head_dim..(head + 1) * head_dim],
                &values[head * head_dim..(head + 1) * head_dim],
            );
            for (dim, k) in key.iter().enumerate() {
                cache.keys[base + dim * BLOCK_TOKENS + slot] = *k;
            }
            cache.values[base + slot * head_dim..base + (slot + 1) * head_dim]
                .copy_from_slice(value);
        }
    }
}

impl LayerCache {
    /// Block `block`'s keys for `head`: `[dim][position]`.
    pub fn keys(&self, block: u32, head: usize) -> &[f32] {
        &self.keys[self.span(block, head)]
    }

    /// Block `block`'s values for `head`: `[position][dim]`.
    pub fn values(&self, block: u32, head: usize) -> &[f32] {
        &self.values[self.span(block, head)]
    }

    fn span(&self, block: u32, head: usize) -> std::ops::Range<usize> {
        let len = self.head_dim * BLOCK_TOKENS;
        let start = (block as usize * self.kv_heads + head) * len;
        start..start + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig {
            layers: 2,
            hidden: 8,
            ffn: 16,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            eps: 1e-5,
            rope_base: 10_000.0,
            context_length: 128,
            vocab: 10,
        }
    }

    #[test]
    fn the_budget_decides_the_blocks_and_allocation_never_overdraws() {
        let config = config();
        // 2 layers * 2 * 1 head * 4 dims * 4 bytes = 64 bytes a position.
        assert_eq!(KvCache::bytes_per_token(&config), 64);
        let mut cache = KvCache::with_budget(&config, 64 * BLOCK_TOKENS * 3 + 10);
        assert_eq!(cache.capacity_tokens(), 3 * BLOCK_TOKENS);
        let first = cache.allocate(BLOCK_TOKENS + 1).unwrap();
        assert_eq!(first.len(), 2);
        assert!(cache.allocate(BLOCK_TOKENS + 1).is_none());
        assert_eq!(cache.free_tokens(), BLOCK_TOKENS);
        let second = cache.allocate(5).unwrap();
        assert!(first.iter().all(|b| !second.contains(b)));
        cache.release(first);
        assert_eq!(cache.free_tokens(), 2 * BLOCK_TOKENS);
    }

    #[test]
    fn copied_blocks_read_back_as_the_originals() {
        let config = config();
        let mut cache = KvCache::with_budget(&config, 64 * BLOCK_TOKENS * 4);
        let (from, to) = (
            cache.allocate(BLOCK_TOKENS + 1).unwrap(),
            cache.allocate(BLOCK_TOKENS + 1).unwrap(),
        );
        for layer in 0..2 {
            for position in [0, 5, BLOCK_TOKENS] {
                let value = (layer * 100 + position) as f32;
                cache.store(layer, &from, position, &[value; 4], &[-value; 4]);
            }
        }
        cache.copy_blocks(&from, &to);
        for layer in 0..2 {
            let layer = cache.layer(layer);
            for (source, target) in from.iter().zip(&to) {
                assert_eq!(layer.keys(*source, 0), layer.keys(*target, 0));
                assert_eq!(layer.values(*source, 0), layer.values(*target, 0));
            }
        }
        assert_eq!(
            cache.layer(1).values(to[1], 0)[..4],
            [-(100.0 + BLOCK_TOKENS as f32); 4]
        );
    }

    #[test]
    fn stored_positions_read_back_in_the_attention_layout() {
        let config = config();
        let mut cache = KvCache::with_budget(&config, 64 * BLOCK_TOKENS * 4);
        let table = cache.allocate(2 * BLOCK_TOKENS).unwrap();
        let position = BLOCK_TOKENS + 3;
        cache.store(
            1,
            &table,
            position,
            &[1.0, 2.0, 3.0, 4.0],
            &[5.0, 6.0, 7.0, 8.0],
        );
        let layer = cache.layer(1);
        let keys = layer.keys(table[1], 0);
        assert_eq!(
            (0..4)
                .map(|dim| keys[dim * BLOCK_TOKENS + 3])
                .collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(
            &layer.values(table[1], 0)[3 * 4..4 * 4],
            &[5.0, 6.0, 7.0, 8.0]
        );
    }
}
