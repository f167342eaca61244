//! How the model's numeric loops use the CPU: the widest vector instructions it has,
//! chosen at run time so one binary runs everywhere, and work stealing for spreading a
//! loop over the workers of the pass it is in (see `workers`).
//!
//! Kernels are plain loops over fixed-size arrays. Compiled inside `vectorized`, they
//! run with the CPU's vector extensions enabled (AVX-512 or AVX2 with FMA on x86), and
//! the compiler turns the inner loops into vector code; no `unsafe`. (The matrix
//! products also have kernels written with AVX-512 vectors, in `matmul::avx512`.)

use std::sync::OnceLock;

/// A loop body to run under the CPU's vector extensions. Implementations mark `run`
/// `#[inline(always)]` so it is compiled with those extensions, not without them.
pub trait Kernel {
    type Output;
    /// `FMA` says whether fused multiply-add is one instruction here; without it,
    /// `f32::mul_add` becomes a slow library call and `madd` falls back to `a * b + c`.
    fn run<const FMA: bool>(self) -> Self::Output;
}

/// Runs `kernel` with the best instruction set this CPU offers.
pub fn vectorized<K: Kernel>(kernel: K) -> K::Output {
    static ARCH: OnceLock<pulp::Arch> = OnceLock::new();
    struct Dispatch<K>(K);
    impl<K: Kernel> pulp::WithSimd for Dispatch<K> {
        type Output = K::Output;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> K::Output {
            if S::IS_SCALAR {
                self.0.run::<false>()
            } else {
                self.0.run::<true>()
            }
        }
    }
    ARCH.get_or_init(pulp::Arch::new).dispatch(Dispatch(kernel))
}

/// `a * b + c`, fused when the CPU has FMA.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Runs `work(index, chunk)` for each `chunk_len`-long piece of `data` on the workers
/// of the current pass. Pieces are split off as workers come for them (work stealing): a worker the
/// OS has preempted holds up only a piece it already took, and a worker that never
/// wakes up in time takes none; the others do its share. A fixed split, or a barrier
/// that waits for every worker to check in, would run at the pace of the preempted one.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    let chunk_len = chunk_len.max(1);
    if data.len() <= chunk_len {
        if !data.is_empty() {
            work(0, data);
        }
        return;
    }
    data.par_chunks_mut(chunk_len)
        .enumerate()
        .with_max_len(1)
        .for_each(|(index, chunk)| work(index, chunk));
}

/// Exact IEEE half to single precision for finite values, in plain arithmetic so that a
/// loop over a tile's scales vectorizes: the half's bits shifted into a single's
/// mantissa and exponent, then rescaled by 2^112 (the difference of the two exponent
/// biases), which also turns half subnormals into normal singles.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    const REBIAS: f32 = f32::from_bits(0x7780_0000); // 2^112
    let magnitude = f32::from_bits(u32::from(bits & 0x7FFF) << 13) * REBIAS;
    f32::from_bits(magnitude.to_bits() | (u32::from(bits & 0x8000) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::on_workers;

    #[test]
    fn half_conversion_is_exact_for_every_finite_half() {
        for bits in 0..=u16::MAX {
            let half = half::f16::from_bits(bits);
            if half.is_finite() {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    half.to_f32().to_bits(),
                    "{bits:#06x}"
                );
            }
        }
    }

    #[test]
    fn a_panicking_piece_reaches_the_caller_and_the_pool_keeps_working() {
        let mut data = vec![0u8; 64];
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_workers(64, || {
                for_each_chunk(&mut data, 8, |index, _| assert_ne!(index, 3, "piece 3"));
            })
        }));
        assert!(outcome.is_err());
        on_workers(64, || {
            for_each_chunk(&mut data, 8, |_, chunk| chunk.fill(1))
        });
        assert!(data.iter().all(|&value| value == 1));
    }

    #[test]
    fn chunks_are_each_visited_once() {
        let mut data: Vec<u32> = vec![0; 1000];
        for_each_chunk(&mut data, 7, |index, chunk| {
            for value in chunk.iter_mut() {
                *value += index as u32 + 1;
            }
        });
        for (position, value) in data.iter().enumerate() {
            assert_eq!(*value, (position / 7) as u32 + 1);
        }
    }
}
