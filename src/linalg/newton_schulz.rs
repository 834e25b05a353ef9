//! Muon's orthogonalisation: odd quintic iterations X ← aX + b(XXᵀ)X + c(XXᵀ)²X
//! that push every singular value of X towards 1 while keeping the singular
//! vectors, i.e. approximate the polar factor U·Vᵀ of G = U·Σ·Vᵀ.

use serde::{Deserialize, Serialize};

use super::gemm::matmul;

/// Which quintic coefficients drive the iteration (a config choice, hence serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NsCoefficients {
    /// Keller Jordan's fixed (3.4445, −4.7750, 2.0315), tuned for speed over
    /// accuracy: singular values land in roughly [0.7, 1.2], never exactly 1.
    Keller,
    /// Per-iteration optimal coefficients of Polar Express; converges to the
    /// polar factor.
    PolarExpress,
}

const KELLER: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

/// Polar Express, degree 5 — Amsel, Persson, Musco, Gower, "The Polar Express:
/// Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
/// arXiv:2505.16932, Algorithm 1 (reference code github.com/NoahAmsel/PolarExpress).
/// Raw (a, b, c) before the safety factor; the last triple repeats for any
/// further iterations.
const POLAR_EXPRESS: [(f64, f64, f64); 8] = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
];

/// Algorithm 1's safety factor: every polynomial but the last is evaluated at
/// x/1.01 (a/s, b/s³, c/s⁵), and the input is normalised by 1.01·‖G‖_F, so
/// round-off that nudges a singular value past the design interval cannot make
/// it grow.
const PE_SAFETY: f64 = 1.01;

/// Frobenius-norm guard against division by zero, as in both references.
pub const NORM_EPS: f32 = 1e-7;

impl NsCoefficients {
    /// (a, b, c) for iteration `step` (0-based); the GPU path uses the same schedule.
    pub fn at(self, step: usize) -> (f32, f32, f32) {
        match self {
            Self::Keller => KELLER,
            Self::PolarExpress => {
                let last = POLAR_EXPRESS.len() - 1;
                let (a, b, c) = POLAR_EXPRESS[step.min(last)];
                let s = if step < last { PE_SAFETY } else { 1.0 };
                ((a / s) as f32, (b / s.powi(3)) as f32, (c / s.powi(5)) as f32)
            }
        }
    }

    /// Factor on ‖G‖_F in the initial normalisation X₀ = G / (factor·‖G‖_F + 1e-7).
    pub fn norm_factor(self) -> f32 {
        match self {
            Self::Keller => 1.0,
            Self::PolarExpress => PE_SAFETY as f32,
        }
    }
}

/// Approximate polar factor of the row-major `rows×cols` gradient `g` after
/// `steps` quintic iterations; returns a `rows×cols` matrix.
///
/// The Gram matrix is always formed on the short side (X·Xᵀ for wide inputs,
/// Xᵀ·X for tall ones, with the update applied from the right) — the same
/// polynomial as iterating on the transpose, without materialising it, and with
/// s×s Gram products where s = min(rows, cols). A zero matrix maps to zero.
///
/// # Panics
/// If `g.len() != rows * cols`.
pub fn newton_schulz(g: &[f32], rows: usize, cols: usize, steps: usize, coeffs: NsCoefficients) -> Vec<f32> {
    assert_eq!(g.len(), rows * cols, "newton_schulz: g must be {rows}×{cols}");
    let tall = rows > cols;
    let (short, long) = (rows.min(cols), rows.max(cols));

    let norm = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
    let scale = 1.0 / (coeffs.norm_factor() * norm + NORM_EPS);
    let mut x: Vec<f32> = g.iter().map(|&v| v * scale).collect();
    let mut next = vec![0.0f32; x.len()];
    let mut gram = vec![0.0f32; short * short];
    let mut poly = vec![0.0f32; short * short];

    for step in 0..steps {
        let (a, b, c) = coeffs.at(step);
        // gram = X·Xᵀ (wide) or Xᵀ·X (tall).
        matmul(&mut gram, &x, &x, short, long, short, tall, !tall, 1.0, 0.0);
        // poly = b·gram + c·gram².
        poly.copy_from_slice(&gram);
        matmul(&mut poly, &gram, &gram, short, short, short, false, false, c, b);
        // next = a·X + poly·X (wide) or a·X + X·poly (tall).
        next.copy_from_slice(&x);
        if tall {
            matmul(&mut next, &x, &poly, long, short, short, false, false, 1.0, a);
        } else {
            matmul(&mut next, &poly, &x, short, short, long, false, false, 1.0, a);
        }
        std::mem::swap(&mut x, &mut next);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::svd::singular_values;
    use crate::linalg::svd::tests::with_singular_values;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Singular values spread evenly over [0.1, 1]·scale.
    fn spread(k: usize, scale: f64) -> Vec<f64> {
        (0..k).map(|i| scale * (1.0 - 0.9 * i as f64 / (k - 1) as f64)).collect()
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| a[(i % rows) * cols + i / rows]).collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn polar_express_converges_to_polar_factor() {
        let mut rng = StdRng::seed_from_u64(21);
        for (rows, cols) in [(32, 48), (48, 32), (40, 40)] {
            let k = rows.min(cols);
            let (g, u, v) = with_singular_values(rows, cols, &spread(k, 37.0), &mut rng);
            let x = newton_schulz(&g, rows, cols, 10, NsCoefficients::PolarExpress);
            for s in singular_values(&x, rows, cols).unwrap() {
                assert!((s - 1.0).abs() < 1e-3, "{rows}×{cols}: σ = {s}");
            }
            let uv = &u * v.transpose();
            let want: Vec<f32> = (0..rows * cols).map(|i| uv[(i / cols, i % cols)] as f32).collect();
            let err = max_abs_diff(&x, &want);
            assert!(err < 1e-3, "{rows}×{cols}: max |X − U·Vᵀ| = {err}");
        }
    }

    #[test]
    fn keller_five_steps_lands_in_its_band() {
        let mut rng = StdRng::seed_from_u64(22);
        let (rows, cols) = (32, 64);
        let (g, _, _) = with_singular_values(rows, cols, &spread(32, 0.01), &mut rng);
        let x = newton_schulz(&g, rows, cols, 5, NsCoefficients::Keller);
        let s = singular_values(&x, rows, cols).unwrap();
        let (lo, hi) = (s[s.len() - 1], s[0]);
        assert!(lo > 0.65 && hi < 1.2, "σ range [{lo}, {hi}]");
        // It does not converge: the band is visibly wider than Polar Express's.
        assert!(hi - lo > 0.1, "σ range [{lo}, {hi}]");
    }

    #[test]
    fn transpose_consistent() {
        let mut rng = StdRng::seed_from_u64(23);
        let (rows, cols) = (9, 23);
        let g: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>() - 0.5).collect();
        let gt = transpose(&g, rows, cols);
        for coeffs in [NsCoefficients::Keller, NsCoefficients::PolarExpress] {
            let wide = newton_schulz(&g, rows, cols, 5, coeffs);
            let tall = newton_schulz(&gt, cols, rows, 5, coeffs);
            let err = max_abs_diff(&transpose(&tall, cols, rows), &wide);
            assert!(err < 1e-5, "{coeffs:?}: {err}");
        }
    }

    #[test]
    fn zero_matrix_stays_zero() {
        for coeffs in [NsCoefficients::Keller, NsCoefficients::PolarExpress] {
            let x = newton_schulz(&[0.0; 12], 3, 4, 5, coeffs);
            assert!(x.iter().all(|&v| v == 0.0), "{x:?}");
        }
    }

    #[test]
    fn polar_express_schedule_applies_safety_then_repeats_last() {
        let pe = NsCoefficients::PolarExpress;
        let (a0, b0, c0) = pe.at(0);
        assert!((a0 - (8.28721201814563 / 1.01) as f32).abs() < 1e-5);
        assert!((b0 - (-23.595886519098837 / 1.030301) as f32).abs() < 1e-4);
        assert!((c0 - (17.300387312530933 / 1.01f64.powi(5)) as f32).abs() < 1e-4);
        assert_eq!(pe.at(7), (1.875, -1.25, 0.375));
        assert_eq!(pe.at(50), pe.at(7));
    }
}
