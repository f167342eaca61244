//! How the model's numeric loops use the CPU: the widest vector instructions it has,
//! chosen at run time so one binary runs everywhere, and candle's worker pool for
//! spreading a loop over cores.
//!
//! Kernels are plain loops over fixed-size arrays. Compiled inside `vectorized`, they
//! run with the CPU's vector extensions enabled (AVX-512 or AVX2 with FMA on x86), and
//! the compiler turns the inner loops into vector code; no intrinsics, no `unsafe`.

use std::sync::{Mutex, MutexGuard, OnceLock};

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

/// Runs `work(index, chunk)` for each `chunk_len`-long piece of `data` on candle's
/// worker pool, the calling thread included. Pieces are handed out from a shared
/// cursor, so a worker the OS preempts delays only the piece it holds instead of a
/// fixed share of the loop: a busy machine slows the engine down, it does not stall it.
///
/// A panic in `work` is caught inside the pool and resumed here, after the pool is done:
/// unwinding through candle's pool would poison its lock and break it for good.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunks: Vec<OwnLine<Mutex<&mut [T]>>> = data
        .chunks_mut(chunk_len.max(1))
        .map(|chunk| OwnLine(Mutex::new(chunk)))
        .collect();
    let panicked = Mutex::new(None);
    let run = |index: usize| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            work(index, &mut lock(&chunks[index].0))
        }));
        if let Err(payload) = outcome {
            if let Ok(mut first) = panicked.lock() {
                first.get_or_insert(payload);
            }
        }
    };
    match chunks.len() {
        0 => {}
        1 => run(0),
        n => candle_core::utils::barrier_pool().execute_chunked(n, |range| range.for_each(run)),
    }
    if let Some(payload) = panicked.into_inner().ok().flatten() {
        std::panic::resume_unwind(payload);
    }
}

/// A value on cache lines of its own. Neighbouring chunks' locks are taken by different
/// workers; sharing a line, every lock would pull the line from the other core.
#[repr(align(128))]
struct OwnLine<T>(T);

/// Each chunk is locked by exactly one worker, so the lock is never contended; a
/// poisoned one only means another piece panicked, which the pool reports anyway.
fn lock<'a, 'b, T>(mutex: &'a Mutex<&'b mut [T]>) -> MutexGuard<'a, &'b mut [T]> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
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
