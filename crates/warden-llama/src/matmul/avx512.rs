//! The tile products spelt out in AVX-512 vectors, for CPUs that have it (the plain
//! loops in the parent module serve the others). Left to itself, the compiler keeps
//! fewer activation rows in registers than the vector file holds and gathers their
//! values one lane at a time; here each weight vector, widened to f32 once, meets
//! `ROWS` activation rows held in registers, each row's value broadcast from memory
//! into a fused multiply-add.
//!
//! Each row keeps its own accumulators and adds its products in the same order
//! whatever the rows beside it, so a row's result is the same alone or in a batch.

use std::sync::OnceLock;

use pulp::x86::V4;
use pulp::{f32x16, i8x16, u8x16, Simd, WithSimd};

use super::{Activations, Q4_1Tile, Q8_0Tile, BLOCK, TILE};

/// Activation rows per pass over a tile: 8 block sums and 8 running totals stay in
/// registers with room for the weights.
const ROWS: usize = 8;

/// How many blocks ahead of the one being multiplied the weights are asked for. Decoding
/// streams every weight from memory once per token; without a request ahead, each
/// block's loads wait on memory while the arithmetic units idle, and then the reverse.
const AHEAD: usize = 6;

/// Asks for the cache lines of the value at `at` (which may lie past the end of its
/// slice: a prefetch of any address is harmless and reads nothing).
#[inline(always)]
fn prefetch<T>(simd: V4, at: *const T) {
    let bytes = at.cast::<i8>();
    for line in (0..std::mem::size_of::<T>()).step_by(64) {
        simd.sse
            ._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(bytes.wrapping_add(line));
    }
}

/// The AVX-512 token, if this CPU has the extensions.
pub(super) fn available() -> Option<V4> {
    static SIMD: OnceLock<Option<V4>> = OnceLock::new();
    *SIMD.get_or_init(V4::try_new)
}

/// A tile's half-precision scales as singles.
#[inline(always)]
fn widen(simd: V4, halves: [u16; TILE]) -> f32x16 {
    pulp::cast(simd.avx512f._mm512_cvtph_ps(pulp::cast(halves)))
}

/// One tile format's arithmetic for one block of a tile against `MB` rows.
pub(super) trait Avx512Tile: Copy + Sync {
    fn accumulate_512<const MB: usize>(
        &self,
        simd: V4,
        x: [&[f32; BLOCK]; MB],
        sums: [f32; MB],
        acc: &mut [f32x16; MB],
    );
}

impl Avx512Tile for Q8_0Tile {
    #[inline(always)]
    fn accumulate_512<const MB: usize>(
        &self,
        simd: V4,
        x: [&[f32; BLOCK]; MB],
        _sums: [f32; MB],
        acc: &mut [f32x16; MB],
    ) {
        // Even and odd values sum apart: two dependency chains per row.
        let mut even = [simd.splat_f32x16(0.0); MB];
        let mut odd = [simd.splat_f32x16(0.0); MB];
        let to_f32 = |q: [i8; TILE]| {
            let q: i8x16 = pulp::cast(q);
            simd.convert_i32x16_to_f32x16(simd.convert_i8x16_to_i32x16(q))
        };
        for j in (0..BLOCK).step_by(2) {
            let (w0, w1) = (to_f32(self.q[j]), to_f32(self.q[j + 1]));
            for m in 0..MB {
                even[m] = simd.mul_add_f32x16(w0, simd.splat_f32x16(x[m][j]), even[m]);
                odd[m] = simd.mul_add_f32x16(w1, simd.splat_f32x16(x[m][j + 1]), odd[m]);
            }
        }
        let d = widen(simd, self.d);
        for m in 0..MB {
            acc[m] = simd.mul_add_f32x16(d, simd.add_f32x16(even[m], odd[m]), acc[m]);
        }
    }
}

impl Avx512Tile for Q4_1Tile {
    /// `Σ (d q + m) x = d Σ q x + m Σ x`, as in the plain loops.
    #[inline(always)]
    fn accumulate_512<const MB: usize>(
        &self,
        simd: V4,
        x: [&[f32; BLOCK]; MB],
        sums: [f32; MB],
        acc: &mut [f32x16; MB],
    ) {
        let mut block = [simd.splat_f32x16(0.0); MB];
        let low_nibble = simd.splat_u32x16(0x0F);
        for (j, q) in self.q.iter().enumerate() {
            let q: u8x16 = pulp::cast(*q);
            let wide = pulp::cast(simd.convert_u8x16_to_i32x16(q));
            let low = simd.convert_i32x16_to_f32x16(pulp::cast(simd.and_u32x16(wide, low_nibble)));
            let high = simd.convert_i32x16_to_f32x16(pulp::cast(simd.shr_const_u32x16::<4>(wide)));
            for m in 0..MB {
                block[m] = simd.mul_add_f32x16(low, simd.splat_f32x16(x[m][j]), block[m]);
                block[m] =
                    simd.mul_add_f32x16(high, simd.splat_f32x16(x[m][j + BLOCK / 2]), block[m]);
            }
        }
        let (d, offset) = (widen(simd, self.d), widen(simd, self.m));
        for m in 0..MB {
            let shifted = simd.mul_add_f32x16(offset, simd.splat_f32x16(sums[m]), acc[m]);
            acc[m] = simd.mul_add_f32x16(d, block[m], shifted);
        }
    }
}

/// One row tile (all its blocks) against every activation row; writes `[row][lane]`.
pub(super) struct Product<'a, T> {
    pub simd: V4,
    pub tiles: &'a [T],
    pub x: &'a Activations,
    pub out: &'a mut [f32],
}

impl<T: Avx512Tile> Product<'_, T> {
    #[inline(always)]
    fn rows<const MB: usize>(&mut self, first: usize) {
        let simd = self.simd;
        let blocks = self.x.blocks_per_row;
        let mut acc = [simd.splat_f32x16(0.0); MB];
        for (block, tile) in self.tiles.iter().enumerate() {
            prefetch(simd, self.tiles.as_ptr().wrapping_add(block + AHEAD));
            let at: [usize; MB] = std::array::from_fn(|m| (first + m) * blocks + block);
            tile.accumulate_512::<MB>(
                simd,
                at.map(|at| &self.x.x[at]),
                at.map(|at| self.x.sums[at]),
                &mut acc,
            );
        }
        for (m, acc) in acc.iter().enumerate() {
            let at = (first + m) * TILE;
            self.out[at..at + TILE].copy_from_slice(&pulp::cast::<f32x16, [f32; TILE]>(*acc));
        }
    }
}

impl<T: Avx512Tile> WithSimd for Product<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, _: S) {
        let total = self.x.rows;
        let mut first = 0;
        while total - first >= ROWS {
            self.rows::<ROWS>(first);
            first += ROWS;
        }
        if total - first >= 4 {
            self.rows::<4>(first);
            first += 4;
        }
        if total - first >= 2 {
            self.rows::<2>(first);
            first += 2;
        }
        if total - first == 1 {
            self.rows::<1>(first);
        }
    }
}

impl<T: Avx512Tile> Product<'_, T> {
    pub(super) fn run(self) {
        let simd = self.simd;
        <V4 as Simd>::vectorize(simd, self);
    }
}
