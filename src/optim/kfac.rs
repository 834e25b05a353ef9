//! K-FAC (Martens & Grosse 2015, "Optimizing Neural Networks with
//! Kronecker-factored Approximate Curvature") for the weight matrices of linear
//! maps; background document 002 names it.
//!
//! For a map `y = W·a` with gradient `∇W`, the Fisher block of W is approximated
//! by `A ⊗ G` with `A = E[a aᵀ]` (layer inputs) and `G = E[g gᵀ]` (gradients of
//! one loss term with respect to the outputs), so the natural-gradient direction
//! is `V = G⁻¹·∇W·A⁻¹`. The models hand over `a` and `g` through
//! [`crate::models::LayerTaps`]. Choices, each a config key where it is a number:
//!
//! - Statistics from the training batch's own labels (the empirical Fisher, as
//!   the issue and most implementations do), every step, as running averages
//!   with decay `min(1 − 1/k, statistics_decay)` (Martens & Grosse §5, 0.95).
//!   A transformer's tokens are extra rows (K-FAC-expand, Eschenhagen et al.
//!   2023): `A` averages over every row, `G = (1/N)·Σ_rows g gᵀ` with `N` the
//!   loss's terms.
//! - Factored Tikhonov damping with the π correction (Martens & Grosse §6.3):
//!   `F + γ·I` becomes `(A + π√γ·I) ⊗ (G + √γ/π·I)`,
//!   `π² = (tr A / dim A)/(tr G / dim G)`, with a fixed γ = `damping` (their
//!   Levenberg-Marquardt adaptation of γ needs loss evaluations the trainer
//!   does not make).
//! - Damped inverses by f64 eigendecomposition every `inverse_every` steps
//!   (the first included); a failed one keeps the previous inverse.
//! - KL-clipping (Ba, Grosse & Martens 2017, "Distributed Second-Order
//!   Optimization using Kronecker-Factored Approximations"): the directions of
//!   all matrices are scaled by `ν = min(1, √(kl_clip / Σ lr²·⟨V, ∇W⟩))`, then
//!   SGD with momentum and coupled weight decay takes the step, as their
//!   reference implementation does.
//! - No homogeneous coordinate for biases: like every matrix optimizer here,
//!   K-FAC takes the matrices and an auxiliary AdamW the vectors and embeddings.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, StepReport, UpdateRule, accumulate_gram, identity, ranges};
use crate::backend::{Backend, Gemm};
use crate::linalg::damped_inverse;
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KfacConfig {
    pub lr: f32,
    pub momentum: f32,
    /// γ of the Tikhonov damping `F + γ·I`, factored.
    pub damping: f64,
    /// Upper bound of the running averages' decay.
    pub statistics_decay: f32,
    /// Recompute the damped inverses every this many steps (the first step included).
    pub inverse_every: u64,
    /// Bound on lr²·⟨V, ∇W⟩ summed over matrices (the step's predicted KL change).
    pub kl_clip: f64,
    pub weight_decay: f32,
    /// Optimizer of the vectors and embeddings.
    pub aux_adamw: AdamWConfig,
}

impl Default for KfacConfig {
    /// Ba et al.'s reference values (momentum 0.9, decay 0.95, KL clip 1e-3)
    /// with inverses every 20 steps (Martens & Grosse's T₃) and γ = 0.1: one
    /// joint epoch of the split-MNIST MLP ends at test accuracy 0.941 with Ba et
    /// al.'s γ = 1e-3 (set for ImageNet), 0.950 with 1e-2, 0.972 with 0.1.
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            damping: 0.1,
            statistics_decay: 0.95,
            inverse_every: 20,
            kl_clip: 1e-3,
            weight_decay: 0.0,
            aux_adamw: AdamWConfig::default(),
        }
    }
}

/// One matrix's Kronecker factors and their damped inverses.
struct Factors<B: Backend> {
    param: usize,
    /// out×in.
    rows: usize,
    cols: usize,
    /// in×in, `E[a aᵀ]`.
    a: B::Buf,
    /// out×out, `E[g gᵀ]`.
    g: B::Buf,
    a_inverse: B::Buf,
    g_inverse: B::Buf,
}

pub struct Kfac<B: Backend> {
    config: KfacConfig,
    factors: Vec<Factors<B>>,
    momentum: B::Buf,
    /// Store-sized scratch: `G⁻¹·∇W`, then the preconditioned directions.
    half: B::Buf,
    directions: B::Buf,
    failed_inversions: u64,
    last: Vec<StepReport>,
}

impl<B: Backend> Kfac<B> {
    /// Asks the store for the inputs and output gradients of `params` (matrices).
    ///
    /// # Panics
    /// If a parameter is not a matrix.
    pub fn new(backend: &B, store: &mut ParamStore<B>, params: &[usize], config: KfacConfig) -> Self {
        let factors = params
            .iter()
            .map(|&i| {
                let s = &store.specs[i];
                assert!(s.role.is_matrix(), "K-FAC takes matrices only; {} is a {}", s.name, s.role.as_str());
                let (rows, cols) = (s.rows, s.cols);
                Factors {
                    param: i,
                    rows,
                    cols,
                    a: backend.zeros(cols * cols),
                    g: backend.zeros(rows * rows),
                    a_inverse: identity(backend, cols),
                    g_inverse: identity(backend, rows),
                }
            })
            .collect();
        store.taps.request(params);
        let n = store.len();
        let [momentum, half, directions] = std::array::from_fn(|_| backend.zeros(n));
        Self { config, factors, momentum, half, directions, failed_inversions: 0, last: Vec::new() }
    }
}

/// `π` of the factored damping: √((tr A / dim A)/(tr G / dim G)), 1 when a trace is 0.
fn pi_correction(a: &[f32], a_dim: usize, g: &[f32], g_dim: usize) -> f64 {
    let mean_diagonal = |m: &[f32], n: usize| (0..n).map(|i| m[i * n + i] as f64).sum::<f64>() / n as f64;
    let (ta, tg) = (mean_diagonal(a, a_dim), mean_diagonal(g, g_dim));
    if ta > 0.0 && tg > 0.0 && (ta / tg).is_finite() { (ta / tg).sqrt() } else { 1.0 }
}

impl<B: Backend> Factors<B> {
    /// Recomputes both damped inverses on the host in f64; reports what it did.
    /// `Ok(false)`: a factor could not be inverted, the previous inverses stay.
    fn invert(&mut self, backend: &B, damping: f64, last: &mut Vec<StepReport>) -> Result<bool> {
        let (a, g) = (backend.download(B::all(&self.a))?, backend.download(B::all(&self.g))?);
        let pi = pi_correction(&a, self.cols, &g, self.rows);
        let (damping_a, damping_g) = (pi * damping.sqrt(), damping.sqrt() / pi);
        let (Ok(a_inverse), Ok(g_inverse)) = (damped_inverse(&a, self.cols, damping_a), damped_inverse(&g, self.rows, damping_g)) else {
            return Ok(false);
        };
        self.a_inverse = backend.upload(&a_inverse.root);
        self.g_inverse = backend.upload(&g_inverse.root);
        for (name, value) in [
            ("kfac_damping_a", damping_a),
            ("kfac_damping_g", damping_g),
            ("kfac_condition_a", a_inverse.condition),
            ("kfac_condition_g", g_inverse.condition),
        ] {
            last.push(StepReport { param: self.param, name, value });
        }
        Ok(true)
    }
}

impl<B: Backend> UpdateRule<B> for Kfac<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        mut captures: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        self.last.clear();
        let decay = (1.0 - 1.0 / t as f32).min(c.statistics_decay);
        let refresh = (t - 1).is_multiple_of(c.inverse_every.max(1));
        let terms = store.taps.loss_terms as f32;
        ensure!(terms > 0.0, "K-FAC: the model's loss did not say how many terms it averages (LayerTaps::loss_terms)");
        let mut predicted_kl = 0.0;
        for f in &mut self.factors {
            let (m, n, r) = (f.rows, f.cols, store.specs[f.param].range());
            let Some(tap) = store.taps.get(f.param) else {
                bail!("K-FAC: no layer inputs recorded for {}: its model's backward pass does not tap it", store.specs[f.param].name);
            };
            let rows = tap.rows;
            // A ← d·A + (1−d)·xᵀx/rows;  G ← d·G + (1−d)·N·dyᵀdy (N·dy is one term's gradient).
            accumulate_gram(backend, &mut f.a, B::all(&tap.inputs), (rows, n), false, (1.0 - decay) / rows as f32, decay);
            accumulate_gram(backend, &mut f.g, B::all(&tap.output_grads), (rows, m), false, (1.0 - decay) * terms, decay);
            if refresh && !f.invert(backend, c.damping, &mut self.last).context("K-FAC inverse")? {
                self.failed_inversions += 1;
            }
            // V = G⁻¹·∇W·A⁻¹.
            let grad = B::view(&store.grads, r.clone());
            // An m×n product over the inner dimension k.
            let inner = |k| Gemm { m, k, n, trans_a: false, trans_b: false };
            backend.matmul(B::view_mut(&mut self.half, r.clone()), B::all(&f.g_inverse), grad, inner(m), 1.0, 0.0);
            let half = B::view(&self.half, r.clone());
            backend.matmul(B::view_mut(&mut self.directions, r.clone()), half, B::all(&f.a_inverse), inner(n), 1.0, 0.0);
            predicted_kl += (lr as f64).powi(2) * backend.dot(B::view(&self.directions, r.clone()), grad)?;
            if let Some(caps) = captures.as_deref_mut() {
                caps.push(Capture { param: f.param, kind: "kfac_preconditioned", values: backend.download(B::view(&self.directions, r))? });
            }
        }
        let nu = if predicted_kl > 0.0 { (c.kl_clip / predicted_kl).sqrt().min(1.0) } else { 1.0 };
        let ranges = ranges(store, params);
        for (f, r) in self.factors.iter().zip(&ranges) {
            backend.scale(B::view_mut(&mut self.directions, r.clone()), nu as f32);
            self.last.push(StepReport { param: f.param, name: "kfac_kl_scale", value: nu });
        }
        backend.sgd_step(&mut store.values, &self.directions, &mut self.momentum, &ranges, lr, c.momentum, false, c.weight_decay);
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("momentum".into(), &mut self.momentum)];
        for f in &mut self.factors {
            let p = f.param;
            state.push((format!("p{p}.a"), &mut f.a));
            state.push((format!("p{p}.g"), &mut f.g));
            state.push((format!("p{p}.a_inverse"), &mut f.a_inverse));
            state.push((format!("p{p}.g_inverse"), &mut f.g_inverse));
        }
        state
    }

    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        vec![("kfac_failed_inversions", self.failed_inversions as f64)]
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }
}
