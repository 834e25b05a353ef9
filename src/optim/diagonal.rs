//! The per-coordinate optimizers of `torch.optim` that background document 002
//! names beside AdamW: AdaGrad (Duchi et al. 2011), RMSProp (Tieleman & Hinton
//! 2012), Adadelta (Zeiler 2012), Adam with coupled L2 weight decay (Kingma &
//! Ba 2015) and AMSGrad (Reddi et al. 2018). PyTorch's semantics and defaults
//! (weight decay added to the gradient, as `torch.optim` does for these), one
//! fused multi-tensor call per step ([`DiagonalRule`]).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Capture, UpdateRule, ranges};
use crate::backend::{Backend, DiagonalRule};
use crate::models::ParamStore;

/// `torch.optim.Adagrad`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdagradConfig {
    pub lr: f32,
    /// Step `t` uses `lr / (1 + (t−1)·lr_decay)`.
    pub lr_decay: f32,
    pub weight_decay: f32,
    /// The sum of squares starts here.
    pub initial_accumulator_value: f32,
    pub eps: f32,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self { lr: 1e-2, lr_decay: 0.0, weight_decay: 0.0, initial_accumulator_value: 0.0, eps: 1e-10 }
    }
}

/// `torch.optim.RMSprop`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsPropConfig {
    pub lr: f32,
    /// Smoothing of the squared-gradient average.
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    /// Normalise by the estimated variance (Graves 2013) rather than the raw second moment.
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        Self { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false }
    }
}

/// `torch.optim.Adadelta`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdadeltaConfig {
    /// Scales the unit-corrected step; 1 is Zeiler's method.
    pub lr: f32,
    pub rho: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        Self { lr: 1.0, rho: 0.9, eps: 1e-6, weight_decay: 0.0 }
    }
}

/// `torch.optim.Adam`: weight decay is L2 added to the gradient (AdamW decouples it).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Step with the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, amsgrad: false }
    }
}

/// Which per-coordinate optimizer, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiagonalConfig {
    Adagrad(AdagradConfig),
    RmsProp(RmsPropConfig),
    Adadelta(AdadeltaConfig),
    Adam(AdamConfig),
}

impl DiagonalConfig {
    /// The state buffers it uses, by PyTorch's names, in slot order (unused slots are "").
    fn state_names(&self) -> [&'static str; 3] {
        match self {
            Self::Adagrad(_) => ["sum", "", ""],
            Self::RmsProp(c) => {
                ["square_avg", if c.momentum > 0.0 { "momentum_buffer" } else { "" }, if c.centered { "grad_avg" } else { "" }]
            }
            Self::Adadelta(_) => ["square_avg", "acc_delta", ""],
            Self::Adam(c) => ["exp_avg", "exp_avg_sq", if c.amsgrad { "max_exp_avg_sq" } else { "" }],
        }
    }

    /// The rule of step `t` (1-based) at learning rate `lr` (the group's, scheduled).
    fn rule(&self, lr: f32, t: u64) -> DiagonalRule {
        match *self {
            Self::Adagrad(c) => {
                DiagonalRule::Adagrad { lr: lr / (1.0 + (t - 1) as f32 * c.lr_decay), eps: c.eps, weight_decay: c.weight_decay }
            }
            Self::RmsProp(c) => DiagonalRule::RmsProp {
                lr,
                alpha: c.alpha,
                eps: c.eps,
                weight_decay: c.weight_decay,
                momentum: c.momentum,
                centered: c.centered,
            },
            Self::Adadelta(c) => DiagonalRule::Adadelta { lr, rho: c.rho, eps: c.eps, weight_decay: c.weight_decay },
            Self::Adam(c) => DiagonalRule::Adam {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                amsgrad: c.amsgrad,
                bias1: 1.0 - c.beta1.powi(t as i32),
                bias2: 1.0 - c.beta2.powi(t as i32),
            },
        }
    }
}

/// Three store-sized state buffers whatever the rule uses (so one fused call
/// serves every variant); only the used ones are checkpointed.
pub struct Diagonal<B: Backend> {
    config: DiagonalConfig,
    state: [B::Buf; 3],
}

impl<B: Backend> Diagonal<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: DiagonalConfig) -> Self {
        let start = match config {
            DiagonalConfig::Adagrad(c) => c.initial_accumulator_value,
            _ => 0.0,
        };
        let state = [backend.upload(&vec![start; store.len()]), backend.zeros(store.len()), backend.zeros(store.len())];
        Self { config, state }
    }
}

impl<B: Backend> UpdateRule<B> for Diagonal<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        _: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let ranges = ranges(store, params);
        let [s0, s1, s2] = &mut self.state;
        backend.diagonal_step(&mut store.values, &store.grads, [s0, s1, s2], &ranges, self.config.rule(lr, t));
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let names = self.config.state_names();
        names.into_iter().zip(&mut self.state).filter(|(name, _)| !name.is_empty()).map(|(name, buf)| (name.to_string(), buf)).collect()
    }
}
