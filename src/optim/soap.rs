//! SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam")
//! for matrices: Adam run in the eigenbasis of Shampoo's statistics. Per m×n
//! matrix, EMAs `L = G·Gᵀ`, `R = Gᵀ·G` give bases `Q_L`, `Q_R` (eigenvectors in
//! f64, every `precondition_frequency` steps); the second moment lives in the
//! rotated space, `v ← β2·v + (1−β2)·(Q_Lᵀ·G·Q_R)²`, the first moment in the
//! original one (so a new basis needs no re-projection of it), and the step is
//! `Q_L·adam(Q_Lᵀ·m·Q_R, v)·Q_Rᵀ` with Adam's bias corrections.
//!
//! As in the official implementation, the first call only gathers statistics
//! and computes the first bases (the matrices do not move), and every later
//! step rotates with the bases of the statistics so far, then adds its gradient
//! to them: a basis never comes from the gradient it rotates. (In its own
//! singular basis a gradient is diagonal, and Adam would divide the f32
//! round-off off the diagonal by itself.) Adam's step count is therefore one
//! behind the optimizer's. This makes SOAP exactly equivariant to orthogonal
//! rotations of either side, which the tests check.
//!
//! Differences from the official implementation: bases are full
//! eigendecompositions in f64 rather than one power iteration and QR on the
//! previous basis, ordered by descending eigenvalue, and `v` is not permuted when
//! a refresh reorders the eigenvalues; weight decay is AdamW's `p·(1 − lr·wd)`,
//! applied with the step.

use std::ops::Range;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, TwoSided, UpdateRule, accumulate_gram, identity, two_sided};
use crate::backend::{Backend, Gemm};
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoapConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// EMA coefficient of the statistics: `L ← β·L + (1−β)·G·Gᵀ`.
    pub shampoo_beta: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Recompute the bases after the first call and then every this many steps.
    pub precondition_frequency: u64,
    /// A side larger than this is not rotated (identity basis, no statistic).
    pub max_preconditioner_dim: usize,
    /// Optimizer of the vectors (biases); by default SOAP's own Adam
    /// hyperparameters, as the official implementation treats 1-D tensors.
    pub aux_adamw: AdamWConfig,
}

impl Default for SoapConfig {
    fn default() -> Self {
        let (lr, beta1, beta2, eps, weight_decay) = (3e-3, 0.95, 0.95, 1e-8, 0.01);
        Self {
            lr,
            beta1,
            beta2,
            shampoo_beta: 0.95,
            eps,
            weight_decay,
            precondition_frequency: 10,
            max_preconditioner_dim: 1024,
            aux_adamw: AdamWConfig { lr, beta1, beta2, eps, weight_decay },
        }
    }
}

/// One side (rows: left, columns: right) of one matrix.
enum Side<B: Backend> {
    Rotated {
        stat: B::Buf,
        basis: B::Buf,
    },
    /// Above `max_preconditioner_dim`: Adam's coordinates along this side.
    Identity,
}

impl<B: Backend> Side<B> {
    fn new(backend: &B, dim: usize, max_dim: usize) -> Self {
        if dim > max_dim {
            return Side::Identity;
        }
        Side::Rotated { stat: backend.zeros(dim * dim), basis: identity(backend, dim) }
    }

    /// `dst = op(Q)·src` (left side) or `src·op(Q)` (right side) for an m×n `src`,
    /// with `op(Q) = Qᵀ` on the left and `Q` on the right going `into` the
    /// eigenbasis, the transposes coming out of it; a copy for an unrotated side.
    fn apply(&self, backend: &B, dst: B::ViewMut<'_>, src: B::View<'_>, (m, n): (usize, usize), left: bool, into: bool) {
        match self {
            Side::Rotated { basis, .. } if left => {
                backend.matmul(dst, B::all(basis), src, Gemm { m, k: m, n, trans_a: into, trans_b: false }, 1.0, 0.0);
            }
            Side::Rotated { basis, .. } => {
                backend.matmul(dst, src, B::all(basis), Gemm { m, k: n, n, trans_a: false, trans_b: !into }, 1.0, 0.0);
            }
            Side::Identity => backend.copy(dst, src),
        }
    }
}

impl<B: Backend> TwoSided<Side<B>> {
    /// Rotates the matrix at `range` of `x` in place, through `tmp`: `X ← Q_Lᵀ·X·Q_R`
    /// (`into` the eigenbasis) or `X ← Q_L·X·Q_Rᵀ`.
    fn rotate(&self, backend: &B, x: &mut B::Buf, tmp: &mut B::Buf, range: Range<usize>, into: bool) {
        let shape = (self.rows, self.cols);
        self.left.apply(backend, B::view_mut(tmp, range.clone()), B::view(x, range.clone()), shape, true, into);
        self.right.apply(backend, B::view_mut(x, range.clone()), B::view(tmp, range), shape, false, into);
    }
}

pub struct Soap<B: Backend> {
    config: SoapConfig,
    matrices: Vec<TwoSided<Side<B>>>,
    /// First moment, original space.
    m: B::Buf,
    /// Second moment, rotated space.
    v: B::Buf,
    /// Scratch, store-sized: a rotated matrix and its half-rotated partner.
    rotated: B::Buf,
    tmp: B::Buf,
    basis_failures: u64,
    bases_computed: u64,
}

impl<B: Backend> Soap<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, params: &[usize], config: SoapConfig) -> Self {
        let max = config.max_preconditioner_dim;
        let matrices = two_sided(store, params, "SOAP", |dim| Side::new(backend, dim, max));
        let [m, v, rotated, tmp] = std::array::from_fn(|_| backend.zeros(store.len()));
        Self { config, matrices, m, v, rotated, tmp, basis_failures: 0, bases_computed: 0 }
    }
}

impl<B: Backend> UpdateRule<B> for Soap<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        _params: &[usize],
        lr: f32,
        t: u64,
        mut captures: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        // Adam's steps: the first call only starts the statistics.
        let adam_steps = t - 1;
        let refresh = adam_steps.is_multiple_of(c.precondition_frequency.max(1));
        let (bias1, bias2) = (1.0 - c.beta1.powi(adam_steps as i32), 1.0 - c.beta2.powi(adam_steps as i32));
        for p in &mut self.matrices {
            let (m, n, r) = (p.rows, p.cols, store.specs[p.param].range());
            if adam_steps > 0 {
                let g = B::view(&store.grads, r.clone());
                // v from the rotated gradient, m in the original space.
                backend.copy(B::view_mut(&mut self.rotated, r.clone()), g);
                p.rotate(backend, &mut self.rotated, &mut self.tmp, r.clone(), true);
                backend.ema_square(B::view_mut(&mut self.v, r.clone()), B::view(&self.rotated, r.clone()), c.beta2);
                backend.axpby(B::view_mut(&mut self.m, r.clone()), 1.0 - c.beta1, g, c.beta1);
                // Adam's direction on the rotated m, rotated back: D lands in `tmp`.
                backend.copy(B::view_mut(&mut self.rotated, r.clone()), B::view(&self.m, r.clone()));
                p.rotate(backend, &mut self.rotated, &mut self.tmp, r.clone(), true);
                let (rotated, v) = (B::view(&self.rotated, r.clone()), B::view(&self.v, r.clone()));
                backend.adam_direction(B::view_mut(&mut self.tmp, r.clone()), rotated, v, bias1, bias2, c.eps);
                p.rotate(backend, &mut self.tmp, &mut self.rotated, r.clone(), false);
                if let Some(caps) = captures.as_deref_mut() {
                    caps.push(Capture { param: p.param, kind: "soap_direction", values: backend.download(B::view(&self.tmp, r.clone()))? });
                }
                let decay = 1.0 - lr * c.weight_decay;
                backend.axpby(B::view_mut(&mut store.values, r.clone()), -lr, B::view(&self.tmp, r.clone()), decay);
            }
            // The statistics take this gradient after the step: the next basis.
            let g = B::view(&store.grads, r);
            for (side, over_rows) in [(&mut p.left, true), (&mut p.right, false)] {
                let Side::Rotated { stat, basis } = side else { continue };
                accumulate_gram(backend, stat, g, (m, n), over_rows, 1.0 - c.shampoo_beta, c.shampoo_beta);
                if refresh {
                    // On failure the previous basis stays: a stale rotation beats a NaN.
                    if backend.sym_eigenvectors(B::all_mut(basis), B::all(stat), if over_rows { m } else { n })? {
                        self.bases_computed += 1;
                    } else {
                        self.basis_failures += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("m".into(), &mut self.m), ("v".into(), &mut self.v)];
        for p in &mut self.matrices {
            for (side, name) in [(&mut p.left, "left"), (&mut p.right, "right")] {
                if let Side::Rotated { stat, basis } = side {
                    state.push((format!("p{}.{name}.stat", p.param), stat));
                    state.push((format!("p{}.{name}.basis", p.param), basis));
                }
            }
        }
        state
    }

    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        vec![("soap_basis_failures", self.basis_failures as f64), ("soap_bases_computed", self.bases_computed as f64)]
    }
}
