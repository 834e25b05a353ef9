//! SGD with momentum and optional Nesterov, with `torch.optim.SGD` semantics
//! (coupled L2 weight decay, no dampening).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Capture, UpdateRule, ranges};
use crate::backend::Backend;
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 0.0 }
    }
}

pub struct Sgd<B: Backend> {
    config: SgdConfig,
    momentum: B::Buf,
}

impl<B: Backend> Sgd<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: SgdConfig) -> Self {
        Self { config, momentum: backend.zeros(store.len()) }
    }
}

impl<B: Backend> UpdateRule<B> for Sgd<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        _t: u64,
        _: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        let ranges = ranges(store, params);
        backend.sgd_step(&mut store.values, &store.grads, &mut self.momentum, &ranges, lr, c.momentum, c.nesterov, c.weight_decay);
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        vec![("momentum".into(), &mut self.momentum)]
    }
}
