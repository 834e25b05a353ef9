//! Muon (Keller Jordan et al. 2024): momentum, then the nearest semi-orthogonal
//! matrix by Newton-Schulz, so every singular direction of the update moves alike.
//! Follows the reference implementation: `m ← β·m + (1−β)·g`; Nesterov direction
//! `(1−β)·g + β·m`; NS on it; `p ← p·(1−lr·wd) − lr·scale·NS(d)`. The knobs of
//! background document 001's MuonFast (spectral scaling, `scale_extra`, the
//! small-matrix penalty) are options of the same rule; `muon-fast` names its
//! first configuration.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::linalg::NsCoefficients;
use crate::models::ParamStore;

/// How the orthogonalized update (all singular values ≈ 1) is scaled per matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MuonScaling {
    /// `max(1, rows/cols)^0.5` (Keller Jordan's reference).
    Keller,
    /// `0.2·sqrt(max(rows, cols))`: matches AdamW's update RMS so AdamW learning
    /// rates and weight decay transfer (Liu et al. 2025, "Muon is Scalable for LLM Training").
    MatchAdamRms,
    /// `sqrt(rows/cols)` = √(fan_out/fan_in): the spectral condition for feature
    /// learning (Yang, Simon & Bernstein 2023), MuonFast's `scale_mode = "spectral"`.
    Spectral,
    None,
}

impl MuonScaling {
    pub fn factor(self, rows: usize, cols: usize) -> f32 {
        match self {
            Self::Keller => (rows as f32 / cols as f32).max(1.0).sqrt(),
            Self::MatchAdamRms => 0.2 * (rows.max(cols) as f32).sqrt(),
            Self::Spectral => (rows as f32 / cols as f32).sqrt(),
            Self::None => 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MuonConfig {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub ns_steps: usize,
    /// MuonFast's early stop: a matrix's Newton-Schulz ends at the first step k
    /// (k ≥ 2) with ‖X_k − X_{k−1}‖_F < ns_tol·‖X_{k−1}‖_F, at most `ns_steps`
    /// (0: off). Costs up to `ns_steps`(`ns_steps`+1)/2 iterations, so it is for study, not speed.
    /// Keller's quintic deliberately oscillates around 1 (its iterates move by 30–50%
    /// per step), so only Polar Express's coefficients settle under a small tolerance.
    pub ns_tol: f32,
    pub coefficients: NsCoefficients,
    pub scaling: MuonScaling,
    /// A further factor on every matrix's step (MuonFast's `scale_extra`).
    pub scale_extra: f32,
    /// MuonFast's dimension-aware penalty: a matrix whose shorter side k is below
    /// `penalty_below` steps `(k/penalty_below)^small_matrix_penalty` times as far
    /// (0: off; MuonFast's fix uses 2 below 256).
    pub small_matrix_penalty: f32,
    pub penalty_below: usize,
    pub weight_decay: f32,
    /// NorMuon (Li et al. 2025, arXiv 2510.05491, the authors' normuon.py): after
    /// Newton-Schulz, divide each row (output neuron) by the root of an EMA
    /// (`beta2`) of its mean squared entry, then restore the update's Frobenius norm.
    pub neuron_normalization: bool,
    pub beta2: f32,
    /// Also orthogonalize the input and output matrices (by default they go to
    /// the auxiliary AdamW, as in the reference implementation).
    pub all_matrices: bool,
    /// Optimizer of every parameter Muon does not take.
    pub aux_adamw: AdamWConfig,
}

impl MuonConfig {
    /// The step of a rows×cols matrix per unit of learning rate: the scaling,
    /// `scale_extra` and the small-matrix penalty.
    pub fn step_scale(&self, rows: usize, cols: usize) -> f32 {
        let short = rows.min(cols);
        let penalty = if self.small_matrix_penalty > 0.0 && short < self.penalty_below {
            (short as f32 / self.penalty_below as f32).powf(self.small_matrix_penalty)
        } else {
            1.0
        };
        self.scaling.factor(rows, cols) * self.scale_extra * penalty
    }

    /// NorMuon with the authors' defaults (lr 0.02, momentum 0.95, β2 0.95, Keller's scaling).
    pub fn normuon() -> Self {
        Self { neuron_normalization: true, ..Self::default() }
    }

    /// MuonFast as background document 001 first ran it on its ViT: spectral
    /// scaling, `scale_extra` 1, lr 0.002, every matrix orthogonalized (its
    /// routing of some parameters to AdamW came with the later fixes).
    pub fn muon_fast() -> Self {
        Self { lr: 0.002, scaling: MuonScaling::Spectral, all_matrices: true, ..Self::default() }
    }
}

impl Default for MuonConfig {
    fn default() -> Self {
        Self {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            ns_tol: 0.0,
            coefficients: NsCoefficients::Keller,
            scaling: MuonScaling::Keller,
            scale_extra: 1.0,
            small_matrix_penalty: 0.0,
            penalty_below: 256,
            weight_decay: 0.0,
            neuron_normalization: false,
            beta2: 0.95,
            all_matrices: false,
            aux_adamw: AdamWConfig::default(),
        }
    }
}

pub struct Muon<B: Backend> {
    config: MuonConfig,
    momentum: B::Buf,
    /// Scratch: the direction fed to Newton-Schulz, then its output.
    direction: B::Buf,
    orthogonal: B::Buf,
    /// Parameter indices grouped by shape: one batched NS call per shape.
    by_shape: BTreeMap<(usize, usize), Vec<usize>>,
    /// With `ns_tol`: the next iterate, and how many matrices stopped early.
    candidate: Option<B::Buf>,
    early_stops: u64,
    /// The last step's scale and Newton-Schulz iterations per matrix.
    last: Vec<StepReport>,
    /// NorMuon's per-row second moments: a rows×cols matrix's at the first
    /// `rows` entries of its range in a store-sized buffer.
    second_moment: Option<B::Buf>,
}

impl<B: Backend> Muon<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, params: &[usize], config: MuonConfig) -> Self {
        let mut by_shape: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for &i in params {
            let s = &store.specs[i];
            assert!(s.role.is_matrix(), "Muon takes matrices only; {} is a {}", s.name, s.role.as_str());
            by_shape.entry((s.rows, s.cols)).or_default().push(i);
        }
        let n = store.len();
        let candidate = (config.ns_tol > 0.0).then(|| backend.zeros(n));
        Self {
            config,
            momentum: backend.zeros(n),
            direction: backend.zeros(n),
            orthogonal: backend.zeros(n),
            by_shape,
            candidate,
            early_stops: 0,
            last: Vec::new(),
            second_moment: config.neuron_normalization.then(|| backend.zeros(n)),
        }
    }

    /// Newton-Schulz of every matrix at `ranges` (`direction` → `orthogonal`),
    /// each stopped by `ns_tol` (see [`MuonConfig::ns_tol`]). The k-step result
    /// is the k-step prefix of the iteration, so step k is rerun from the start
    /// for the matrices still going rather than carried in the backend.
    /// Returns the iterations each matrix took.
    fn orthogonalize(&mut self, backend: &B, ranges: &[std::ops::Range<usize>], (rows, cols): (usize, usize)) -> Result<Vec<usize>> {
        let c = self.config;
        let Some(candidate) = self.candidate.as_mut() else {
            backend.newton_schulz_batched(&mut self.orthogonal, &self.direction, ranges, rows, cols, c.ns_steps, c.coefficients);
            return Ok(vec![c.ns_steps; ranges.len()]);
        };
        let mut taken = vec![c.ns_steps; ranges.len()];
        let mut going: Vec<std::ops::Range<usize>> = ranges.to_vec();
        for k in 1..=c.ns_steps {
            backend.newton_schulz_batched(candidate, &self.direction, &going, rows, cols, k, c.coefficients);
            let mut still = Vec::new();
            for r in going {
                let (next, previous) = (B::view(candidate, r.clone()), B::view(&self.orthogonal, r.clone()));
                let settled = k > 1
                    && backend.sum_squared_difference(next, previous)?.sqrt() < f64::from(c.ns_tol) * backend.sum_squares(previous)?.sqrt();
                backend.copy(B::view_mut(&mut self.orthogonal, r.clone()), next);
                if !settled {
                    still.push(r);
                } else {
                    taken[ranges.iter().position(|x| *x == r).expect("a range of the batch")] = k;
                    if k < c.ns_steps {
                        self.early_stops += 1;
                    }
                }
            }
            going = still;
            if going.is_empty() {
                break;
            }
        }
        Ok(taken)
    }
}

impl<B: Backend> UpdateRule<B> for Muon<B> {
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        _params: &[usize],
        lr: f32,
        _t: u64,
        mut captures: Option<&mut Vec<Capture>>,
    ) -> Result<()> {
        let c = self.config;
        let beta = c.momentum;
        // Taken out for the step, so `orthogonalize` may borrow the rest of self.
        let by_shape = std::mem::take(&mut self.by_shape);
        self.last.clear();
        for (&(rows, cols), params) in &by_shape {
            let ranges: Vec<_> = params.iter().map(|&i| store.specs[i].range()).collect();
            for r in &ranges {
                let g = B::view(&store.grads, r.clone());
                backend.axpby(B::view_mut(&mut self.momentum, r.clone()), 1.0 - beta, g, beta);
                backend.copy(B::view_mut(&mut self.direction, r.clone()), if c.nesterov { g } else { B::view(&self.momentum, r.clone()) });
                if c.nesterov {
                    backend.axpby(B::view_mut(&mut self.direction, r.clone()), beta, B::view(&self.momentum, r.clone()), 1.0 - beta);
                }
            }
            let taken = self.orthogonalize(backend, &ranges, (rows, cols))?;
            for (&param, k) in params.iter().zip(taken) {
                self.last.push(StepReport { param, name: "muon_step_scale", value: f64::from(c.step_scale(rows, cols)) });
                self.last.push(StepReport { param, name: "muon_ns_steps", value: k as f64 });
            }
            let step = lr * c.step_scale(rows, cols);
            for (&i, r) in params.iter().zip(&ranges) {
                if let Some(caps) = captures.as_deref_mut() {
                    caps.push(Capture {
                        param: i,
                        kind: "muon_pre_orthogonalization",
                        values: backend.download(B::view(&self.direction, r.clone()))?,
                    });
                    caps.push(Capture {
                        param: i,
                        kind: "muon_post_orthogonalization",
                        values: backend.download(B::view(&self.orthogonal, r.clone()))?,
                    });
                }
                if let Some(v) = self.second_moment.as_mut() {
                    let norm = backend.sum_squares(B::view(&self.orthogonal, r.clone()))?.sqrt();
                    let rows_v = r.start..r.start + rows;
                    backend.ema_square_sums(
                        B::view_mut(v, rows_v.clone()),
                        B::view(&self.orthogonal, r.clone()),
                        rows,
                        cols,
                        true,
                        c.beta2,
                        (1.0 - c.beta2) / cols as f32,
                    );
                    // (v + 1e-20)^(-1/2): the authors' 1/(√v + 1e-10) up to where v ≈ 0.
                    backend.scale_by_diagonal_root(
                        B::view_mut(&mut self.orthogonal, r.clone()),
                        B::view(v, rows_v),
                        rows,
                        cols,
                        true,
                        2,
                        1e-20,
                    );
                    let normalized = backend.sum_squares(B::view(&self.orthogonal, r.clone()))?.sqrt();
                    backend.scale(B::view_mut(&mut self.orthogonal, r.clone()), (norm / (normalized + 1e-10)) as f32);
                }
                backend.axpby(
                    B::view_mut(&mut store.values, r.clone()),
                    -step,
                    B::view(&self.orthogonal, r.clone()),
                    1.0 - lr * c.weight_decay,
                );
            }
        }
        self.by_shape = by_shape;
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("momentum".to_string(), &mut self.momentum)];
        state.extend(self.second_moment.as_mut().map(|v| ("second_moment".to_string(), v)));
        state
    }

    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        if self.candidate.is_some() { vec![("muon_ns_early_stops", self.early_stops as f64)] } else { Vec::new() }
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }
}
