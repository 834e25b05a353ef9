//! Singular values through faer's SVD.

use anyhow::{Result, anyhow, ensure};
use faer::MatRef;

/// Singular values of the row-major `rows×cols` matrix `a`, in descending order
/// (`min(rows, cols)` of them).
///
/// Errors when `a` holds a non-finite entry (a diverged weight has no meaningful
/// spectrum, and faer's iteration is not guaranteed to stop on NaN) or when the
/// SVD does not converge.
///
/// # Panics
/// If `a.len() != rows * cols`.
pub fn singular_values(a: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    assert_eq!(a.len(), rows * cols, "singular_values: a must be {rows}×{cols}");
    ensure!(a.iter().all(|x| x.is_finite()), "singular_values: {rows}×{cols} matrix has non-finite entries");
    MatRef::from_row_major_slice(a, rows, cols)
        .singular_values()
        .map_err(|e| anyhow!("singular_values: faer SVD of {rows}×{cols} failed: {e:?}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use faer::Mat;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Random n×k matrix with orthonormal columns (thin Q of a Gaussian-ish matrix).
    pub(crate) fn orthonormal(n: usize, k: usize, rng: &mut StdRng) -> Mat<f64> {
        let g = Mat::<f64>::from_fn(n, k, |_, _| rng.random::<f64>() * 2.0 - 1.0);
        g.qr().compute_thin_Q()
    }

    /// Row-major f32 `U·diag(s)·Vᵀ` with random orthonormal U (rows×r), V (cols×r).
    pub(crate) fn with_singular_values(rows: usize, cols: usize, s: &[f64], rng: &mut StdRng) -> (Vec<f32>, Mat<f64>, Mat<f64>) {
        let u = orthonormal(rows, s.len(), rng);
        let v = orthonormal(cols, s.len(), rng);
        let us = Mat::<f64>::from_fn(rows, s.len(), |i, j| u[(i, j)] * s[j]);
        let a = &us * v.transpose();
        let flat = (0..rows * cols).map(|i| a[(i / cols, i % cols)] as f32).collect();
        (flat, u, v)
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn diagonal_matrix_gives_sorted_abs_diagonal() {
        let a = [2.0, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 0.5];
        assert_close(&singular_values(&a, 3, 3).unwrap(), &[5.0, 2.0, 0.5], 1e-6);
    }

    #[test]
    fn recovers_planted_spectrum_wide_and_tall() {
        let mut rng = StdRng::seed_from_u64(3);
        let s = [9.0, 4.0, 2.5, 1.0, 0.3, 0.01];
        for (rows, cols) in [(6, 20), (20, 6), (6, 6)] {
            let (a, _, _) = with_singular_values(rows, cols, &s, &mut rng);
            assert_close(&singular_values(&a, rows, cols).unwrap(), &s, 1e-5);
        }
    }

    #[test]
    fn rank_deficient_has_trailing_zeros() {
        let mut rng = StdRng::seed_from_u64(4);
        let (a, _, _) = with_singular_values(12, 8, &[3.0, 2.0, 1.0], &mut rng);
        let got = singular_values(&a, 12, 8).unwrap();
        let mut want = vec![3.0, 2.0, 1.0];
        want.resize(8, 0.0);
        assert_close(&got, &want, 1e-5);
    }

    #[test]
    fn non_finite_input_is_an_error() {
        assert!(singular_values(&[1.0, f32::NAN, 0.0, 1.0], 2, 2).is_err());
        assert!(singular_values(&[f32::INFINITY], 1, 1).is_err());
    }
}
