//! Fully connected layer `y = x·Wᵀ + b` with W stored out×in (PyTorch's layout, so
//! weights and spectra compare one to one with a PyTorch model).

use crate::backend::{Backend, Gemm};
use crate::models::ParamStore;

/// Indices of a weight (out×in) and bias (out) in a [`ParamStore`].
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: usize,
    pub bias: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    /// `y (batch×out) = x (batch×in) · Wᵀ + b`.
    pub fn forward<B: Backend>(&self, backend: &B, store: &ParamStore<B>, y: &mut B::Buf, x: &B::Buf, batch: usize) {
        let shape = Gemm { m: batch, k: self.in_dim, n: self.out_dim, trans_a: false, trans_b: true };
        backend.matmul(B::all_mut(y), B::all(x), store.value(self.weight), shape, 1.0, 0.0);
        backend.add_bias_rows(B::all_mut(y), store.value(self.bias));
    }

    /// Accumulates `dW += dyᵀ·x`, `db += Σ_rows dy`; writes `dx = dy·W` when asked
    /// (the first layer skips it: nobody needs the gradient of the pixels).
    /// Hands `x` and `dy` to the store's [`crate::models::LayerTaps`] if an optimizer asked for them.
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        store: &mut ParamStore<B>,
        dx: Option<&mut B::Buf>,
        dy: &B::Buf,
        x: &B::Buf,
        batch: usize,
    ) {
        store.taps.record(backend, self.weight, x, dy, batch);
        let (w, b) = (store.specs[self.weight].range(), store.specs[self.bias].range());
        let dw_shape = Gemm { m: self.out_dim, k: batch, n: self.in_dim, trans_a: true, trans_b: false };
        backend.matmul(B::view_mut(&mut store.grads, w), B::all(dy), B::all(x), dw_shape, 1.0, 1.0);
        backend.accumulate_column_sums(B::view_mut(&mut store.grads, b), B::all(dy));
        if let Some(dx) = dx {
            let dx_shape = Gemm { m: batch, k: self.out_dim, n: self.in_dim, trans_a: false, trans_b: false };
            backend.matmul(B::all_mut(dx), B::all(dy), store.value(self.weight), dx_shape, 1.0, 0.0);
        }
    }
}
