//! Quantized weight matrices times activations. Weights keep the GGUF file's quantized
//! values and scales bit for bit, repacked once at load into tiles of 16 output rows by
//! one 32-value block, so that one vector instruction works on 16 rows at a time. Each
//! block is expanded to f32 in registers and multiplied with the activations as they
//! are, in f32: no rounding of the activations to 8 bits (ggml's and candle's quantized
//! paths do round them, which makes their results jump on the slightest float noise).
//!
//! Why f32 and not 8-bit activations with integer dot products, as ggml does: without
//! AVX-512 VNNI (which no safe wrapper exposes) an 8-bit product costs as many vector
//! instructions per multiply-add as an f32 one, and this layout already keeps the
//! multiply-add units busy (`avx512` holds the kernels that do so).
//!
//! A row's arithmetic does not depend on the other rows in the pass, on how rows are
//! grouped or on how tiles are spread over threads: a sequence gets the same bits alone
//! or in any batch.

use candle_core::quantized::{GgmlDType, QTensor};

use crate::cpu::{f16_to_f32, for_each_chunk, madd, vectorized, Kernel};
use crate::LoadError;

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
use avx512::Avx512Tile as Simd512;
/// Elsewhere tile formats need no vector kernels of their own.
#[cfg(not(target_arch = "x86_64"))]
trait Simd512 {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Simd512 for T {}

/// Output rows per tile: one 512-bit vector of f32.
pub const TILE: usize = 16;
/// Values per quantization block (Q4_1 and Q8_0).
pub const BLOCK: usize = 32;

/// Q4_1: `value = d * q + m` with `q` in 0..16. Byte `j` of a row holds value `j` in its
/// low nibble and value `j + 16` in its high nibble, as in the file.
#[derive(Clone, Copy)]
struct Q4_1Tile {
    q: [[u8; TILE]; BLOCK / 2],
    d: [u16; TILE],
    m: [u16; TILE],
}

/// Q8_0: `value = d * q` with `q` a signed byte.
#[derive(Clone, Copy)]
struct Q8_0Tile {
    q: [[i8; TILE]; BLOCK],
    d: [u16; TILE],
}

/// Tiles of one stored tensor, tile-row major: `[row tile][block]`.
enum Tiles {
    Q4_1(Vec<Q4_1Tile>),
    Q8_0(Vec<Q8_0Tile>),
}

/// One stored tensor's rows within a matrix.
struct Part {
    rows: usize,
    tiles: Tiles,
}

/// A weight matrix (`rows` outputs by `cols` inputs), possibly several GGUF tensors
/// stacked (the query, key and value projections share their input, so they run as one).
pub struct PackedMatrix {
    cols: usize,
    rows: usize,
    parts: Vec<Part>,
}

impl PackedMatrix {
    /// Stacks `tensors` (each `[rows, cols]`, same `cols`) into one matrix.
    pub fn stack(name: &str, tensors: &[&QTensor]) -> Result<Self, LoadError> {
        let mut parts = Vec::with_capacity(tensors.len());
        let mut cols = None;
        for tensor in tensors {
            let (rows, k) = tensor
                .shape()
                .dims2()
                .map_err(|e| LoadError::tensor(name, e))?;
            if *cols.get_or_insert(k) != k || k % BLOCK != 0 {
                return Err(LoadError::Shape(format!(
                    "{name}: {k} inputs (expected a multiple of {BLOCK}, equal across parts)"
                )));
            }
            let data = tensor.data().map_err(|e| LoadError::tensor(name, e))?;
            let tiles = match tensor.dtype() {
                GgmlDType::Q4_1 => Tiles::Q4_1(pack(&data, rows, k, 20, q4_1_tile)),
                GgmlDType::Q8_0 => Tiles::Q8_0(pack(&data, rows, k, 34, q8_0_tile)),
                other => {
                    return Err(LoadError::Format(format!(
                        "{name} is {other:?}; the engine runs Q4_1 and Q8_0 (set `convert_to: q8_0` in the model's manifest)"
                    )))
                }
            };
            parts.push(Part { rows, tiles });
        }
        Ok(Self {
            cols: cols.unwrap_or(0),
            rows: parts.iter().map(|p| p.rows).sum(),
            parts,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `row` dequantized into `out` (`cols` values), as candle dequantizes it: the
    /// embedding table is a weight matrix looked up by row.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let mut row = row;
        for part in &self.parts {
            if row >= part.rows {
                row -= part.rows;
                continue;
            }
            let blocks = self.cols / BLOCK;
            let (tile, lane) = (row / TILE, row % TILE);
            for (block, values) in out.chunks_exact_mut(BLOCK).enumerate().take(blocks) {
                match &part.tiles {
                    Tiles::Q4_1(tiles) => {
                        let t = &tiles[tile * blocks + block];
                        let (d, m) = (f16_to_f32(t.d[lane]), f16_to_f32(t.m[lane]));
                        for (j, packed) in t.q.iter().enumerate() {
                            values[j] = f32::from(packed[lane] & 0x0F) * d + m;
                            values[j + BLOCK / 2] = f32::from(packed[lane] >> 4) * d + m;
                        }
                    }
                    Tiles::Q8_0(tiles) => {
                        let t = &tiles[tile * blocks + block];
                        let d = f16_to_f32(t.d[lane]);
                        for (value, q) in values.iter_mut().zip(&t.q) {
                            *value = f32::from(q[lane]) * d;
                        }
                    }
                }
            }
            return;
        }
    }
}

/// Regroups a tensor's blocks (`block_bytes` each, `rows` rows of `cols / BLOCK`) into
/// tiles of `TILE` rows; rows past the end of the last tile stay zero.
fn pack<T: Copy>(
    data: &[u8],
    rows: usize,
    cols: usize,
    block_bytes: usize,
    tile_of: impl Fn(&[&[u8]]) -> T,
) -> Vec<T> {
    let blocks = cols / BLOCK;
    let zero = vec![0u8; block_bytes];
    let mut tiles = Vec::with_capacity(rows.div_ceil(TILE) * blocks);
    for tile in 0..rows.div_ceil(TILE) {
        for block in 0..blocks {
            let lanes: Vec<&[u8]> = (0..TILE)
                .map(|lane| {
                    let row = tile * TILE + lane;
                    let at = (row * blocks + block) * block_bytes;
                    data.get(at..at + block_bytes).unwrap_or(&zero)
                })
                .collect();
            tiles.push(tile_of(&lanes));
        }
    }
    tiles
}

fn half_bits(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// A tile's half-precision scales as singles. (Widened in the product rather than at
/// load: decoding streams every weight from memory, and halves keep the stream short.)
#[inline(always)]
fn widen(halves: &[u16; TILE]) -> [f32; TILE] {
    let mut singles = [0.0; TILE];
    for (single, half) in singles.iter_mut().zip(halves) {
        *single = f16_to_f32(*half);
    }
    singles
}

/// ggml's `block_q4_1`: half `d`, half `m`, 16 bytes of nibbles.
fn q4_1_tile(lanes: &[&[u8]]) -> Q4_1Tile {
    let mut tile = Q4_1Tile {
        q: [[0; TILE]; BLOCK / 2],
        d: [0; TILE],
        m: [0; TILE],
    };
    for (lane, block) in lanes.iter().enumerate() {
        tile.d[lane] = half_bits(block, 0);
        tile.m[lane] = half_bits(block, 2);
        for j in 0..BLOCK / 2 {
            tile.q[j][lane] = block[4 + j];
        }
    }
    tile
}

/// ggml's `block_q8_0`: half `d`, 32 signed bytes.
fn q8_0_tile(lanes: &[&[u8]]) -> Q8_0Tile {
    let mut tile = Q8_0Tile {
        q: [[0; TILE]; BLOCK],
        d: [0; TILE],
    };
    for (lane, block) in lanes.iter().enumerate() {
        tile.d[lane] = half_bits(block, 0);
        for j in 0..BLOCK {
            tile.q[j][lane] = block[2 + j] as i8;
        }
    }
    tile
}

/// Activation rows cut into blocks, with each block's sum (which the Q4_1 offset
/// multiplies).
#[derive(Default)]
pub struct Activations {
    rows: usize,
    blocks_per_row: usize,
    x: Vec<[f32; BLOCK]>,
    sums: Vec<f32>,
}

impl Activations {
    /// Takes `rows` rows of `x` (`cols` values each, a multiple of `BLOCK`).
    pub fn load(&mut self, x: &[f32], rows: usize, cols: usize) {
        let blocks = rows * cols / BLOCK;
        self.rows = rows;
        self.blocks_per_row = cols / BLOCK;
        self.x.resize(blocks, [0.0; BLOCK]);
        self.sums.resize(blocks, 0.0);
        let targets = self.x.iter_mut().zip(&mut self.sums);
        for (values, (block, sum)) in x[..rows * cols].chunks_exact(BLOCK).zip(targets) {
            block.copy_from_slice(values);
            *sum = values.iter().sum();
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Scratch reused across products: per-tile results before they are laid out by row.
#[derive(Default)]
pub struct MatmulScratch {
    by_tile: Vec<f32>,
}

/// `out[row] = w · x[row]` for every row of `x`; `out` is `x.rows() * w.rows()`.
pub fn matmul(w: &PackedMatrix, x: &Activations, out: &mut [f32], scratch: &mut MatmulScratch) {
    product(w, x, out, scratch, Kernels::Fastest);
}

/// Which tile kernels a product runs: the CPU's fastest, or the portable loops (which
/// the tests also run on CPUs that have faster ones).
#[derive(Clone, Copy, Debug)]
enum Kernels {
    Fastest,
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

fn product(
    w: &PackedMatrix,
    x: &Activations,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
    kernels: Kernels,
) {
    let rows = x.rows;
    let blocks = w.cols / BLOCK;
    debug_assert_eq!(x.blocks_per_row, blocks);
    let tile_parts: Vec<(usize, usize)> = w
        .parts
        .iter()
        .enumerate()
        .flat_map(|(index, part)| (0..part.rows.div_ceil(TILE)).map(move |tile| (index, tile)))
        .collect();
    let per_tile = rows * TILE;
    scratch.by_tile.resize(tile_parts.len() * per_tile, 0.0);
    for_each_chunk(&mut scratch.by_tile, per_tile, |index, out| {
        let (part, tile) = tile_parts[index];
        let tiles = tile..tile + 1;
        match &w.parts[part].tiles {
            Tiles::Q4_1(all) => tile_product(
                kernels,
                &all[tiles.start * blocks..tiles.end * blocks],
                x,
                out,
            ),
            Tiles::Q8_0(all) => tile_product(
                kernels,
                &all[tiles.start * blocks..tiles.end * blocks],
                x,
                out,
            ),
        }
    });
    // Lay the tiles' results out by row, skipping the padding of each part's last tile.
    let by_tile = &scratch.by_tile;
    let part_starts: Vec<(usize, usize)> = w
        .parts
        .iter()
        .scan((0, 0), |(column, tile), part| {
            let start = (*column, *tile);
            *column += part.rows;
            *tile += part.rows.div_ceil(TILE);
            Some(start)
        })
        .collect();
    for_each_chunk(&mut out[..rows * w.rows], w.rows, |row, out| {
        for (part, &(column, first_tile)) in w.parts.iter().zip(&part_starts) {
            for (offset, value) in out[column..column + part.rows].iter_mut().enumerate() {
                let tile = first_tile + offset / TILE;
                *value = by_tile[tile * per_tile + row * TILE + offset % TILE];
            }
        }
    });
}

/// One row tile against every activation row, with AVX-512 when the CPU has it.
fn tile_product<T: TileFormat>(kernels: Kernels, tiles: &[T], x: &Activations, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let (Kernels::Fastest, Some(simd)) = (kernels, avx512::available()) {
        return avx512::Product {
            simd,
            tiles,
            x,
            out,
        }
        .run();
    }
    vectorized(TileProduct { tiles, x, out })
}

/// A tile format's arithmetic on a group of `MB` activation rows.
trait TileFormat: Copy + Sync + Simd512 {
    /// Adds the block's products with each row (`x`, block sums `sums`) into `acc`.
    fn accumulate<const MB: usize, const FMA: bool>(
        &self,
        x: [&[f32; BLOCK]; MB],
        sums: [f32; MB],
        acc: &mut [[f32; TILE]; MB],
    );
}

impl TileFormat for Q4_1Tile {
    /// `Σ (d q + m) x = d Σ q x + m Σ x`: the offset costs one product per block.
    #[inline(always)]
    fn accumulate<const MB: usize, const FMA: bool>(
        &self,
        x: [&[f32; BLOCK]; MB],
        sums: [f32; MB],
        acc: &mut [[f32; TILE]; MB],
    ) {
        // Low and high nibbles accumulate apart: two independent chains per row.
        let mut low = [[0f32; TILE]; MB];
        let mut high = [[0f32; TILE]; MB];
        for (j, packed) in self.q.iter().enumerate() {
            let lo: [f32; TILE] = std::array::from_fn(|r| f32::from(packed[r] & 0x0F));
            let hi: [f32; TILE] = std::array::from_fn(|r| f32::from(packed[r] >> 4));
            for m in 0..MB {
                let (a, b) = (x[m][j], x[m][j + BLOCK / 2]);
                for r in 0..TILE {
                    low[m][r] = madd::<FMA>(lo[r], a, low[m][r]);
                    high[m][r] = madd::<FMA>(hi[r], b, high[m][r]);
                }
            }
        }
        let (d, offset) = (widen(&self.d), widen(&self.m));
        for m in 0..MB {
            for r in 0..TILE {
                let scaled = madd::<FMA>(offset[r], sums[m], acc[m][r]);
                acc[m][r] = madd::<FMA>(d[r], low[m][r] + high[m][r], scaled);
            }
        }
    }
}

impl TileFormat for Q8_0Tile {
    #[inline(always)]
    fn accumulate<const MB: usize, const FMA: bool>(
        &self,
        x: [&[f32; BLOCK]; MB],
        _sums: [f32; MB],
        acc: &mut [[f32; TILE]; MB],
    ) {
        let mut even = [[0f32; TILE]; MB];
        let mut odd = [[0f32; TILE]; MB];
        for j in (0..BLOCK).step_by(2) {
            let w0: [f32; TILE] = std::array::from_fn(|r| f32::from(self.q[j][r]));
            let w1: [f32; TILE] = std::array::from_fn(|r| f32::from(self.q[j + 1][r]));
            for m in 0..MB {
                let (a, b) = (x[m][j], x[m][j + 1]);
                for r in 0..TILE {
                    even[m][r] = madd::<FMA>(w0[r], a, even[m][r]);
                    odd[m][r] = madd::<FMA>(w1[r], b, odd[m][r]);
                }
            }
        }
        let d = widen(&self.d);
        for m in 0..MB {
            for r in 0..TILE {
                acc[m][r] = madd::<FMA>(d[r], even[m][r] + odd[m][r], acc[m][r]);
            }
        }
    }
}

/// One row tile (all its blocks) against every activation row; writes `[row][lane]`.
struct TileProduct<'a, T> {
    tiles: &'a [T],
    x: &'a Activations,
    out: &'a mut [f32],
}

impl<T: TileFormat> TileProduct<'_, T> {
    /// Rows `first..first + MB`, all blocks, kept in registers until the end.
    #[inline(always)]
    fn rows<const MB: usize, const FMA: bool>(&mut self, first: usize) {
        let blocks = self.x.blocks_per_row;
        let mut acc = [[0f32; TILE]; MB];
        for (block, tile) in self.tiles.iter().enumerate() {
            let at: [usize; MB] = std::array::from_fn(|m| (first + m) * blocks + block);
            tile.accumulate::<MB, FMA>(
                std::array::from_fn(|m| &self.x.x[at[m]]),
                std::array::from_fn(|m| self.x.sums[at[m]]),
                &mut acc,
            );
        }
        for (m, acc) in acc.iter().enumerate() {
            let at = (first + m) * TILE;
            self.out[at..at + TILE].copy_from_slice(acc);
        }
    }
}

impl<T: TileFormat> Kernel for TileProduct<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(mut self) {
        let total = self.x.rows;
        let mut first = 0;
        while total - first >= 8 {
            self.rows::<8, FMA>(first);
            first += 8;
        }
        if total - first >= 4 {
            self.rows::<4, FMA>(first);
            first += 4;
        }
        if total - first >= 2 {
            self.rows::<2, FMA>(first);
            first += 2;
        }
        if total - first == 1 {
            self.rows::<1, FMA>(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Deterministic values in about [-1, 1] without a random-number dependency.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn quantized(rows: usize, cols: usize, dtype: GgmlDType, seed: u32) -> QTensor {
        let weights =
            Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&weights, dtype).unwrap()
    }

    /// The f32 product of candle's dequantized weights, in f64 to stand clear of
    /// rounding.
    fn reference(
        parts: &[(usize, GgmlDType, u32)],
        cols: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<Vec<f64>> {
        let weights: Vec<Vec<f32>> = parts
            .iter()
            .flat_map(|&(n, dtype, seed)| {
                let w: Vec<Vec<f32>> = quantized(n, cols, dtype, seed)
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                w
            })
            .collect();
        (0..rows)
            .map(|row| {
                let x = &x[row * cols..(row + 1) * cols];
                weights
                    .iter()
                    .map(|w| {
                        w.iter()
                            .zip(x)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    const BOTH: [Kernels; 2] = [Kernels::Fastest, Kernels::Portable];

    fn ours(
        kernels: Kernels,
        parts: &[(usize, GgmlDType, u32)],
        cols: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<f32> {
        let tensors: Vec<QTensor> = parts
            .iter()
            .map(|&(n, dtype, seed)| quantized(n, cols, dtype, seed))
            .collect();
        let matrix = PackedMatrix::stack("test", &tensors.iter().collect::<Vec<_>>()).unwrap();
        let mut activations = Activations::default();
        activations.load(x, rows, cols);
        let mut out = vec![f32::NAN; rows * matrix.rows()];
        product(
            &matrix,
            &activations,
            &mut out,
            &mut MatmulScratch::default(),
            kernels,
        );
        out
    }

    #[test]
    fn stacked_q4_1_and_q8_0_products_match_the_dequantized_weights() {
        let (cols, rows) = (96, 11);
        let parts = [
            (16, GgmlDType::Q8_0, 3),
            (21, GgmlDType::Q4_1, 4),
            (40, GgmlDType::Q4_1, 1),
        ];
        let x = values(rows * cols, 5);
        let expected = reference(&parts, cols, &x, rows);
        for kernels in BOTH {
            let got = ours(kernels, &parts, cols, &x, rows);
            for (row, expected) in expected.iter().enumerate() {
                for (column, value) in expected.iter().enumerate() {
                    let ours = f64::from(got[row * 77 + column]);
                    assert!(
                        (ours - value).abs() <= 1e-5 * value.abs().max(1.0),
                        "{kernels:?} {row},{column}: {ours} vs {value}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_any_batch() {
        // 15 rows run in groups of 8, 4, 2 and 1.
        let (cols, rows) = (128, 15);
        let parts = [(48, GgmlDType::Q4_1, 6), (16, GgmlDType::Q8_0, 9)];
        let x = values(rows * cols, 7);
        for kernels in BOTH {
            let batched = ours(kernels, &parts, cols, &x, rows);
            for row in 0..rows {
                let alone = ours(kernels, &parts, cols, &x[row * cols..(row + 1) * cols], 1);
                assert_eq!(
                    alone,
                    batched[row * 64..(row + 1) * 64],
                    "{kernels:?} row {row}"
                );
            }
        }
    }

    #[test]
    fn dequantized_rows_equal_candles() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = quantized(20, 64, dtype, 8);
            let expected: Vec<Vec<f32>> = w.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
            let matrix = PackedMatrix::stack("test", &[&w]).unwrap();
            let mut row = vec![0.0; 64];
            for (index, expected) in expected.iter().enumerate() {
                matrix.dequantize_row(index, &mut row);
                assert_eq!(&row, expected);
            }
        }
    }
}
