//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the
//! sign of an interpolated momentum, so every coordinate moves by exactly lr.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Capture, UpdateRule, ranges};
use crate::backend::Backend;
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LionConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
}

impl Default for LionConfig {
    /// The paper's advice: lr 3–10× smaller than AdamW's.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0.0 }
    }
}

pub struct Lion<B: Backend> {
    config: LionConfig,
    m: B::Buf,
}

impl<B: Backend> Lion<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: LionConfig) -> Self {
        Self { config, m: backend.zeros(store.len()) }
    }
}

impl<B: Backend> UpdateRule<B> for Lion<B> {
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
        backend.lion_step(&mut store.values, &store.grads, &mut self.m, &ranges, lr, c.beta1, c.beta2, c.weight_decay);
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        vec![("m".into(), &mut self.m)]
    }
}
