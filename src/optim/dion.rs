//! Dion (Ahn et al. 2025, arXiv 2504.05295), following `dion_update` of the
//! authors' non-distributed reference (microsoft/dion, `dion.py`): a low-rank
//! orthonormal update by one step of power iteration per optimizer step, with
//! error feedback into the momentum.
//!
//! With B the momentum as a tall matrix (transposed when wide) and Q its right
//! factor (short side × r, r = ⌈rank_fraction·short⌉, N(0, 1) at the start):
//! `M ← M + G`; `P ← orth(B·Q)` (QR); `R ← Bᵀ·P`; `M ← M − (1−μ)·P·Rᵀ`;
//! `Q ← R / (‖R_col‖ + ε)`; `W ← W·(1 − lr·wd) − lr·√(fan_out/fan_in)·P·Qᵀ`.
//! A zero momentum moves nothing and keeps Q, as the reference's zero fix does.
//! The QR and column norms of the small factors run on the host in f64 (on
//! CUDA that is a download and an upload per matrix, as SOAP's eigenbases).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, UpdateRule};
use crate::backend::{Backend, Gemm};
use crate::models::ParamStore;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DionConfig {
    pub lr: f32,
    /// μ: the share of the captured low-rank part kept in the momentum.
    pub momentum: f32,
    /// r as a fraction of a matrix's shorter side (rounded up; 1 is full rank).
    pub rank_fraction: f32,
    pub weight_decay: f32,
    /// ε of the column normalisation.
    pub epsilon: f32,
    /// Optimizer of every parameter that is not a hidden matrix.
    pub aux_adamw: AdamWConfig,
}

impl Default for DionConfig {
    /// The reference's defaults: lr 0.01, μ 0.95, full rank, weight decay 0.01,
    /// and AdamW with betas (0.9, 0.95) at the same lr for everything else.
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.95,
            rank_fraction: 1.0,
            weight_decay: 0.01,
            epsilon: 1e-8,
            aux_adamw: AdamWConfig { lr: 0.01, beta2: 0.95, weight_decay: 0.01, ..AdamWConfig::default() },
        }
    }
}

/// One matrix's factors: Q (short × r) and scratch for P (long × r) and R (short × r).
struct Factors<B: Backend> {
    param: usize,
    rows: usize,
    cols: usize,
    rank: usize,
    q: B::Buf,
    p: B::Buf,
    r: B::Buf,
}

pub struct Dion<B: Backend> {
    config: DionConfig,
    momentum: B::Buf,
    factors: Vec<Factors<B>>,
}

impl<B: Backend> Dion<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, params: &[usize], config: DionConfig) -> Self {
        use rand_distr::Distribution;
        let factors = params
            .iter()
            .map(|&i| {
                let s = &store.specs[i];
                assert!(s.role.is_matrix(), "Dion takes matrices only; {} is a {}", s.name, s.role.as_str());
                let (long, short) = (s.rows.max(s.cols), s.rows.min(s.cols));
                let rank = ((config.rank_fraction * short as f32).ceil() as usize).clamp(1, short);
                // A fixed stream per parameter, so a run starts the same whatever its seed and resumes from the checkpointed Q.
                let mut rng = crate::random::rng(0, crate::random::Stream::Init, 1 << 40 | i as u64);
                let q: Vec<f32> = (0..short * rank).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
                Factors {
                    param: i,
                    rows: s.rows,
                    cols: s.cols,
                    rank,
                    q: backend.upload(&q),
                    p: backend.zeros(long * rank),
                    r: backend.zeros(short * rank),
                }
            })
            .collect();
        Self { config, momentum: backend.zeros(store.len()), factors }
    }
}

/// The thin Q factor of a long×r matrix (row-major), by faer's Householder QR in f64.
fn orthonormal_columns(p: &[f32], long: usize, r: usize) -> Vec<f32> {
    let q = faer::Mat::from_fn(long, r, |i, j| f64::from(p[i * r + j])).qr().compute_thin_Q();
    (0..long * r).map(|k| q[(k / r, k % r)] as f32).collect()
}

/// Columns of a short×r matrix scaled to unit norm (plus ε).
fn normalize_columns(x: &mut [f32], r: usize, epsilon: f32) {
    for j in 0..r {
        let norm = x.iter().skip(j).step_by(r).map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt() as f32;
        x.iter_mut().skip(j).step_by(r).for_each(|v| *v /= norm + epsilon);
    }
}

impl<B: Backend> UpdateRule<B> for Dion<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        _params: &[usize],
        lr: f32,
        _t: u64,
        _: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        for f in &mut self.factors {
            let range = store.specs[f.param].range();
            let (rows, cols, r) = (f.rows, f.cols, f.rank);
            let tall = rows >= cols;
            let (long, short) = (rows.max(cols), rows.min(cols));
            backend.axpby(B::view_mut(&mut self.momentum, range.clone()), 1.0, B::view(&store.grads, range.clone()), 1.0);
            let m = B::view(&self.momentum, range.clone());
            if backend.sum_squares(m)? == 0.0 {
                continue;
            }
            // P = B·Q (B = M when tall, Mᵀ when wide), then orthonormal.
            backend.matmul(
                B::all_mut(&mut f.p),
                m,
                B::all(&f.q),
                Gemm { m: long, k: short, n: r, trans_a: !tall, trans_b: false },
                1.0,
                0.0,
            );
            let p = orthonormal_columns(&backend.download(B::all(&f.p))?, long, r);
            f.p = backend.upload(&p);
            // R = Bᵀ·P.
            backend.matmul(
                B::all_mut(&mut f.r),
                m,
                B::all(&f.p),
                Gemm { m: short, k: long, n: r, trans_a: tall, trans_b: false },
                1.0,
                0.0,
            );
            // Error feedback: M −= (1−μ)·P·Rᵀ (tall) or R·Pᵀ (wide), rows×cols either way.
            let (a, b) = if tall { (&f.p, &f.r) } else { (&f.r, &f.p) };
            let shape = Gemm { m: rows, k: r, n: cols, trans_a: false, trans_b: true };
            backend.matmul(B::view_mut(&mut self.momentum, range.clone()), B::all(a), B::all(b), shape, -(1.0 - c.momentum), 1.0);
            let mut q = backend.download(B::all(&f.r))?;
            normalize_columns(&mut q, r, c.epsilon);
            f.q = backend.upload(&q);
            // W ← W·(1 − lr·wd) − lr·√(fan_out/fan_in)·P·Qᵀ (or Q·Pᵀ).
            backend.scale(B::view_mut(&mut store.values, range.clone()), 1.0 - lr * c.weight_decay);
            let (a, b) = if tall { (&f.p, &f.q) } else { (&f.q, &f.p) };
            let scale = (rows as f32 / cols as f32).sqrt();
            backend.matmul(B::view_mut(&mut store.values, range.clone()), B::all(a), B::all(b), shape, -lr * scale, 1.0);
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("momentum".to_string(), &mut self.momentum)];
        state.extend(self.factors.iter_mut().map(|f| (format!("q.{}", f.param), &mut f.q)));
        state
    }
}
