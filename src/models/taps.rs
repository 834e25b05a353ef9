//! Layer taps: the inputs and output gradients of linear maps, recorded by the
//! models' explicit backward passes for optimizers that build curvature from
//! them (K-FAC's Kronecker factors `E[a aᵀ]` and `E[g gᵀ]`).
//!
//! An optimizer asks for the maps it needs by weight index when it is built
//! ([`LayerTaps::request`]); [`crate::nn::Linear::backward`] then copies its
//! input and output gradient of every batch here. Maps nobody asked for cost
//! nothing, and no optimizer needs to know a model's layer names.

use std::collections::BTreeMap;

use crate::backend::Backend;

/// One linear map's last batch: `rows` rows of inputs and of output gradients.
pub struct LayerTap<B: Backend> {
    /// rows×in: what the map was applied to.
    pub inputs: B::Buf,
    /// rows×out: ∂(loss)/∂(output) as the backward pass computed it, i.e. the
    /// gradient of the *mean* loss (see [`LayerTaps::loss_terms`]).
    pub output_grads: B::Buf,
    /// Rows of the batch: examples, or examples × tokens in a transformer.
    pub rows: usize,
}

/// The taps of a model's store, keyed by weight index.
pub struct LayerTaps<B: Backend> {
    taps: BTreeMap<usize, Option<LayerTap<B>>>,
    /// How many terms the loss averages (examples; the GPT's token positions):
    /// an output-gradient row times this is one term's own gradient.
    pub loss_terms: usize,
}

impl<B: Backend> Default for LayerTaps<B> {
    fn default() -> Self {
        Self { taps: BTreeMap::new(), loss_terms: 0 }
    }
}

impl<B: Backend> LayerTaps<B> {
    /// Records the maps with these weights from the next backward pass on.
    pub fn request(&mut self, weights: &[usize]) {
        for &w in weights {
            self.taps.entry(w).or_insert(None);
        }
    }

    /// Copies a map's batch if it was requested (its buffers are reused while
    /// the batch size stays the same).
    pub fn record(&mut self, backend: &B, weight: usize, inputs: &B::Buf, output_grads: &B::Buf, rows: usize) {
        let Some(slot) = self.taps.get_mut(&weight) else { return };
        let (n_in, n_out) = (B::len(inputs), B::len(output_grads));
        let tap = match slot {
            Some(tap) if B::len(&tap.inputs) == n_in && B::len(&tap.output_grads) == n_out => tap,
            _ => slot.insert(LayerTap { inputs: backend.zeros(n_in), output_grads: backend.zeros(n_out), rows }),
        };
        tap.rows = rows;
        backend.copy(B::all_mut(&mut tap.inputs), B::all(inputs));
        backend.copy(B::all_mut(&mut tap.output_grads), B::all(output_grads));
    }

    /// The last batch of a requested map; `None` before its first backward pass.
    pub fn get(&self, weight: usize) -> Option<&LayerTap<B>> {
        self.taps.get(&weight).and_then(Option::as_ref)
    }
}
