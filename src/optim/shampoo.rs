//! Shampoo (Gupta et al. 2018) for matrices: left/right gradient statistics
//! `L = Σ G·Gᵀ`, `R = Σ Gᵀ·G` (or EMAs), update `L^{-1/4}·M·R^{-1/4}` on the
//! gradient momentum `M`, with the defaults and fallbacks of Distributed Shampoo
//! (Shi et al. 2023): roots every k steps in f64, epsilon absolute + relative to
//! the largest eigenvalue, the previous root kept when a decomposition fails,
//! diagonal statistics for a side above a maximum size, and grafting, which
//! borrows the step size of a simpler optimizer and keeps Shampoo's direction.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, TwoSided, UpdateRule, accumulate_gram, identity, two_sided};
use crate::backend::{Backend, Gemm};
use crate::linalg::Epsilon;
use crate::models::ParamStore;

/// Each side of a 2-D parameter gets the root 1/(2·order) = 1/4.
const ROOT: u32 = 4;

/// Whose step norm the Shampoo direction takes (per matrix, per step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grafting {
    None,
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShampooConfig {
    pub lr: f32,
    /// EMA coefficient of the gradient momentum that gets preconditioned (0: none).
    pub beta1: f32,
    /// Statistics `L ← β2·L + w·G·Gᵀ` with `w = 1` when `β2 = 1` (a plain sum, as in
    /// the paper) and `w = 1 − β2` otherwise.
    pub beta2: f32,
    pub epsilon: Epsilon,
    /// Recompute the inverse roots every this many steps (the first step included).
    pub precondition_frequency: u64,
    /// A side larger than this keeps diagonal statistics only.
    pub max_preconditioner_dim: usize,
    pub grafting: Grafting,
    pub graft_beta2: f32,
    pub graft_eps: f32,
    pub weight_decay: f32,
    /// Optimizer of the vectors (biases).
    pub aux_adamw: AdamWConfig,
}

impl Default for ShampooConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 1.0,
            epsilon: Epsilon { absolute: 1e-12, relative: 1e-6 },
            precondition_frequency: 10,
            max_preconditioner_dim: 1024,
            grafting: Grafting::Adam,
            graft_beta2: 0.999,
            graft_eps: 1e-8,
            weight_decay: 0.0,
            aux_adamw: AdamWConfig::default(),
        }
    }
}

/// The statistics of one side (rows: left, columns: right) of one matrix.
enum Side<B: Backend> {
    Full { stat: B::Buf, root: B::Buf },
    Diagonal { stat: B::Buf },
}

impl<B: Backend> Side<B> {
    fn new(backend: &B, dim: usize, max_dim: usize) -> Self {
        if dim > max_dim {
            return Side::Diagonal { stat: backend.zeros(dim) };
        }
        Side::Full { stat: backend.zeros(dim * dim), root: identity(backend, dim) }
    }
}

impl<B: Backend> Side<B> {
    /// `dst = root·src` (left side) or `src·root` (right side) for an m×n `src`
    /// written to `range` of `dst`; a diagonal side scales rows or columns instead.
    #[allow(clippy::too_many_arguments)]
    fn precondition(
        &self,
        backend: &B,
        dst: &mut B::Buf,
        range: Range<usize>,
        src: B::View<'_>,
        (m, n): (usize, usize),
        left: bool,
        eps: f32,
    ) {
        match self {
            Side::Full { root, .. } => {
                let dst = B::view_mut(dst, range);
                if left {
                    backend.matmul(dst, B::all(root), src, Gemm { m, k: m, n, trans_a: false, trans_b: false }, 1.0, 0.0);
                } else {
                    backend.matmul(dst, src, B::all(root), Gemm { m, k: n, n, trans_a: false, trans_b: false }, 1.0, 0.0);
                }
            }
            Side::Diagonal { stat } => {
                backend.copy(B::view_mut(dst, range.clone()), src);
                backend.scale_by_diagonal_root(B::view_mut(dst, range), B::all(stat), m, n, left, ROOT, eps);
            }
        }
    }
}

pub struct Shampoo<B: Backend> {
    config: ShampooConfig,
    preconditioners: Vec<TwoSided<Side<B>>>,
    momentum: B::Buf,
    graft_v: B::Buf,
    /// Scratch, store-sized: half-preconditioned and preconditioned directions.
    half: B::Buf,
    full: B::Buf,
    root_failures: u64,
    roots_computed: u64,
}

impl<B: Backend> Shampoo<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, params: &[usize], config: ShampooConfig) -> Self {
        let max = config.max_preconditioner_dim;
        let preconditioners = two_sided(store, params, "Shampoo", |dim| Side::new(backend, dim, max));
        let n = store.len();
        let [momentum, graft_v, half, full] = std::array::from_fn(|_| backend.zeros(n));
        Self { config, preconditioners, momentum, graft_v, half, full, root_failures: 0, roots_computed: 0 }
    }
}

impl<B: Backend> Shampoo<B> {
    /// Every full side's inverse root from its statistic, the sides of one size
    /// in one batch. On failure a side keeps its previous root: a stale
    /// preconditioner beats a NaN.
    fn refresh_roots(&mut self, backend: &B) -> Result<()> {
        let mut roots: BTreeMap<usize, Vec<B::ViewMut<'_>>> = BTreeMap::new();
        let mut stats: BTreeMap<usize, Vec<B::View<'_>>> = BTreeMap::new();
        for p in &mut self.preconditioners {
            for (side, dim) in [(&mut p.left, p.rows), (&mut p.right, p.cols)] {
                if let Side::Full { stat, root } = side {
                    roots.entry(dim).or_default().push(B::all_mut(root));
                    stats.entry(dim).or_default().push(B::all(stat));
                }
            }
        }
        for ((dim, roots), stats) in roots.into_iter().zip(stats.into_values()) {
            for computed in backend.inverse_roots(roots, stats, dim, ROOT, self.config.epsilon)? {
                if computed {
                    self.roots_computed += 1;
                } else {
                    self.root_failures += 1;
                }
            }
        }
        Ok(())
    }
}

impl<B: Backend> UpdateRule<B> for Shampoo<B> {
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
        let stat_weight = if c.beta2 == 1.0 { 1.0 } else { 1.0 - c.beta2 };
        let refresh = (t - 1).is_multiple_of(c.precondition_frequency.max(1));
        for p in &mut self.preconditioners {
            let (m, n, g) = (p.rows, p.cols, B::view(&store.grads, store.specs[p.param].range()));
            // Statistics: L ← β2·L + w·G·Gᵀ (m×m), R ← β2·R + w·Gᵀ·G (n×n).
            for (side, over_rows) in [(&mut p.left, true), (&mut p.right, false)] {
                match side {
                    Side::Full { stat, .. } => accumulate_gram(backend, stat, g, (m, n), over_rows, stat_weight, c.beta2),
                    Side::Diagonal { stat } => backend.ema_square_sums(B::all_mut(stat), g, m, n, over_rows, c.beta2, stat_weight),
                }
            }
        }
        if refresh {
            self.refresh_roots(backend)?;
        }
        for p in &mut self.preconditioners {
            let (m, n, r) = (p.rows, p.cols, store.specs[p.param].range());
            let g = B::view(&store.grads, r.clone());
            // Momentum M = β1·M + (1−β1)·G, then L^{-1/4}·M·R^{-1/4}.
            backend.axpby(B::view_mut(&mut self.momentum, r.clone()), 1.0 - c.beta1, g, c.beta1);
            let eps = c.epsilon.absolute as f32;
            p.left.precondition(backend, &mut self.half, r.clone(), B::view(&self.momentum, r.clone()), (m, n), true, eps);
            p.right.precondition(backend, &mut self.full, r.clone(), B::view(&self.half, r.clone()), (m, n), false, eps);
            let mom = B::view(&self.momentum, r.clone());
            // Grafting: the step takes the norm of the grafted optimizer's direction.
            let graft_norm = match c.grafting {
                Grafting::None => None,
                Grafting::Sgd => Some(backend.sum_squares(mom)?.sqrt()),
                Grafting::Adam => {
                    backend.ema_square(B::view_mut(&mut self.graft_v, r.clone()), g, c.graft_beta2);
                    let bias1 = if c.beta1 > 0.0 { 1.0 - c.beta1.powi(t as i32) } else { 1.0 };
                    let bias2 = 1.0 - c.graft_beta2.powi(t as i32);
                    // `half` is free again: reuse it for Adam's direction.
                    backend.adam_direction(
                        B::view_mut(&mut self.half, r.clone()),
                        mom,
                        B::view(&self.graft_v, r.clone()),
                        bias1,
                        bias2,
                        c.graft_eps,
                    );
                    Some(backend.sum_squares(B::view(&self.half, r.clone()))?.sqrt())
                }
            };
            let shampoo_norm = backend.sum_squares(B::view(&self.full, r.clone()))?.sqrt();
            let scale = match graft_norm {
                Some(gn) if shampoo_norm > 0.0 => (gn / shampoo_norm) as f32,
                _ => 1.0,
            };
            if let Some(caps) = captures.as_deref_mut() {
                caps.push(Capture {
                    param: p.param,
                    kind: "shampoo_preconditioned",
                    values: backend.download(B::view(&self.full, r.clone()))?,
                });
            }
            backend.axpby(B::view_mut(&mut store.values, r.clone()), -lr * scale, B::view(&self.full, r), 1.0 - lr * c.weight_decay);
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("momentum".into(), &mut self.momentum), ("graft_v".into(), &mut self.graft_v)];
        for p in &mut self.preconditioners {
            for (side, name) in [(&mut p.left, "left"), (&mut p.right, "right")] {
                match side {
                    Side::Full { stat, root } => {
                        state.push((format!("p{}.{name}.stat", p.param), stat));
                        state.push((format!("p{}.{name}.root", p.param), root));
                    }
                    Side::Diagonal { stat } => state.push((format!("p{}.{name}.diag", p.param), stat)),
                }
            }
        }
        state
    }

    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        vec![("shampoo_root_failures", self.root_failures as f64), ("shampoo_roots_computed", self.roots_computed as f64)]
    }
}
