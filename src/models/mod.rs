//! Models and the parameter store they share with optimizers.
//!
//! Every parameter of a model lives in one contiguous buffer (and its gradient in
//! a second), described by [`ParamSpec`]s. Optimizers route parameters by
//! [`Role`], which the model declares: no fragile name matching.

pub mod mlp;

use std::ops::Range;

use crate::backend::Backend;

pub use mlp::{Mlp, MlpConfig};

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
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::InputMatrix => "input-matrix",
            Role::HiddenMatrix => "hidden-matrix",
            Role::OutputHead => "output-head",
            Role::Vector => "vector",
        }
    }
    pub fn is_matrix(self) -> bool {
        self != Role::Vector
    }
}

/// One named parameter: a `rows×cols` view (vectors have `rows == 1`) at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub role: Role,
    pub offset: usize,
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
}

impl<B: Backend> ParamStore<B> {
    /// Lays out `(name, rows, cols, role)` back to back and uploads `init`.
    pub fn new(backend: &B, layout: &[(String, usize, usize, Role)], init: &[f32]) -> Self {
        let mut offset = 0;
        let specs: Vec<ParamSpec> = layout
            .iter()
            .map(|(name, rows, cols, role)| {
                let spec = ParamSpec { name: name.clone(), rows: *rows, cols: *cols, role: *role, offset };
                offset += spec.len();
                spec
            })
            .collect();
        assert_eq!(init.len(), offset, "initial values must cover every parameter");
        Self { specs, values: backend.upload(init), grads: backend.zeros(offset) }
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
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }
}
