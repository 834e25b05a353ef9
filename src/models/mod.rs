//! Models and the parameter store they share with optimizers.
//!
//! Every parameter of a model lives in one contiguous buffer (and its gradient in
//! a second), described by [`ParamSpec`]s. Optimizers route parameters by
//! [`Role`], which the model declares: no fragile name matching.

pub mod gpt;
pub mod mlp;
pub mod taps;
pub mod transformer;
pub mod vit;

use std::ops::Range;

use crate::backend::{Backend, LossOut};

pub use gpt::{Gpt, GptConfig};
pub use mlp::{Mlp, MlpConfig};
pub use taps::{LayerTap, LayerTaps};
pub use transformer::{FeedForward, TransformerConfig};
pub use vit::{Vit, VitConfig};

/// What a study needs of a model: its parameters, logits and gradients for a
/// batch, and the per-example representations probes read.
pub trait Classifier<B: Backend> {
    fn store(&self) -> &ParamStore<B>;
    fn store_mut(&mut self) -> &mut ParamStore<B>;
    fn classes(&self) -> usize;
    /// Logits (batch×classes) of `batch` examples.
    fn forward(&mut self, backend: &B, x: &[f32], batch: usize) -> &B::Buf;
    /// Zeroes the gradients, runs forward and backward, leaves ∂(mean loss)/∂θ in the store.
    fn loss_and_gradients(&mut self, backend: &B, x: &[f32], labels: &[u8]) -> anyhow::Result<LossOut>;
    /// Representations of the last forward, one (batch × width) matrix per probed
    /// layer: the MLP's hidden layers after their activation; the ViT's final class token.
    fn representations(&self, backend: &B) -> anyhow::Result<Vec<Representation>>;
}

/// One probed layer's activations for the last batch.
pub struct Representation {
    /// e.g. `fc1`, `blocks.0.mlp.gelu` (or `.swiglu`), `cls`.
    pub name: String,
    pub width: usize,
    /// Rows per example: 1, or the tokens of a sequence (each takes its example's label).
    pub rows_per_example: usize,
    pub values: Vec<f32>,
}

/// What a parameter is for; optimizers choose their update rule by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// First matrix: maps raw inputs (pixels, patches) into the network.
    InputMatrix,
    /// A matrix between two hidden layers.
    HiddenMatrix,
    /// Last matrix: produces logits.
    OutputHead,
    /// Biases, norm gains: one-dimensional parameters.
    Vector,
    /// Lookup tables and learned positions (token, position, class-token
    /// embeddings): stored as matrices but not linear maps, so matrix optimizers
    /// leave them to the auxiliary AdamW, as the Muon reference does.
    Embedding,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::InputMatrix => "input-matrix",
            Role::HiddenMatrix => "hidden-matrix",
            Role::OutputHead => "output-head",
            Role::Vector => "vector",
            Role::Embedding => "embedding",
        }
    }
    /// A linear map (what Muon and Shampoo precondition, and probes decompose).
    pub fn is_matrix(self) -> bool {
        matches!(self, Role::InputMatrix | Role::HiddenMatrix | Role::OutputHead)
    }
}

/// Independent blocks of a matrix parameter, as its model declares them: the
/// per-head slices of attention projections, for optimizers that treat each
/// head as a matrix of its own (Block-Stiefel). No optimizer matches names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// Consecutive groups of this many rows (outputs): Q, K and V per head.
    Rows(usize),
    /// Consecutive groups of this many columns (inputs): the output projection per head.
    Cols(usize),
}

/// One named parameter: a `rows×cols` view (vectors have `rows == 1`) at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub role: Role,
    pub offset: usize,
    /// The head blocks of an attention projection.
    pub blocks: Option<Blocks>,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// All parameters and gradients of a model, one allocation each.
pub struct ParamStore<B: Backend> {
    pub specs: Vec<ParamSpec>,
    pub values: B::Buf,
    pub grads: B::Buf,
    /// Inputs and output gradients of the linear maps an optimizer asked for.
    pub taps: LayerTaps<B>,
}

impl<B: Backend> ParamStore<B> {
    /// Lays out `(name, rows, cols, role)` back to back and uploads `init`.
    pub fn new(backend: &B, layout: &[(String, usize, usize, Role)], init: &[f32]) -> Self {
        let mut offset = 0;
        let specs: Vec<ParamSpec> = layout
            .iter()
            .map(|(name, rows, cols, role)| {
                let spec = ParamSpec { name: name.clone(), rows: *rows, cols: *cols, role: *role, offset, blocks: None };
                offset += spec.len();
                spec
            })
            .collect();
        assert_eq!(init.len(), offset, "initial values must cover every parameter");
        Self { specs, values: backend.upload(init), grads: backend.zeros(offset), taps: LayerTaps::default() }
    }

    /// Declares the head blocks of parameters by store index.
    pub fn with_blocks(mut self, blocks: &[(usize, Blocks)]) -> Self {
        for &(i, b) in blocks {
            let spec = &self.specs[i];
            let (n, side) = match b {
                Blocks::Rows(n) => (n, spec.rows),
                Blocks::Cols(n) => (n, spec.cols),
            };
            assert!(n > 0 && side.is_multiple_of(n), "{}: blocks of {n} do not tile {side}", spec.name);
            self.specs[i].blocks = Some(b);
        }
        self
    }

    pub fn len(&self) -> usize {
        B::len(&self.values)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn value(&self, i: usize) -> B::View<'_> {
        B::view(&self.values, self.specs[i].range())
    }
    pub fn grad(&self, i: usize) -> B::View<'_> {
        B::view(&self.grads, self.specs[i].range())
    }
    pub fn zero_grads(&mut self, backend: &B) {
        let n = self.len();
        backend.fill(B::view_mut(&mut self.grads, 0..n), 0.0);
    }
}
