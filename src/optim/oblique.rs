//! The oblique manifold of document 003: every hidden matrix keeps unit-norm
//! columns. In the modular-manifolds recipe (Bernstein et al. 2025) with the
//! Euclidean norm, a base optimizer's step Δ (AdamW's, Muon's, any) is
//! projected onto the tangent space at W, column by column
//! `Δ_c ← Δ_c − (w_cᵀΔ_c / ‖w_c‖²)·w_c`, taken, and retracted by normalising
//! each column. Other parameters take the base step as it is.
//!
//! A matrix that starts off the manifold is on it after its first step (the
//! retraction normalises it). The projection and retraction run on the host in
//! f64 (a download and an upload per matrix on CUDA): a study tool, not a
//! speed path. Each step records, per matrix, the largest deviation of a
//! column norm from 1 after the retraction (`optimizer_steps`, `oblique_drift`).

use anyhow::Result;

use super::{Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::models::ParamStore;

/// A base rule whose hidden matrices are kept on the oblique manifold.
pub struct OnOblique<B: Backend> {
    inner: Box<dyn UpdateRule<B>>,
    /// The constrained parameters of this group, with their shapes.
    constrained: Vec<(usize, usize, usize)>,
    /// The last step's drift per constrained matrix.
    drift: Vec<StepReport>,
}

impl<B: Backend> OnOblique<B> {
    pub fn new(inner: Box<dyn UpdateRule<B>>, store: &ParamStore<B>, params: &[usize]) -> Self {
        let constrained = params
            .iter()
            .filter(|&&i| store.specs[i].role == crate::models::Role::HiddenMatrix)
            .map(|&i| (i, store.specs[i].rows, store.specs[i].cols))
            .collect();
        Self { inner, constrained, drift: Vec::new() }
    }
}

/// `after` with the step from `before` projected onto the tangent space of the
/// oblique manifold at `before`, then retracted (unit columns); and the largest
/// deviation of a column norm from 1 in the f32 result.
pub fn project_and_retract(before: &[f32], after: &[f32], rows: usize, cols: usize) -> (Vec<f32>, f64) {
    let at = |x: &[f32], r: usize, c: usize| f64::from(x[r * cols + c]);
    let mut out = vec![0.0f32; rows * cols];
    let mut drift = 0.0f64;
    for c in 0..cols {
        let (mut dot, mut norm) = (0.0, 0.0);
        for r in 0..rows {
            let w = at(before, r, c);
            dot += w * (at(after, r, c) - w);
            norm += w * w;
        }
        let radial = if norm > 0.0 { dot / norm } else { 0.0 };
        let moved: Vec<f64> = (0..rows).map(|r| at(after, r, c) - radial * at(before, r, c)).collect();
        let length = moved.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (r, v) in moved.iter().enumerate() {
            out[r * cols + c] = if length > 0.0 { (v / length) as f32 } else { 0.0 };
        }
        let kept = (0..rows).map(|r| f64::from(out[r * cols + c]).powi(2)).sum::<f64>().sqrt();
        drift = drift.max((kept - 1.0).abs());
    }
    (out, drift)
}

impl<B: Backend> UpdateRule<B> for OnOblique<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        captures: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let before: Vec<Vec<f32>> = self.constrained.iter().map(|&(i, _, _)| backend.download(store.value(i))).collect::<Result<_>>()?;
        self.inner.step(backend, store, params, lr, t, captures)?;
        self.drift.clear();
        for (&(i, rows, cols), before) in self.constrained.iter().zip(&before) {
            let (kept, drift) = project_and_retract(before, &backend.download(store.value(i))?, rows, cols);
            backend.copy(B::view_mut(&mut store.values, store.specs[i].range()), B::all(&backend.upload(&kept)));
            self.drift.push(StepReport { param: i, name: "oblique_drift", value: drift });
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        self.inner.state_mut()
    }

    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        self.inner.diagnostics()
    }

    fn last_step(&self) -> Vec<StepReport> {
        [self.inner.last_step(), self.drift.clone()].concat()
    }
}
