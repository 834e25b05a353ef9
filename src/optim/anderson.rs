//! AndersonGDA (background document 001): gradient descent accelerated by
//! Anderson mixing, each parameter tensor on its own. The document gives no
//! code; the standard published form is used:
//!
//! - the fixed-point map is a gradient step, `G(x) = x − lr·d` with residual
//!   `r = G(x) − x = −lr·d`;
//! - `d = g + β·(g − g_prev)`: the "gradient-difference term" as in Adan's
//!   Nesterov-style gradient difference (Xie et al. 2022); β = 0 is plain GD;
//! - Anderson type II with memory m (Walker & Ni 2011): with the last m
//!   differences ΔX of iterates and ΔR of residuals, γ solves
//!   `(ΔRᵀΔR + λ·tr(ΔRᵀΔR)/m·I)·γ = ΔRᵀ·r` (Tikhonov, λ = `regularization`,
//!   scaled so it does not depend on the gradients' scale) and
//!   `x ← x + r − (ΔX + ΔR)·γ`.
//!
//! As the document's table says, there is no safeguard: a mixed step is taken
//! whatever it does to the loss. With m at least the dimension, on a quadratic
//! this is GMRES, which the tests check.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AndersonGdaConfig {
    pub lr: f32,
    /// Differences kept (Anderson's memory m).
    pub memory: usize,
    /// Weight of the gradient difference g − g_prev in the step direction.
    pub beta: f32,
    /// λ of the Tikhonov term, relative to the mean diagonal of ΔRᵀΔR.
    pub regularization: f64,
}

impl Default for AndersonGdaConfig {
    /// The document's improved configuration (lr 0.01, m 2, β 0); the first one
    /// (lr 0.001, m 3) left β unstated.
    fn default() -> Self {
        Self { lr: 0.01, memory: 2, beta: 0.0, regularization: 1e-8 }
    }
}

pub struct AndersonGda<B: Backend> {
    config: AndersonGdaConfig,
    /// Ring buffers of the last `memory` ΔX and ΔR (store-sized each).
    dx: Vec<B::Buf>,
    dr: Vec<B::Buf>,
    previous_x: B::Buf,
    previous_r: B::Buf,
    previous_g: B::Buf,
    /// This step's residual.
    r: B::Buf,
    /// The last step's memory used and ‖γ‖₂ per parameter.
    last: Vec<StepReport>,
}

impl<B: Backend> AndersonGda<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: AndersonGdaConfig) -> Self {
        let n = store.len();
        let ring = || (0..config.memory).map(|_| backend.zeros(n)).collect();
        Self {
            config,
            dx: ring(),
            dr: ring(),
            previous_x: backend.zeros(n),
            previous_r: backend.zeros(n),
            previous_g: backend.zeros(n),
            r: backend.zeros(n),
            last: Vec::new(),
        }
    }
}

/// One parameter's part of a store-sized buffer.
fn part<'a, B: Backend>(buf: &'a B::Buf, range: &std::ops::Range<usize>) -> B::View<'a> {
    B::view(buf, range.clone())
}

fn part_mut<'a, B: Backend>(buf: &'a mut B::Buf, range: &std::ops::Range<usize>) -> B::ViewMut<'a> {
    B::view_mut(buf, range.clone())
}

/// Solves the small system `a·x = b` (faer's LU with partial pivoting); None
/// when it is singular or the solution is not finite.
fn solve(a: &[Vec<f64>], b: &[f64]) -> Option<Vec<f64>> {
    use faer::linalg::solvers::Solve;
    let n = b.len();
    let lu = faer::Mat::from_fn(n, n, |i, j| a[i][j]).partial_piv_lu();
    let x = lu.solve(faer::Mat::from_fn(n, 1, |i, _| b[i]));
    let x: Vec<f64> = (0..n).map(|i| x[(i, 0)]).collect();
    x.iter().all(|v| v.is_finite()).then_some(x)
}

impl<B: Backend> UpdateRule<B> for AndersonGda<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        _: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        // Step t (1-based, restored with checkpoints) holds the differences of steps 2..=t.
        let first = t == 1;
        let slot = (t.saturating_sub(2) % c.memory as u64) as usize;
        let held = (t.saturating_sub(1) as usize).min(c.memory);
        self.last.clear();
        for &i in params {
            let range = store.specs[i].range();
            // r = −lr·(g + β·(g − g_prev)).
            backend.copy(part_mut::<B>(&mut self.r, &range), part::<B>(&store.grads, &range));
            if c.beta > 0.0 && !first {
                backend.axpby(part_mut::<B>(&mut self.r, &range), -c.beta, part::<B>(&self.previous_g, &range), 1.0 + c.beta);
            }
            // Only the gradient-difference term reads the previous gradient.
            if c.beta > 0.0 {
                backend.copy(part_mut::<B>(&mut self.previous_g, &range), part::<B>(&store.grads, &range));
            }
            backend.scale(part_mut::<B>(&mut self.r, &range), -lr);
            if !first {
                // The newest differences overwrite the oldest slot.
                backend.copy(part_mut::<B>(&mut self.dx[slot], &range), part::<B>(&store.values, &range));
                backend.axpby(part_mut::<B>(&mut self.dx[slot], &range), -1.0, part::<B>(&self.previous_x, &range), 1.0);
                backend.copy(part_mut::<B>(&mut self.dr[slot], &range), part::<B>(&self.r, &range));
                backend.axpby(part_mut::<B>(&mut self.dr[slot], &range), -1.0, part::<B>(&self.previous_r, &range), 1.0);
            }
            backend.copy(part_mut::<B>(&mut self.previous_x, &range), part::<B>(&store.values, &range));
            backend.copy(part_mut::<B>(&mut self.previous_r, &range), part::<B>(&self.r, &range));
            let gram: Vec<Vec<f64>> = (0..held)
                .map(|a| (0..held).map(|b| backend.dot(part::<B>(&self.dr[a], &range), part::<B>(&self.dr[b], &range))).collect())
                .collect::<Result<_>>()?;
            let rhs: Vec<f64> =
                (0..held).map(|a| backend.dot(part::<B>(&self.dr[a], &range), part::<B>(&self.r, &range))).collect::<Result<_>>()?;
            let trace = (0..held).map(|a| gram[a][a]).sum::<f64>() / held.max(1) as f64;
            let damped: Vec<Vec<f64>> = gram
                .iter()
                .enumerate()
                .map(|(a, row)| row.iter().enumerate().map(|(b, &v)| if a == b { v + c.regularization * trace } else { v }).collect())
                .collect();
            // x ← x + r − Σ γ_a·(ΔX_a + ΔR_a); a singular system (all differences zero) mixes nothing.
            let gamma = if held > 0 { solve(&damped, &rhs).unwrap_or_else(|| vec![0.0; held]) } else { Vec::new() };
            self.last.push(StepReport { param: i, name: "anderson_memory_used", value: held as f64 });
            self.last.push(StepReport { param: i, name: "anderson_mixing_norm", value: gamma.iter().map(|g| g * g).sum::<f64>().sqrt() });
            backend.axpby(part_mut::<B>(&mut store.values, &range), 1.0, part::<B>(&self.r, &range), 1.0);
            for (a, &g) in gamma.iter().enumerate() {
                backend.axpby(part_mut::<B>(&mut store.values, &range), -g as f32, part::<B>(&self.dx[a], &range), 1.0);
                backend.axpby(part_mut::<B>(&mut store.values, &range), -g as f32, part::<B>(&self.dr[a], &range), 1.0);
            }
        }
        Ok(())
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state: Vec<(String, &mut B::Buf)> = vec![
            ("previous_x".into(), &mut self.previous_x),
            ("previous_r".into(), &mut self.previous_r),
            ("previous_g".into(), &mut self.previous_g),
        ];
        state.extend(self.dx.iter_mut().enumerate().map(|(k, b)| (format!("dx{k}"), b)));
        state.extend(self.dr.iter_mut().enumerate().map(|(k, b)| (format!("dr{k}"), b)));
        state
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_systems_solve_or_say_singular() {
        let x = super::solve(&[vec![4.0, 1.0], vec![1.0, 3.0]], &[1.0, 2.0]).unwrap();
        assert!((x[0] - 1.0 / 11.0).abs() < 1e-12 && (x[1] - 7.0 / 11.0).abs() < 1e-12, "{x:?}");
        assert!(super::solve(&[vec![0.0, 0.0], vec![0.0, 0.0]], &[1.0, 1.0]).is_none());
    }
}
