//! GDA2 (background document 001): Adam as the base step, Anderson mixing over
//! all parameters flattened into one vector, with a trust region and a descent
//! check. The document gives no code, only its comparison table: Adam base,
//! "gradient-curvature aware" history weighting, "curvature-adaptive"
//! regularization, trust region + descent check, global scope. Stochastic
//! Anderson Mixing (SAM; Wei, Bao & Liu, NeurIPS 2021), the published Anderson
//! method for stochastic nonconvex training, has each of these; optlab takes
//! its forms:
//!
//! - the fixed-point map is an Adam step (SAM's preconditioned mixing with
//!   Adam as the preconditioner): residual `r = −lr·m̂/(√v̂ + ε)`;
//! - the mixing coefficients solve SAM's adaptively regularized least squares
//!   `(ΔRᵀΔR + δ·ΔXᵀΔX)·γ = ΔRᵀr` with `δ = c·‖r‖²/(‖Δx_newest‖² + ε₀)`
//!   (`c` = `regularization`): the penalty on a history pair grows with its
//!   step ‖ΔX‖ against its residual (gradient) difference ‖ΔR‖, so pairs whose
//!   gradients barely changed over a long step, i.e. low measured curvature or
//!   noise, are down-weighted; δ itself follows the residual-to-step ratio;
//! - step `s = r − (ΔX + ΔR)·γ` (SAM with α = β = 1);
//! - descent check (SAM's positive-definiteness safeguard): the mixed step is
//!   kept only if `⟨s, r⟩ ≥ μ·‖r‖²` (μ = `descent_margin`), else `s = r`, the
//!   plain Adam step;
//! - trust region: `‖s‖ ≤ trust_ratio·‖r‖`, scaled down to it otherwise.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::anderson::{History, add_scaled, solve};
use super::{Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::models::ParamStore;

/// ε₀ of SAM's δ: keeps it finite when the newest step was zero.
const STEP_FLOOR: f64 = 1e-16;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gda2Config {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Differences kept (Anderson's memory m).
    pub memory: usize,
    /// c of the adaptive regularization δ = c·‖r‖²/‖Δx‖².
    pub regularization: f64,
    /// μ of the descent check ⟨s, r⟩ ≥ μ·‖r‖².
    pub descent_margin: f64,
    /// Largest ‖s‖/‖r‖ (the trust region, relative to the Adam step).
    pub trust_ratio: f64,
}

impl Default for Gda2Config {
    /// Adam's defaults; memory 5, c 1, μ 0.1 and a trust region of twice the
    /// Adam step (the document gives none of them). With c = 0.01 the descent
    /// check rejected 55% of the mixed steps of a joint MNIST epoch; with c = 1, none.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, memory: 5, regularization: 1.0, descent_margin: 0.1, trust_ratio: 2.0 }
    }
}

pub struct Gda2<B: Backend> {
    config: Gda2Config,
    history: History<B>,
    m: B::Buf,
    v: B::Buf,
    /// This step's residual (the Adam step) and the step taken.
    r: B::Buf,
    s: B::Buf,
    last: Vec<StepReport>,
}

impl<B: Backend> Gda2<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: Gda2Config) -> Self {
        let n = store.len();
        let [m, v, r, s] = std::array::from_fn(|_| backend.zeros(n));
        Self { config, history: History::new(backend, n, config.memory), m, v, r, s, last: Vec::new() }
    }
}

impl<B: Backend> UpdateRule<B> for Gda2<B> {
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
        // Global: one vector over the whole store (GDA2 owns every parameter).
        let all = 0..store.len();
        let g = B::all(&store.grads);
        backend.axpby(B::all_mut(&mut self.m), 1.0 - c.beta1, g, c.beta1);
        backend.ema_square(B::all_mut(&mut self.v), g, c.beta2);
        let (bias1, bias2) = (1.0 - c.beta1.powi(t as i32), 1.0 - c.beta2.powi(t as i32));
        backend.adam_direction(B::all_mut(&mut self.r), B::all(&self.m), B::all(&self.v), bias1, bias2, c.eps);
        backend.scale(B::all_mut(&mut self.r), -lr);
        self.history.record(backend, &all, &store.values, &self.r, t);
        let held = self.history.held(t);
        let r_norm2 = backend.sum_squares(B::all(&self.r))?;
        let mut delta = 0.0;
        let gamma = if held > 0 {
            let products = self.history.products(backend, &all, &self.r, held)?;
            let steps = self.history.step_gram(backend, &all, held)?;
            // ‖Δx_newest‖² is on ΔXᵀΔX's diagonal: held > 0 means step ≥ 2.
            let newest = self.history.newest(t).expect("differences are held from step 2 on");
            delta = c.regularization * r_norm2 / (steps[newest][newest] + STEP_FLOOR);
            let system = add_scaled(&products.rr, delta, &steps);
            solve(&system, &products.rhs)
        } else {
            None
        };
        // s = r − (ΔX + ΔR)·γ, kept if it passes the descent check.
        backend.copy(B::all_mut(&mut self.s), B::all(&self.r));
        let mut rejected = false;
        if let Some(gamma) = &gamma {
            self.history.subtract_mixed(backend, &mut self.s, &all, gamma);
            if backend.dot(B::all(&self.s), B::all(&self.r))? < c.descent_margin * r_norm2 {
                backend.copy(B::all_mut(&mut self.s), B::all(&self.r));
                rejected = true;
            }
        }
        let s_norm = backend.sum_squares(B::all(&self.s))?.sqrt();
        let limit = c.trust_ratio * r_norm2.sqrt();
        let trust_scale = if s_norm > limit { limit / s_norm } else { 1.0 };
        backend.axpby(B::all_mut(&mut store.values), trust_scale as f32, B::all(&self.s), 1.0);
        let mixing_norm = gamma.filter(|_| !rejected).map_or(0.0, |g| g.iter().map(|x| x * x).sum::<f64>().sqrt());
        self.last.clear();
        for &i in params {
            for (name, value) in [
                ("gda2_memory_used", held as f64),
                ("gda2_mixing_norm", mixing_norm),
                ("gda2_regularization", delta),
                ("gda2_rejected", f64::from(u8::from(rejected))),
                ("gda2_trust_scale", trust_scale),
            ] {
                self.last.push(StepReport { param: i, name, value });
            }
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = self.history.state_mut();
        state.push(("m".into(), &mut self.m));
        state.push(("v".into(), &mut self.v));
        state
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }
}
