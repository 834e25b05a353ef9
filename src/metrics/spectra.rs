//! Spectral summaries of a weight (or update) matrix: how many directions it uses.

use anyhow::Result;

use crate::linalg::singular_values;

#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// All min(rows, cols) singular values, descending.
    pub singular_values: Vec<f32>,
    /// exp of the Shannon entropy of σ_i/Σσ (Roy & Vetterli 2007); 0 for a zero matrix.
    pub effective_rank: f64,
    /// ‖W‖_F² / ‖W‖₂²; 0 for a zero matrix.
    pub stable_rank: f64,
    /// ‖W‖₂ = σ_max.
    pub spectral_norm: f64,
    /// ‖W‖_F, from the entries (not from σ, so it is exact up to f64 rounding).
    pub frobenius_norm: f64,
}

/// Spectrum of the row-major `rows×cols` matrix `a`.
///
/// A zero (or empty) matrix spans no direction, so both ranks are defined as 0
/// there rather than the 0/0 the formulas give.
///
/// Errors when the SVD fails (non-finite entries, no convergence).
pub fn spectrum(a: &[f32], rows: usize, cols: usize) -> Result<Spectrum> {
    let sigma = singular_values(a, rows, cols)?;
    let frobenius_sq: f64 = a.iter().map(|&x| x as f64 * x as f64).sum();
    let spectral_norm = sigma.first().copied().unwrap_or(0.0) as f64;
    let effective_rank = effective_rank(&sigma.iter().map(|&s| f64::from(s)).collect::<Vec<_>>());
    let stable_rank = if spectral_norm > 0.0 { frobenius_sq / (spectral_norm * spectral_norm) } else { 0.0 };
    Ok(Spectrum { singular_values: sigma, effective_rank, stable_rank, spectral_norm, frobenius_norm: frobenius_sq.sqrt() })
}

/// exp of the Shannon entropy of σ_i/Σσ over non-negative `sigma` (Roy &
/// Vetterli 2007); 0 when every σ is 0.
pub fn effective_rank(sigma: &[f64]) -> f64 {
    let total: f64 = sigma.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = sigma.iter().map(|&s| s / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    entropy.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    fn diag(d: &[f32]) -> Vec<f32> {
        let n = d.len();
        (0..n * n).map(|i| if i / n == i % n { d[i / n] } else { 0.0 }).collect()
    }

    #[test]
    fn identity_has_full_rank() {
        let s = spectrum(&diag(&[1.0; 6]), 6, 6).unwrap();
        close(s.effective_rank, 6.0, 1e-9);
        close(s.stable_rank, 6.0, 1e-9);
        close(s.spectral_norm, 1.0, 1e-9);
        close(s.frobenius_norm, 6f64.sqrt(), 1e-9);
    }

    #[test]
    fn rank_one_has_rank_one() {
        let (u, v) = ([1.0f32, -2.0, 0.5], [3.0f32, 1.0, 0.0, 2.0]);
        let a: Vec<f32> = (0..12).map(|i| u[i / 4] * v[i % 4]).collect();
        let s = spectrum(&a, 3, 4).unwrap();
        // Round-off leaves σ₂, σ₃ at ~1e-7·σ₁, which barely moves the entropy.
        close(s.effective_rank, 1.0, 1e-4);
        close(s.stable_rank, 1.0, 1e-5);
    }

    #[test]
    fn two_equal_directions_have_rank_two() {
        let s = spectrum(&diag(&[1.0, 1.0, 0.0]), 3, 3).unwrap();
        close(s.effective_rank, 2.0, 1e-9);
        close(s.stable_rank, 2.0, 1e-9);
    }

    #[test]
    fn known_singular_values_match_closed_form() {
        // σ = (3, 1): p = (3/4, 1/4), H = −¾ln¾ − ¼ln¼; stable rank = 10/9.
        let s = spectrum(&[0.0, 3.0, -1.0, 0.0], 2, 2).unwrap();
        let h = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        close(s.effective_rank, h.exp(), 1e-6);
        close(s.stable_rank, 10.0 / 9.0, 1e-6);
        close(s.spectral_norm, 3.0, 1e-6);
        close(s.frobenius_norm, 10f64.sqrt(), 1e-12);
        assert_eq!(s.singular_values.len(), 2);
    }

    #[test]
    fn zero_matrix_has_rank_zero() {
        let s = spectrum(&[0.0; 6], 2, 3).unwrap();
        assert_eq!((s.effective_rank, s.stable_rank, s.spectral_norm), (0.0, 0.0, 0.0));
    }

    #[test]
    fn non_finite_matrix_is_an_error() {
        assert!(spectrum(&[f32::NAN, 0.0], 1, 2).is_err());
    }
}
