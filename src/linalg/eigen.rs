//! Inverse p-th roots of symmetric PSD statistics (Shampoo's preconditioners).

use anyhow::{Result, anyhow, ensure};
use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

/// Damping added to every eigenvalue before the root is taken.
///
/// The effective value is `absolute + relative·λ_max`: a relative term keeps the
/// preconditioner's condition number bounded whatever the scale of the
/// statistic, the absolute term keeps an all-zero statistic finite.
/// Part of optimizer configs, hence serde.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Epsilon {
    pub absolute: f64,
    pub relative: f64,
}

/// (A + ε·I)^{-1/p} for the symmetric n×n row-major `a`, with ε from `eps`.
///
/// Computed in f64 through faer's self-adjoint eigendecomposition of the
/// symmetrised `(A + Aᵀ)/2` (accumulated statistics drift slightly asymmetric).
/// Eigenvalues are clamped at 0 before damping, so negative round-off
/// eigenvalues of a PSD statistic end up at ε instead of blowing up.
///
/// Errors (rather than panics) on non-finite input, failed decomposition or a
/// non-finite result, so a caller can keep its previous root.
///
/// # Panics
/// If `a.len() != n * n` or `p == 0`.
pub fn sym_inverse_root(a: &[f32], n: usize, p: u32, eps: Epsilon) -> Result<Vec<f32>> {
    assert_eq!(a.len(), n * n, "sym_inverse_root: a must be {n}×{n}");
    assert!(p > 0, "sym_inverse_root: p must be positive");
    ensure!(a.iter().all(|x| x.is_finite()), "sym_inverse_root: {n}×{n} statistic has non-finite entries");
    let sym = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a[i * n + j] as f64 + a[j * n + i] as f64));
    let evd = sym.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow!("sym_inverse_root: eigendecomposition of {n}×{n} failed: {e:?}"))?;
    let (u, lambda) = (evd.U(), evd.S().column_vector());
    // Eigenvalues come in nondecreasing order.
    let lambda_max = if n == 0 { 0.0 } else { lambda[n - 1].max(0.0) };
    let damping = eps.absolute + eps.relative * lambda_max;
    let exponent = -1.0 / p as f64;
    let scaled = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * (lambda[j].max(0.0) + damping).powf(exponent));
    let root = &scaled * u.transpose();
    let out: Vec<f32> = (0..n * n).map(|i| root[(i / n, i % n)] as f32).collect();
    ensure!(out.iter().all(|x| x.is_finite()), "sym_inverse_root: root of {n}×{n} is not finite (damping {damping:e})");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn to_mat(a: &[f32], n: usize) -> Mat<f64> {
        Mat::from_fn(n, n, |i, j| a[i * n + j] as f64)
    }

    /// B·Bᵀ/n + shift·I for a random n×n B: SPD with condition number ~ (4 + shift)/shift.
    fn random_spd(n: usize, shift: f64, rng: &mut StdRng) -> Vec<f32> {
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.random::<f64>() * 2.0 - 1.0);
        let l = &b * b.transpose();
        (0..n * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (l[(r, c)] / n as f64 + if r == c { shift } else { 0.0 }) as f32
            })
            .collect()
    }

    fn assert_identity(m: &Mat<f64>, tol: f64) {
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((m[(i, j)] - want).abs() <= tol, "({i},{j}) = {}", m[(i, j)]);
            }
        }
    }

    const ABS: Epsilon = Epsilon { absolute: 1e-3, relative: 0.0 };

    #[test]
    fn fourth_root_to_the_fourth_inverts_damped_matrix() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in [1, 5, 64] {
            let l = random_spd(n, 0.05, &mut rng);
            let r = to_mat(&sym_inverse_root(&l, n, 4, ABS).unwrap(), n);
            let r2 = &r * &r;
            let damped = Mat::<f64>::from_fn(n, n, |i, j| l[i * n + j] as f64 + if i == j { ABS.absolute } else { 0.0 });
            assert_identity(&(&(&r2 * &r2) * &damped), 1e-3);
        }
    }

    #[test]
    fn p2_is_inverse_square_root() {
        let mut rng = StdRng::seed_from_u64(12);
        let n = 7;
        let l = random_spd(n, 0.1, &mut rng);
        let eps = Epsilon { absolute: 0.0, relative: 0.0 };
        let r = to_mat(&sym_inverse_root(&l, n, 2, eps).unwrap(), n);
        assert_identity(&(&(&r * &r) * &to_mat(&l, n)), 1e-4);
    }

    #[test]
    fn relative_epsilon_scales_with_largest_eigenvalue() {
        // diag(100, 0): λ_max = 100, damping = 1 + 0.01·100 = 2.
        let eps = Epsilon { absolute: 1.0, relative: 0.01 };
        let r = sym_inverse_root(&[100.0, 0.0, 0.0, 0.0], 2, 1, eps).unwrap();
        let want = [1.0 / 102.0, 0.0, 0.0, 0.5];
        for (g, w) in r.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{r:?}");
        }
    }

    #[test]
    fn rank_deficient_psd_stays_finite() {
        // v·vᵀ minus a tiny bit: rank 1 with slightly negative round-off eigenvalues.
        let v = [1.0f32, 2.0, -1.0, 0.5];
        let mut a: Vec<f32> = (0..16).map(|i| v[i / 4] * v[i % 4]).collect();
        for i in 0..4 {
            a[i * 4 + i] -= 1e-7;
        }
        let r = sym_inverse_root(&a, 4, 4, ABS).unwrap();
        assert!(r.iter().all(|x| x.is_finite()));
        // Null-space directions get ε^{-1/4}, the largest possible value.
        let bound = (ABS.absolute as f32).powf(-0.25) * 1.0001;
        assert!(r.iter().all(|x| x.abs() <= bound), "{r:?}");
    }

    #[test]
    fn non_finite_input_or_output_is_an_error() {
        let mut a = vec![1.0f32, 0.0, 0.0, 1.0];
        a[1] = f32::NAN;
        assert!(sym_inverse_root(&a, 2, 4, ABS).is_err());
        let no_damping = Epsilon { absolute: 0.0, relative: 0.0 };
        assert!(sym_inverse_root(&[0.0; 4], 2, 2, no_damping).is_err());
    }

    #[test]
    fn empty_matrix_gives_empty_root() {
        assert!(sym_inverse_root(&[], 0, 4, ABS).unwrap().is_empty());
    }
}
