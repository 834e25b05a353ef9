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

use std::ops::Range;

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
    history: History<B>,
    previous_g: B::Buf,
    /// This step's residual.
    r: B::Buf,
    /// The last step's memory used and ‖γ‖₂ per parameter.
    last: Vec<StepReport>,
}

impl<B: Backend> AndersonGda<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: AndersonGdaConfig) -> Self {
        let n = store.len();
        Self {
            config,
            history: History::new(backend, n, config.memory),
            previous_g: backend.zeros(n),
            r: backend.zeros(n),
            last: Vec::new(),
        }
    }
}

/// One parameter's part of a store-sized buffer.
fn part<'a, B: Backend>(buf: &'a B::Buf, range: &Range<usize>) -> B::View<'a> {
    B::view(buf, range.clone())
}

fn part_mut<'a, B: Backend>(buf: &'a mut B::Buf, range: &Range<usize>) -> B::ViewMut<'a> {
    B::view_mut(buf, range.clone())
}

/// Anderson mixing's memory: ring buffers (store-sized) of the last `memory`
/// differences ΔX of iterates and ΔR of residuals, shared by AndersonGDA (per
/// parameter) and GDA2 (over all parameters at once).
pub(super) struct History<B: Backend> {
    dx: Vec<B::Buf>,
    dr: Vec<B::Buf>,
    previous_x: B::Buf,
    previous_r: B::Buf,
}

/// What the mixing coefficients are solved from, over one range.
pub(super) struct Products {
    /// ΔRᵀΔR.
    pub rr: Vec<Vec<f64>>,
    /// ΔRᵀr.
    pub rhs: Vec<f64>,
}

impl<B: Backend> History<B> {
    pub fn new(backend: &B, n: usize, memory: usize) -> Self {
        let ring = || (0..memory).map(|_| backend.zeros(n)).collect();
        Self { dx: ring(), dr: ring(), previous_x: backend.zeros(n), previous_r: backend.zeros(n) }
    }

    /// Differences held at step `t` (1-based, restored with checkpoints): those of steps 2..=t.
    pub fn held(&self, t: u64) -> usize {
        (t.saturating_sub(1) as usize).min(self.dx.len())
    }

    /// Records this step's iterate `x` and residual `r` on `range`; from step 2
    /// on, their differences to the previous ones overwrite the oldest slot.
    pub fn record(&mut self, backend: &B, range: &Range<usize>, x: &B::Buf, r: &B::Buf, t: u64) {
        if let Some(slot) = self.newest(t) {
            for (diff, previous, now) in [(&mut self.dx[slot], &mut self.previous_x, x), (&mut self.dr[slot], &mut self.previous_r, r)] {
                backend.copy(part_mut::<B>(diff, range), part::<B>(now, range));
                backend.axpby(part_mut::<B>(diff, range), -1.0, part::<B>(previous, range), 1.0);
            }
        }
        backend.copy(part_mut::<B>(&mut self.previous_x, range), part::<B>(x, range));
        backend.copy(part_mut::<B>(&mut self.previous_r, range), part::<B>(r, range));
    }

    /// The inner products of the `held` residual differences with each other and with `r`.
    pub fn products(&self, backend: &B, range: &Range<usize>, r: &B::Buf, held: usize) -> Result<Products> {
        let rhs = (0..held).map(|a| backend.dot(part::<B>(&self.dr[a], range), part::<B>(r, range))).collect::<Result<_>>()?;
        Ok(Products { rr: gram::<B>(backend, &self.dr[..held], range)?, rhs })
    }

    /// ΔXᵀΔX of the `held` iterate differences.
    pub fn step_gram(&self, backend: &B, range: &Range<usize>, held: usize) -> Result<Vec<Vec<f64>>> {
        gram::<B>(backend, &self.dx[..held], range)
    }

    /// The slot of step `t`'s differences (none before step 2): the oldest is overwritten.
    pub fn newest(&self, t: u64) -> Option<usize> {
        (t > 1).then(|| ((t - 2) % self.dx.len() as u64) as usize)
    }

    /// `out += −Σ γ_a·(ΔX_a + ΔR_a)` on `range`.
    pub fn subtract_mixed(&self, backend: &B, out: &mut B::Buf, range: &Range<usize>, gamma: &[f64]) {
        for (a, &g) in gamma.iter().enumerate() {
            backend.axpby(part_mut::<B>(out, range), -g as f32, part::<B>(&self.dx[a], range), 1.0);
            backend.axpby(part_mut::<B>(out, range), -g as f32, part::<B>(&self.dr[a], range), 1.0);
        }
    }

    pub fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state: Vec<(String, &mut B::Buf)> =
            vec![("previous_x".into(), &mut self.previous_x), ("previous_r".into(), &mut self.previous_r)];
        state.extend(self.dx.iter_mut().enumerate().map(|(k, b)| (format!("dx{k}"), b)));
        state.extend(self.dr.iter_mut().enumerate().map(|(k, b)| (format!("dr{k}"), b)));
        state
    }
}

/// The Gram matrix of `d` over `range`.
fn gram<B: Backend>(backend: &B, d: &[B::Buf], range: &Range<usize>) -> Result<Vec<Vec<f64>>> {
    d.iter().map(|a| d.iter().map(|b| backend.dot(part::<B>(a, range), part::<B>(b, range))).collect()).collect()
}

/// `a + λ·b` for square matrices (a Tikhonov-regularized Gram matrix).
pub(super) fn add_scaled(a: &[Vec<f64>], lambda: f64, b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter().zip(b).map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| x + lambda * y).collect()).collect()
}

/// Solves the small system `a·x = b` (faer's LU with partial pivoting); None
/// when it is singular or the solution is not finite.
pub(super) fn solve(a: &[Vec<f64>], b: &[f64]) -> Option<Vec<f64>> {
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
        let first = t == 1;
        let held = self.history.held(t);
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
            self.history.record(backend, &range, &store.values, &self.r, t);
            let products = self.history.products(backend, &range, &self.r, held)?;
            // Tikhonov relative to the mean diagonal of ΔRᵀΔR; only ΔRᵀΔR's diagonal is regularized.
            let trace = (0..held).map(|a| products.rr[a][a]).sum::<f64>() / held.max(1) as f64;
            let eye: Vec<Vec<f64>> = (0..held).map(|a| (0..held).map(|b| f64::from(u8::from(a == b))).collect()).collect();
            let damped = add_scaled(&products.rr, c.regularization * trace, &eye);
            // x ← x + r − Σ γ_a·(ΔX_a + ΔR_a); a singular system (all differences zero) mixes nothing.
            let gamma = if held > 0 { solve(&damped, &products.rhs).unwrap_or_else(|| vec![0.0; held]) } else { Vec::new() };
            self.last.push(StepReport { param: i, name: "anderson_memory_used", value: held as f64 });
            self.last.push(StepReport { param: i, name: "anderson_mixing_norm", value: gamma.iter().map(|g| g * g).sum::<f64>().sqrt() });
            backend.axpby(part_mut::<B>(&mut store.values, &range), 1.0, part::<B>(&self.r, &range), 1.0);
            self.history.subtract_mixed(backend, &mut store.values, &range, &gamma);
        }
        Ok(())
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = self.history.state_mut();
        state.push(("previous_g".into(), &mut self.previous_g));
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
