//! LayerNorm over the feature dimension, with learned gain and bias.

use crate::backend::Backend;
use crate::models::ParamStore;

/// Indices of the gain (γ) and bias (β) in a [`ParamStore`].
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub gamma: usize,
    pub beta: usize,
    pub dim: usize,
}

/// PyTorch's default epsilon.
pub const LAYERNORM_EPS: f32 = 1e-5;

/// What the backward pass needs from the forward: per-row mean and 1/σ.
pub struct LayerNormCache<B: Backend> {
    pub mean: B::Buf,
    pub rstd: B::Buf,
}

impl<B: Backend> LayerNormCache<B> {
    pub fn new(backend: &B, rows: usize) -> Self {
        Self { mean: backend.zeros(rows), rstd: backend.zeros(rows) }
    }
}

impl LayerNorm {
    pub fn forward<B: Backend>(&self, backend: &B, store: &ParamStore<B>, y: &mut B::Buf, cache: &mut LayerNormCache<B>, x: &B::Buf) {
        let (mean, rstd) = (B::all_mut(&mut cache.mean), B::all_mut(&mut cache.rstd));
        backend.layernorm_forward(B::all_mut(y), mean, rstd, B::all(x), store.value(self.gamma), store.value(self.beta), LAYERNORM_EPS);
    }

    /// Writes `dx`; accumulates the gain and bias gradients into the store.
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        store: &mut ParamStore<B>,
        dx: &mut B::Buf,
        dy: &B::Buf,
        x: &B::Buf,
        cache: &LayerNormCache<B>,
    ) {
        let (g, b) = (store.specs[self.gamma].range(), store.specs[self.beta].range());
        let gamma = B::view(&store.values, g.clone());
        let (dgamma, dbeta) = B::view_mut_pair(&mut store.grads, g, b);
        backend.layernorm_backward(B::all_mut(dx), dgamma, dbeta, B::all(dy), B::all(x), B::all(&cache.mean), B::all(&cache.rstd), gamma);
    }
}
