//! Symmetric eigendecompositions of optimizer statistics: inverse p-th roots
//! (Shampoo's preconditioners) and eigenbases (SOAP's rotations).

use anyhow::{Result, anyhow, ensure};
use faer::linalg::solvers::SelfAdjointEigen;
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

/// Eigendecomposition of the symmetrised `(A + Aᵀ)/2` of the n×n row-major `a`,
/// in f64 (accumulated statistics drift slightly asymmetric); eigenvalues come
/// in nondecreasing order. `what` names the caller in errors.
///
/// Errors (rather than panics) on non-finite input or failed decomposition, so
/// a caller can keep its previous result.
fn symmetric_eigen(a: &[f32], n: usize, what: &str) -> Result<SelfAdjointEigen<f64>> {
    assert_eq!(a.len(), n * n, "{what}: a must be {n}×{n}");
    ensure!(a.iter().all(|x| x.is_finite()), "{what}: {n}×{n} statistic has non-finite entries");
    let sym = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a[i * n + j] as f64 + a[j * n + i] as f64));
    sym.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow!("{what}: eigendecomposition of {n}×{n} failed: {e:?}"))
}

/// (A + ε·I)^{-1/p} for the symmetric n×n row-major `a`, with ε from `eps`.
///
/// Eigenvalues (of [`symmetric_eigen`]) are clamped at 0 before damping, so
/// negative round-off eigenvalues of a PSD statistic end up at ε instead of
/// blowing up. Errors on non-finite input, failed decomposition or a non-finite
/// result, so a caller can keep its previous root.
///
/// # Panics
/// If `a.len() != n * n` or `p == 0`.
pub fn sym_inverse_root(a: &[f32], n: usize, p: u32, eps: Epsilon) -> Result<Vec<f32>> {
    Ok(damped_root(a, n, p, |lambda_max| eps.absolute + eps.relative * lambda_max, "sym_inverse_root")?.root)
}

/// (A + δ·I)⁻¹ of the symmetric n×n row-major `a`, as [`sym_inverse_root`] with
/// p = 1 and an absolute δ: K-FAC's damped Kronecker factors.
pub fn damped_inverse(a: &[f32], n: usize, damping: f64) -> Result<DampedRoot> {
    damped_root(a, n, 1, |_| damping, "damped_inverse")
}

/// A damped inverse root and how well conditioned the damped matrix was.
pub struct DampedRoot {
    pub root: Vec<f32>,
    /// (λ_max + δ)/(λ_min + δ) of the matrix whose root was taken.
    pub condition: f64,
}

/// (A + δ·I)^{-1/p} with δ = `damping(λ_max)`; see [`sym_inverse_root`].
fn damped_root(a: &[f32], n: usize, p: u32, damping: impl Fn(f64) -> f64, what: &str) -> Result<DampedRoot> {
    assert!(p > 0, "{what}: p must be positive");
    let evd = symmetric_eigen(a, n, what)?;
    let (u, lambda) = (evd.U(), evd.S().column_vector());
    // Nondecreasing: the last eigenvalue is the largest.
    let (lambda_min, lambda_max) = if n == 0 { (0.0, 0.0) } else { (lambda[0].max(0.0), lambda[n - 1].max(0.0)) };
    let damping = damping(lambda_max);
    let exponent = -1.0 / p as f64;
    let scaled = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * (lambda[j].max(0.0) + damping).powf(exponent));
    let root = &scaled * u.transpose();
    let out: Vec<f32> = (0..n * n).map(|i| root[(i / n, i % n)] as f32).collect();
    ensure!(out.iter().all(|x| x.is_finite()), "{what}: root of {n}×{n} is not finite (damping {damping:e})");
    Ok(DampedRoot { root: out, condition: (lambda_max + damping) / (lambda_min + damping) })
}

/// Eigenvectors of the symmetrised n×n row-major `a` (see [`symmetric_eigen`]),
/// as the columns of a row-major n×n matrix, by descending eigenvalue: the
/// eigenbasis SOAP runs Adam in, leading directions first.
///
/// # Panics
/// If `a.len() != n * n`.
pub fn sym_eigenvectors(a: &[f32], n: usize) -> Result<Vec<f32>> {
    let evd = symmetric_eigen(a, n, "sym_eigenvectors")?;
    let u = evd.U();
    Ok((0..n * n).map(|i| u[(i / n, n - 1 - i % n)] as f32).collect())
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

    #[test]
    fn eigenvectors_are_orthonormal_and_diagonalize_by_descending_eigenvalue() {
        let mut rng = StdRng::seed_from_u64(13);
        for n in [1, 6, 40] {
            let a = random_spd(n, 0.01, &mut rng);
            let q = to_mat(&sym_eigenvectors(&a, n).unwrap(), n);
            assert_identity(&(q.transpose() * &q), 1e-5);
            let d = q.transpose() * to_mat(&a, n) * &q;
            let scale = d[(0, 0)].abs();
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        assert!(d[(i, j)].abs() <= 1e-5 * scale, "n={n}: off-diagonal ({i},{j}) = {}", d[(i, j)]);
                    }
                }
                if i > 0 {
                    assert!(d[(i, i)] <= d[(i - 1, i - 1)] + 1e-6 * scale, "n={n}: eigenvalue {i} is larger than {}", i - 1);
                }
            }
        }
    }

    #[test]
    fn eigenvectors_of_a_diagonal_matrix_sort_its_axes() {
        // diag(1, 3, 2): columns e₂, e₃, e₁ up to sign.
        let q = sym_eigenvectors(&[1.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 2.0], 3).unwrap();
        let want = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert!(q.iter().zip(want).all(|(x, w)| (x.abs() - w).abs() < 1e-6), "{q:?}");
    }

    #[test]
    fn eigenvectors_of_non_finite_input_are_an_error() {
        assert!(sym_eigenvectors(&[1.0, f32::NAN, 0.0, 1.0], 2).is_err());
        assert!(sym_eigenvectors(&[f32::INFINITY, 0.0, 0.0, 1.0], 2).is_err());
    }
}
