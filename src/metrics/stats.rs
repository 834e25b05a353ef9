//! Confidence intervals over seeds: Student's t, so that "A forgets less than
//! B" is a statement a table supports or does not.

/// A mean with its 95% confidence interval (`half_width` is NaN below two values).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub half_width: f64,
    pub n: usize,
}

impl Interval {
    /// Mean of `xs` ± t₀.₉₇₅,ₙ₋₁ · s/√n (s: sample standard deviation).
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let half_width = if n < 2 {
            f64::NAN
        } else {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            student_t_quantile(0.975, (n - 1) as u32) * (var / n as f64).sqrt()
        };
        Self { mean, half_width, n }
    }

    /// The paired interval of `a[i] − b[i]` (the same seeds in the same order).
    pub fn paired(a: &[f64], b: &[f64]) -> Self {
        assert_eq!(a.len(), b.len(), "paired samples must be of one length");
        Self::of(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
    }

    /// Whether the interval lies entirely above (1), below (−1) zero, or spans it (0).
    pub fn sign(&self) -> i32 {
        if self.mean - self.half_width > 0.0 {
            1
        } else if self.mean + self.half_width < 0.0 {
            -1
        } else {
            0
        }
    }
}

/// P(|T| ≤ t) for Student's t with integer `df`, in closed form (Abramowitz &
/// Stegun 26.7.3–4: finite sums in θ = atan(t/√df)).
fn central_probability(t: f64, df: u32) -> f64 {
    let theta = (t / f64::from(df).sqrt()).atan();
    let (s, c2) = (theta.sin(), theta.cos().powi(2));
    if df % 2 == 1 {
        // (2/π)(θ + sinθ·cosθ·(1 + (2/3)cos²θ + (2·4)/(3·5)cos⁴θ + …)), df − 2 terms' worth.
        let (mut term, mut sum) = (1.0, 0.0);
        if df > 1 {
            sum = 1.0;
            for k in 1..(df - 1) / 2 {
                term *= c2 * (2 * k) as f64 / (2 * k + 1) as f64;
                sum += term;
            }
        }
        2.0 / std::f64::consts::PI * (theta + s * theta.cos() * sum)
    } else {
        // sinθ·(1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + …).
        let (mut term, mut sum) = (1.0, 1.0);
        for k in 1..df / 2 {
            term *= c2 * (2 * k - 1) as f64 / (2 * k) as f64;
            sum += term;
        }
        s * sum
    }
}

/// The `p` quantile (p > ½) of Student's t with `df` degrees of freedom, by
/// bisection on the closed-form CDF (to f64 precision).
pub fn student_t_quantile(p: f64, df: u32) -> f64 {
    assert!(df >= 1 && p > 0.5 && p < 1.0, "student_t_quantile needs df ≥ 1 and ½ < p < 1");
    let target = 2.0 * p - 1.0;
    let (mut lo, mut hi) = (0.0, 1.0);
    while central_probability(hi, df) < target {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if central_probability(mid, df) < target { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_published_table() {
        // t₀.₉₇₅ from standard tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
        for (df, t) in
            [(1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445), (5, 2.570582), (9, 2.262157), (30, 2.042272), (100, 1.983972)]
        {
            let q = student_t_quantile(0.975, df);
            assert!((q - t).abs() < 1e-5, "df {df}: {q} vs {t}");
        }
    }

    #[test]
    fn intervals_of_known_samples() {
        // Mean 2, s = 1, n = 5: 2 ± 2.776445/√5.
        let i = Interval::of(&[1.0, 3.0, 1.0, 3.0, 2.0]);
        assert!((i.mean - 2.0).abs() < 1e-12 && (i.half_width - 2.776445 / 5f64.sqrt()).abs() < 1e-5, "{i:?}");
        assert!(Interval::of(&[0.3]).half_width.is_nan());
        // Paired: a constant shift of 0.1 has a zero-width interval above zero.
        let p = Interval::paired(&[0.5, 0.7, 0.6], &[0.4, 0.6, 0.5]);
        assert!((p.mean - 0.1).abs() < 1e-12 && p.half_width < 1e-12 && p.sign() == 1);
        assert_eq!(Interval::paired(&[0.5, 0.4], &[0.4, 0.5]).sign(), 0);
    }
}
