//! Manifold Muon: steepest descent under the spectral norm on a matrix manifold,
//! then a retraction (Bernstein, "Modular Manifolds", Thinking Machines 2025;
//! reference code `thinky-manifolds/src/manifold_muon.py`, the dual-ascent
//! version of October 2025): document 003's Stiefel and Grassmannian members.
//!
//! Every hidden matrix W is taken as tall (n×p, transposed when wide).
//! - **Stiefel** (WᵀW = I). The tangent space at W is {A : WᵀA + AᵀW = 0}; the
//!   step A maximises ⟨G, A⟩ over it with ‖A‖₂ ≤ 1. Its Lagrange dual (Λ
//!   symmetric p×p) gives A(Λ) = msign(G + 2WΛ), found by the reference's dual
//!   ascent: Λ₀ = −¼(WᵀG + GᵀW); per iteration k < K, H = WᵀA + AᵀW, stop once
//!   ‖H‖_F/p < tol, else Λ ← Λ − α(1 − k/K)·H. For a square W the start is
//!   already optimal: A = W·msign(skew(WᵀG)).
//! - **Grassmannian** (the subspace spanned by W, represented by WᵀW = I). Its
//!   horizontal space is {A : WᵀA = 0}, where the steepest step has the closed
//!   form A = msign((I − WWᵀ)G). A square W spans the whole space, a single point
//!   of the Grassmannian with nothing to learn: it takes the Stiefel step.
//!
//! Then W ← polar(W − lr·A), the retraction. As the reference does at
//! initialisation, W is replaced by its polar factor at the first step. Unlike
//! the reference, which approximates msign and the polar factor by ten Polar
//! Express steps in bf16, both are exact here (an f64 SVD on the host; a
//! download and an upload per matrix on CUDA: a study tool, not a speed path),
//! so the dual tolerance means what it says and the constraint holds at f32
//! round-off. No momentum, as the reference. Every parameter that is not a
//! hidden matrix goes to an auxiliary AdamW. Reported per matrix and step
//! (`optimizer_steps`): `manifold_dual_steps`, `manifold_tangent_residual`
//! (‖WᵀA + AᵀW‖_F/p of the step taken) and `manifold_drift` (max |WᵀW − I| of
//! the stored matrix).

use anyhow::Result;
use faer::{Mat, MatRef, Scale};
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::models::ParamStore;

/// The manifold a hidden matrix lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manifold {
    Stiefel,
    Grassmann,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifoldMuonConfig {
    pub manifold: Manifold,
    /// η: the spectral norm of each step.
    pub lr: f32,
    /// α: the dual ascent's step size (decayed linearly over `dual_steps`).
    pub dual_lr: f32,
    /// K: the most dual ascent iterations per step.
    pub dual_steps: usize,
    /// The dual ascent stops once ‖WᵀA + AᵀW‖_F/p is below this.
    pub dual_tol: f32,
    /// Optimizer of every parameter that is not a hidden matrix.
    pub aux_adamw: AdamWConfig,
}

impl Default for ManifoldMuonConfig {
    /// The reference's defaults: η 0.1, α 0.01, 100 iterations, tolerance 1e-6.
    fn default() -> Self {
        Self { manifold: Manifold::Stiefel, lr: 0.1, dual_lr: 0.01, dual_steps: 100, dual_tol: 1e-6, aux_adamw: AdamWConfig::default() }
    }
}

/// One step of one tall matrix.
#[derive(Debug)]
pub struct ManifoldStep {
    /// The retracted matrix.
    pub w: Mat<f64>,
    /// The step direction A (‖A‖₂ = 1 unless the gradient is rank-deficient).
    pub direction: Mat<f64>,
    pub dual_steps: usize,
    /// ‖WᵀA + AᵀW‖_F/p.
    pub tangent_residual: f64,
}

/// U·sign(Σ)·Vᵀ of `x`'s SVD, with sign(σ) = 0 for σ at round-off of the largest
/// (`zero_kernel`; msign of a step), or U·Vᵀ (the polar factor; a retraction).
fn orthogonal_factor(x: MatRef<'_, f64>, zero_kernel: bool) -> Result<Mat<f64>> {
    let svd = x.thin_svd().map_err(|e| anyhow::anyhow!("SVD of a {}×{} matrix failed: {e:?}", x.nrows(), x.ncols()))?;
    let sigma = svd.S().column_vector();
    let largest = (0..sigma.nrows()).map(|i| sigma[i]).fold(0.0, f64::max);
    let mut u = svd.U().to_owned();
    for k in (0..sigma.nrows()).filter(|&k| zero_kernel && sigma[k] <= largest * 1e-12) {
        u.col_mut(k).fill(0.0);
    }
    Ok(u * svd.V().transpose())
}

/// ‖WᵀA + AᵀW‖_F/p.
fn tangent_residual(w: MatRef<'_, f64>, a: MatRef<'_, f64>) -> f64 {
    let h = w.transpose() * a;
    let sym = &h + h.transpose();
    sym.norm_l2() / w.ncols() as f64
}

/// The manifold Muon step of a tall `w` (n×p, WᵀW = I) with gradient `g`.
pub fn manifold_step(w: MatRef<'_, f64>, g: MatRef<'_, f64>, config: &ManifoldMuonConfig) -> Result<ManifoldStep> {
    assert!(w.nrows() >= w.ncols() && g.nrows() == w.nrows() && g.ncols() == w.ncols(), "manifold_step: W must be tall, G its shape");
    let (direction, dual_steps) = if config.manifold == Manifold::Grassmann && w.nrows() > w.ncols() {
        let projected = g - w * (w.transpose() * g);
        (orthogonal_factor(projected.as_ref(), true)?, 0)
    } else {
        let wtg = w.transpose() * g;
        let mut lambda = (&wtg + wtg.transpose()) * Scale(-0.25);
        let mut k = 0;
        loop {
            let a = orthogonal_factor((g + w * &lambda * Scale(2.0)).as_ref(), true)?;
            k += 1;
            let wta = w.transpose() * &a;
            let h = &wta + wta.transpose();
            if h.norm_l2() / (w.ncols() as f64) < f64::from(config.dual_tol) || k >= config.dual_steps {
                break (a, k);
            }
            lambda -= h * Scale(f64::from(config.dual_lr) * (1.0 - (k - 1) as f64 / config.dual_steps as f64));
        }
    };
    let moved = w - &direction * Scale(f64::from(config.lr));
    Ok(ManifoldStep {
        w: orthogonal_factor(moved.as_ref(), false)?,
        tangent_residual: tangent_residual(w, direction.as_ref()),
        direction,
        dual_steps,
    })
}

/// A row-major rows×cols matrix as a tall f64 matrix (transposed when wide).
fn tall(x: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    if rows >= cols {
        Mat::from_fn(rows, cols, |i, j| f64::from(x[i * cols + j]))
    } else {
        Mat::from_fn(cols, rows, |i, j| f64::from(x[j * cols + i]))
    }
}

/// The inverse of [`tall`].
fn row_major(m: MatRef<'_, f64>, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|k| if rows >= cols { m[(k / cols, k % cols)] } else { m[(k % cols, k / cols)] } as f32).collect()
}

/// max |WᵀW − I| of a row-major matrix taken as tall.
pub fn stiefel_drift(x: &[f32], rows: usize, cols: usize) -> f64 {
    let w = tall(x, rows, cols);
    let gram = w.transpose() * &w;
    let p = w.ncols();
    (0..p * p).map(|k| (gram[(k / p, k % p)] - f64::from(u8::from(k / p == k % p))).abs()).fold(0.0, f64::max)
}

pub struct ManifoldMuon {
    config: ManifoldMuonConfig,
    /// (parameter, rows, cols) of each hidden matrix.
    matrices: Vec<(usize, usize, usize)>,
    last: Vec<StepReport>,
}

impl ManifoldMuon {
    pub fn new<B: Backend>(store: &ParamStore<B>, params: &[usize], config: ManifoldMuonConfig) -> Self {
        let matrices = params.iter().map(|&i| (i, store.specs[i].rows, store.specs[i].cols)).collect();
        Self { config, matrices, last: Vec::new() }
    }
}

impl<B: Backend> UpdateRule<B> for ManifoldMuon {
    fn step(&mut self, backend: &B, store: &mut ParamStore<B>, _: &[usize], lr: f32, t: u64, _: Option<&mut Vec<Capture>>) -> Result<()> {
        let config = ManifoldMuonConfig { lr, ..self.config };
        self.last.clear();
        for &(i, rows, cols) in &self.matrices {
            let mut w = tall(&backend.download(store.value(i))?, rows, cols);
            let g = tall(&backend.download(store.grad(i))?, rows, cols);
            anyhow::ensure!(
                w.norm_l2().is_finite() && g.norm_l2().is_finite(),
                "{}: non-finite weights or gradient have no step on the manifold",
                store.specs[i].name
            );
            if t == 1 {
                w = orthogonal_factor(w.as_ref(), false)?;
            }
            let step = manifold_step(w.as_ref(), g.as_ref(), &config).map_err(|e| e.context(store.specs[i].name.clone()))?;
            let stored = row_major(step.w.as_ref(), rows, cols);
            backend.copy(B::view_mut(&mut store.values, store.specs[i].range()), B::all(&backend.upload(&stored)));
            self.last.extend([
                StepReport { param: i, name: "manifold_dual_steps", value: step.dual_steps as f64 },
                StepReport { param: i, name: "manifold_tangent_residual", value: step.tangent_residual },
                StepReport { param: i, name: "manifold_drift", value: stiefel_drift(&stored, rows, cols) },
            ]);
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        Vec::new()
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }
}
