//! Adam with decoupled weight decay (Loshchilov & Hutter 2019), bias-corrected,
//! one fused multi-tensor call per step.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Capture, UpdateRule, ranges};
use crate::backend::{AdamParams, Backend};
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments live in store-sized buffers so that the whole group
/// is one fused call (one kernel launch on CUDA).
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    m: B::Buf,
    v: B::Buf,
}

impl<B: Backend> AdamW<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, config: AdamWConfig) -> Self {
        Self { config, m: backend.zeros(store.len()), v: backend.zeros(store.len()) }
    }
}

impl<B: Backend> UpdateRule<B> for AdamW<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        _: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        let hp = AdamParams { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay, step: t };
        let ranges = ranges(store, params);
        backend.adamw_step(&mut store.values, &store.grads, &mut self.m, &mut self.v, &ranges, hp);
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        vec![("m".into(), &mut self.m), ("v".into(), &mut self.v)]
    }
}
