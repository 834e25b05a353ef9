//! The CPU backend's hot loops with the widest vector instructions the CPU has.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so one binary runs anywhere;
//! LLVM then vectorises our loops 4 floats wide. [`vectorized`] picks AVX-512 or
//! AVX2+FMA at run time instead (as the `gemm` crate does for its kernels), which
//! made GELU, LayerNorm, softmax and the optimizer steps 2–4× faster on an
//! AVX-512 machine. Rust never contracts `a·b + c` into an FMA on its own, so
//! every path computes bit-identical results.

/// Runs `f` compiled with AVX-512 or AVX2+FMA enabled when the CPU has them.
///
/// The body is only compiled for those features if it is inlined into the
/// wrapper, so callers pass an `#[inline(always)]` closure whose loops call
/// only `#[inline]` functions.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has every feature `avx512` is compiled for.
            return unsafe { x86::avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for `avx2`.
            return unsafe { x86::avx2(f) };
        }
    }
    f()
}

/// The instruction set [`vectorized`] runs with on this CPU (for provenance).
pub fn path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "baseline"
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Partial sums per reduction: LLVM may not reorder a float sum, so a single
/// running total goes one value at a time; `LANES` interleaved totals, added at
/// the end, vectorise (and sum in the same order on every ISA).
const LANES: usize = 16;

/// Σ f(xᵢ), in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn sum_map<A: Copy + Default + std::ops::Add<Output = A>>(x: &[f32], f: impl Fn(f32) -> A) -> A {
    let mut acc = [A::default(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(A::default(), |s, &v| s + f(v));
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a = *a + f(v));
    }
    acc.into_iter().fold(tail, |s, a| s + a)
}

#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    sum_map(x, |v| v)
}

/// Σ aᵢ·bᵢ, in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(0.0, |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        acc.iter_mut().zip(x.iter().zip(y)).for_each(|(a, (&x, &y))| *a += x * y);
    }
    acc.into_iter().fold(tail, |s, a| s + a)
}

/// The largest value (NaNs ignored, as `f32::max` does); −∞ for an empty slice.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a = a.max(v));
    }
    acc.into_iter().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_sequential_ones_at_every_length() {
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            // These values are exact in f32 sums, so any order gives the same total.
            assert_eq!(sum(&x), x.iter().sum::<f32>(), "n={n}");
            assert_eq!(sum_map(&x, |v| f64::from(v) * 2.0), x.iter().map(|&v| f64::from(v) * 2.0).sum::<f64>());
            assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let want: f64 = x.iter().zip(&y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            assert!((f64::from(dot(&x, &y)) - want).abs() < 1e-5, "dot n={n}");
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }

    /// What the backend's loops compute (reductions, `exp`, GELU's `tanh`), as
    /// bits; inlined, so each caller compiles it for its own instruction set.
    #[inline(always)]
    fn hot_loops(x: &[f32]) -> Vec<u64> {
        use super::super::fast_math::{exp, tanh};
        let mut bits = vec![sum_map(x, |v| f64::from(exp(v))).to_bits(), u64::from(max(x).to_bits()), u64::from(dot(x, x).to_bits())];
        bits.extend(x.iter().map(|&v| u64::from((0.5 * v * (1.0 + tanh(0.8 * (v + 0.044715 * v * v * v)))).to_bits())));
        bits
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let x: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
        let plain = hot_loops(&x);
        assert_eq!(
            vectorized(
                #[inline(always)]
                || hot_loops(&x)
            ),
            plain,
            "the dispatched path"
        );
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has the wrapper's features.
                assert_eq!(
                    unsafe {
                        x86::avx2(
                            #[inline(always)]
                            || hot_loops(&x),
                        )
                    },
                    plain,
                    "AVX2"
                );
            }
            if has!("avx512f") {
                // SAFETY: as above.
                assert_eq!(
                    unsafe {
                        x86::avx512(
                            #[inline(always)]
                            || hot_loops(&x),
                        )
                    },
                    plain,
                    "AVX-512"
                );
            }
        }
    }
}
