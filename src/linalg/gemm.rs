//! Row-major GEMM on top of the `gemm` crate's strided kernel. Its `x86-v4`
//! feature adds AVX-512 micro-kernels, picked at run time on CPUs that have
//! them (AVX2/FMA kernels elsewhere): without it an AVX-512 machine runs the
//! 256-bit kernels at about 60% of the speed.

use gemm::Parallelism;

/// Below this many multiply-adds (m·n·k) we don't even hand gemm a thread pool:
/// on the 2-core dev box (noisy, next to a concurrent build) the rayon dispatch
/// made ≤ 32³ products up to 3× slower, while from 64³ up splitting ranged from
/// break-even to 1.7× faster. (gemm additionally keeps products under its own
/// threading threshold, 48·48·256, on one thread.)
const PARALLEL_MIN_FLOPS: usize = 64 * 64 * 64;

/// C(m×n) = alpha·op(A)·op(B) + beta·C, all row-major.
///
/// op(A) is m×k (A is stored k×m when `trans_a`), op(B) is k×n (B is stored n×k
/// when `trans_b`). Transposes are expressed as strides, never materialised.
/// When `beta == 0` the old contents of C are not read, so C may hold garbage
/// (including NaN) on entry.
///
/// # Panics
/// If a slice length does not match its declared shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) {
    assert_eq!(c.len(), m * n, "matmul: C must be m×n = {m}×{n}");
    assert_eq!(a.len(), m * k, "matmul: A must hold m·k = {m}·{k} entries");
    assert_eq!(b.len(), k * n, "matmul: B must hold k·n = {k}·{n} entries");
    if m == 0 || n == 0 {
        return;
    }
    // (row stride, col stride) of op(X) for a row-major X whose op is r×c.
    let strides = |trans: bool, r: usize, c: usize| -> (isize, isize) { if trans { (1, r as isize) } else { (c as isize, 1) } };
    let (a_rs, a_cs) = strides(trans_a, m, k);
    let (b_rs, b_cs) = strides(trans_b, k, n);
    let parallelism = if m * n * k >= PARALLEL_MIN_FLOPS { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the asserts above guarantee every (row, col) reached through these
    // strides lies inside its slice; `c` is uniquely borrowed and cannot alias
    // `a` or `b`. The crate computes dst = alpha·dst + beta·lhs·rhs, so our
    // alpha/beta are passed swapped.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn naive(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool, alpha: f32, beta: f32) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    acc += av as f64 * bv as f64;
                }
                let old = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * n + j] as f64 };
                c[i * n + j] = (alpha as f64 * acc + old) as f32;
            }
        }
    }

    #[test]
    fn matches_naive_for_all_transposes_and_odd_sizes() {
        let mut rng = StdRng::seed_from_u64(7);
        let sizes = [1, 3, 17, 65];
        for &m in &sizes {
            for &k in &sizes {
                for &n in &sizes {
                    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                        for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                            let a = random(m * k, &mut rng);
                            let b = random(k * n, &mut rng);
                            let c0 = random(m * n, &mut rng);
                            let (mut got, mut want) = (c0.clone(), c0);
                            matmul(&mut got, &a, &b, m, k, n, ta, tb, alpha, beta);
                            naive(&mut want, &a, &b, m, k, n, ta, tb, alpha, beta);
                            for (g, w) in got.iter().zip(&want) {
                                let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                                assert!((g - w).abs() <= tol, "m={m} k={k} n={n} ta={ta} tb={tb} a={alpha} b={beta}: {g} vs {w}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let mut rng = StdRng::seed_from_u64(1);
        // The second shape is above the parallel threshold.
        for (m, k, n) in [(3, 17, 5), (65, 65, 65)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = random(m * k, &mut rng);
                let b = random(k * n, &mut rng);
                let mut got = vec![f32::NAN; m * n];
                let mut want = vec![0.0; m * n];
                matmul(&mut got, &a, &b, m, k, n, ta, tb, 1.5, 0.0);
                naive(&mut want, &a, &b, m, k, n, ta, tb, 1.5, 0.0);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn empty_inner_dimension_scales_c() {
        let mut c = vec![f32::NAN; 6];
        matmul(&mut c, &[], &[], 2, 0, 3, false, false, 1.0, 0.0);
        assert!(c.iter().all(|&x| x == 0.0), "{c:?}");
        let mut c = vec![2.0; 6];
        matmul(&mut c, &[], &[], 2, 0, 3, true, true, 1.0, 0.5);
        assert!(c.iter().all(|&x| x == 1.0), "{c:?}");
    }

    #[test]
    #[should_panic(expected = "matmul: A")]
    fn wrong_length_panics() {
        let mut c = vec![0.0; 4];
        matmul(&mut c, &[1.0; 3], &[1.0; 4], 2, 2, 2, false, false, 1.0, 0.0);
    }
}
