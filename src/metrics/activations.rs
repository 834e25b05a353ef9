//! Representation probes on hidden activations, stored row-major as
//! samples×width (one row per example).

/// Fraction of entries that are exactly 0: the ReLU sparsity of Pascanu et al.
/// NaN for an empty slice (undefined, and a 0 would read as "dense").
pub fn zero_fraction(acts: &[f32]) -> f64 {
    if acts.is_empty() {
        return f64::NAN;
    }
    acts.iter().filter(|&&x| x == 0.0).count() as f64 / acts.len() as f64
}

/// Fraction of the `width` units that are exactly 0 on every sample ("dead"
/// ReLUs: they pass no gradient, so they stay dead). NaN when there are no
/// samples, since every unit would vacuously count as dead.
///
/// # Panics
/// If `width == 0` or `acts.len()` is not a multiple of `width`.
pub fn dead_unit_fraction(acts: &[f32], width: usize) -> f64 {
    let samples = sample_count(acts, width);
    if samples == 0 {
        return f64::NAN;
    }
    let mut alive = vec![false; width];
    for row in acts.chunks_exact(width) {
        alive.iter_mut().zip(row).for_each(|(a, &x)| *a |= x != 0.0);
    }
    alive.iter().filter(|&&a| !a).count() as f64 / width as f64
}

/// Cosine similarity between the per-class mean activation vectors, as a
/// row-major `n_classes×n_classes` matrix: how separable the classes are in
/// this layer (near 1 off the diagonal = collapsed representation).
///
/// Entries involving a class with no samples or an all-zero mean are NaN
/// (the angle is undefined), so they cannot pass for "orthogonal".
///
/// # Panics
/// If `width == 0`, `acts.len()` is not a multiple of `width`, `labels` does
/// not have one entry per sample, or a label is `>= n_classes`.
pub fn class_mean_cosine(acts: &[f32], width: usize, labels: &[u8], n_classes: usize) -> Vec<f64> {
    let samples = sample_count(acts, width);
    assert_eq!(labels.len(), samples, "class_mean_cosine: one label per sample");
    // The cosine is scale-invariant, so per-class sums stand in for means. An
    // empty class has a zero sum, so both undefined cases meet as 0/0 = NaN.
    let mut sums = vec![0.0f64; n_classes * width];
    for (row, &label) in acts.chunks_exact(width).zip(labels) {
        let c = label as usize;
        assert!(c < n_classes, "class_mean_cosine: label {c} >= n_classes {n_classes}");
        sums[c * width..(c + 1) * width].iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
    }
    let class = |c: usize| &sums[c * width..(c + 1) * width];
    let norms: Vec<f64> = (0..n_classes).map(|c| class(c).iter().map(|x| x * x).sum::<f64>().sqrt()).collect();
    let mut out = Vec::with_capacity(n_classes * n_classes);
    for i in 0..n_classes {
        for j in 0..n_classes {
            let dot: f64 = class(i).iter().zip(class(j)).map(|(x, y)| x * y).sum();
            out.push(dot / (norms[i] * norms[j]));
        }
    }
    out
}

fn sample_count(acts: &[f32], width: usize) -> usize {
    assert!(width > 0, "activation width must be positive");
    assert_eq!(acts.len() % width, 0, "activations must be samples×{width}");
    acts.len() / width
}

/// Below this magnitude an activation counts as off for GELU-like functions,
/// which are never exactly zero (GELU's negative lobe reaches only −0.17).
pub const NEAR_ZERO: f32 = 0.01;

/// Fraction of entries with |a| < [`NEAR_ZERO`]: sparsity for smooth activations.
pub fn near_zero_fraction(acts: &[f32]) -> f64 {
    if acts.is_empty() {
        return f64::NAN;
    }
    acts.iter().filter(|a| a.abs() < NEAR_ZERO).count() as f64 / acts.len() as f64
}

/// A layer's sparsity from its two fractions: exact zeros where the layer
/// produces any (ReLU), else |a| < [`NEAR_ZERO`] (GELU, SwiGLU, a normalized
/// token), whose exact zeros are 0 whatever the layer does.
pub fn sparsity(zero_fraction: f64, near_zero_fraction: f64) -> f64 {
    if zero_fraction > 0.0 { zero_fraction } else { near_zero_fraction }
}

/// Sample covariance (width×width, row-major, divisor n − 1) of the rows of
/// `acts`; NaN with fewer than two rows.
pub fn covariance(acts: &[f32], width: usize) -> Vec<f64> {
    let n = acts.len() / width;
    if n < 2 {
        return vec![f64::NAN; width * width];
    }
    let mut mean = vec![0.0f64; width];
    acts.chunks_exact(width).for_each(|row| mean.iter_mut().zip(row).for_each(|(m, &a)| *m += f64::from(a) / n as f64));
    let mut cov = vec![0.0f64; width * width];
    for row in acts.chunks_exact(width) {
        let centered: Vec<f64> = row.iter().zip(&mean).map(|(&a, m)| f64::from(a) - m).collect();
        for (i, ci) in centered.iter().enumerate() {
            for (j, cj) in centered.iter().enumerate().skip(i) {
                cov[i * width + j] += ci * cj;
            }
        }
    }
    for i in 0..width {
        for j in i..width {
            let v = cov[i * width + j] / (n - 1) as f64;
            cov[i * width + j] = v;
            cov[j * width + i] = v;
        }
    }
    cov
}

/// Effective rank of the representations whose `covariance` (width×width) is
/// given: of the singular values of the centered rows, which are the square
/// roots of the covariance's eigenvalues up to a common factor the measure
/// ignores. NaN when the covariance is (fewer than two rows).
pub fn representation_effective_rank(covariance: &[f64], width: usize) -> anyhow::Result<f64> {
    if covariance.iter().any(|v| v.is_nan()) {
        return Ok(f64::NAN);
    }
    // In f64: the square root lifts round-off in the null directions (~1e-7·λ_max
    // in f32) to ~3e-4·σ_max each, enough to move the rank visibly.
    let eigenvalues = faer::MatRef::from_row_major_slice(covariance, width, width)
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| anyhow::anyhow!("eigenvalues of a {width}×{width} covariance: {e:?}"))?;
    // Round-off makes a null direction's eigenvalue slightly negative: 0.
    Ok(super::spectra::effective_rank(&eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 4 samples × 3 units; unit 1 never fires.
    const ACTS: [f32; 12] = [
        1.0, 0.0, 0.0, //
        0.0, 0.0, 2.0, //
        3.0, 0.0, 0.0, //
        0.0, 0.0, -1.0,
    ];

    #[test]
    fn zero_fraction_counts_exact_zeros() {
        assert_eq!(zero_fraction(&ACTS), 8.0 / 12.0);
        assert_eq!(zero_fraction(&[1e-30, -0.0]), 0.5);
        assert!(zero_fraction(&[]).is_nan());
    }

    #[test]
    fn dead_units_are_zero_on_every_sample() {
        assert_eq!(dead_unit_fraction(&ACTS, 3), 1.0 / 3.0);
        assert_eq!(dead_unit_fraction(&ACTS[..3], 3), 2.0 / 3.0);
        assert!(dead_unit_fraction(&[], 3).is_nan());
    }

    #[test]
    #[should_panic(expected = "samples×")]
    fn ragged_activations_panic() {
        dead_unit_fraction(&ACTS[..5], 3);
    }

    #[test]
    fn class_cosines_of_hand_made_means() {
        // Class means: 0 → (2, 0, 0), 1 → (0, 0, 0.5), 2 → (1, 0, 1), class 3 empty.
        let labels = [0, 1, 0, 1, 2, 2];
        let acts = [
            1.0, 0.0, 0.0, //
            0.0, 0.0, 2.0, //
            3.0, 0.0, 0.0, //
            0.0, 0.0, -1.0, //
            1.0, 0.0, 2.0, //
            1.0, 0.0, 0.0,
        ];
        let cos = class_mean_cosine(&acts, 3, &labels, 4);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let want = [[1.0, 0.0, s, f64::NAN], [0.0, 1.0, s, f64::NAN], [s, s, 1.0, f64::NAN], [f64::NAN; 4]];
        for i in 0..4 {
            for j in 0..4 {
                let (g, w) = (cos[i * 4 + j], want[i][j]);
                assert!(g.is_nan() == w.is_nan() && (w.is_nan() || (g - w).abs() < 1e-12), "({i},{j}) {g} vs {w}");
            }
        }
    }

    #[test]
    fn zero_mean_class_gives_nan() {
        let cos = class_mean_cosine(&[1.0, -1.0, 2.0], 1, &[0, 0, 1], 2);
        assert!(cos[0].is_nan() && cos[1].is_nan() && cos[2].is_nan());
        assert_eq!(cos[3], 1.0);
    }

    #[test]
    fn sparsity_is_exact_zeros_where_there_are_any() {
        // ReLU: the zeros, not the small positive values too.
        assert_eq!(super::sparsity(0.25, 0.5), 0.25);
        // GELU: never exactly 0, so |a| < 0.01.
        assert_eq!(super::sparsity(0.0, 0.125), 0.125);
    }

    #[test]
    fn near_zero_counts_small_magnitudes() {
        assert_eq!(near_zero_fraction(&[0.0, 0.005, -0.009, 0.02, -0.5]), 0.6);
        assert!(near_zero_fraction(&[]).is_nan());
    }

    #[test]
    fn representation_rank_counts_the_directions_the_rows_span() {
        // Rows on a line through the mean span one direction; rows with equal
        // spread along three axes, three.
        let line: Vec<f32> = (0..20).flat_map(|i| [i as f32, 2.0 * i as f32, 0.0]).collect();
        let rank = |acts: &[f32]| representation_effective_rank(&covariance(acts, 3), 3).unwrap();
        assert!((rank(&line) - 1.0).abs() < 1e-3, "{}", rank(&line));
        let axes: Vec<f32> = [1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0].to_vec();
        assert!((rank(&axes) - 3.0).abs() < 1e-3, "{}", rank(&axes));
        // A shared offset (the mean) adds no direction.
        let shifted: Vec<f32> = axes.iter().map(|v| v + 5.0).collect();
        assert!((rank(&shifted) - 3.0).abs() < 1e-3, "{}", rank(&shifted));
        assert!(rank(&axes[..3]).is_nan(), "one row has no covariance");
    }

    #[test]
    fn covariance_by_hand() {
        // Two features over three samples: x = (1, 2, 3), y = 2x + 1.
        let acts = [1.0, 3.0, 2.0, 5.0, 3.0, 7.0];
        let c = covariance(&acts, 2);
        let want = [1.0, 2.0, 2.0, 4.0];
        assert!(c.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{c:?}");
        assert!(covariance(&acts[..2], 2).iter().all(|v| v.is_nan()));
    }
}
