//! Singular values through faer's SVD.

use anyhow::{Result, anyhow, ensure};
use faer::MatRef;

/// Singular values of the row-major `rows×cols` matrix `a`, in descending order
/// (`min(rows, cols)` of them).
///
/// The matrix is first scaled by the power of two that brings its largest
/// entry into [1, 2) (exact in floating point) and σ scaled back: finite but
/// exploding weights (entries of 1e30, whose squares overflow f32) have a
/// spectrum like any other, instead of an SVD that does not converge.
///
/// Errors when `a` holds a non-finite entry (a diverged weight has no meaningful
/// spectrum, and faer's iteration is not guaranteed to stop on NaN), when the
/// SVD does not converge, or when a singular value exceeds f32.
///
/// # Panics
/// If `a.len() != rows * cols`.
pub fn singular_values(a: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    assert_eq!(a.len(), rows * cols, "singular_values: a must be {rows}×{cols}");
    ensure!(a.iter().all(|x| x.is_finite()), "singular_values: {rows}×{cols} matrix has non-finite entries");
    let largest = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if largest == 0.0 {
        return Ok(vec![0.0; rows.min(cols)]);
    }
    // In f64: 2^±128 do not exist in f32.
    let exponent = f64::from(largest).log2().floor() as i32;
    let (down, up) = (2f64.powi(-exponent), 2f64.powi(exponent));
    let scaled: Vec<f32> = a.iter().map(|&x| (f64::from(x) * down) as f32).collect();
    let sigma = MatRef::from_row_major_slice(&scaled, rows, cols)
        .singular_values()
        .map_err(|e| anyhow!("singular_values: faer SVD of {rows}×{cols} failed: {e:?}"))?;
    let sigma: Vec<f32> = sigma.iter().map(|&s| (f64::from(s) * up) as f32).collect();
    ensure!(sigma.iter().all(|s| s.is_finite()), "singular_values: a singular value of the {rows}×{cols} matrix exceeds f32");
    Ok(sigma)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn huge_and_tiny_finite_matrices_have_spectra() {
        // diag(3, 1)·s: σ = (3s, s) for s from 1e-30 to 1e30.
        for s in [1e-30f32, 1.0, 1e30] {
            let sigma = singular_values(&[3.0 * s, 0.0, 0.0, s], 2, 2).unwrap();
            assert!((sigma[0] / (3.0 * s) - 1.0).abs() < 1e-6 && (sigma[1] / s - 1.0).abs() < 1e-6, "{s}: {sigma:?}");
        }
        assert_eq!(singular_values(&[0.0; 6], 2, 3).unwrap(), [0.0, 0.0]);
        let r = singular_values(&[f32::MAX, f32::MAX, f32::MAX, f32::MAX], 2, 2);
        assert!(r.is_err(), "σ = 2·f32::MAX does not fit: {r:?}");
    }
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
