//! PSGD-Kron: preconditioned SGD whose preconditioner `P = QᵀQ` is a Kronecker
//! product of per-dimension factors fitted by the PSGD criterion (Li 2018,
//! "Preconditioner on Matrix Lie Group for SGD"; `lixilinx/psgd_torch`), in the
//! form most comparisons run: Evan Walters' `kron_torch` (`kron.py` at commit
//! d163b81), whose defaults are taken as they are:
//!
//! - momentum `m ← β1·m + (1−β1)·g`, debiased `m̂`;
//! - with a probability annealed from 1 (flat for 250 steps) to 0.03,
//!   `max·exp(−0.001·(k − 250))` clamped, the factors are fitted on the pair
//!   (V ~ N(0, I), m̂): with `A = Q_L·m̂·Q_Rᵀ` and `B = Q_L⁻ᵀ·V·Q_R⁻¹`, each
//!   triangular factor moves `Q ← Q − η·triu(AAᵀ − BBᵀ)/‖AAᵀ + BBᵀ‖·Q` (the
//!   norm a cheap lower bound of the spectral norm), η = `precond_lr` 0.1; the
//!   fixed point whitens the gradient, `P_L ∝ E[GGᵀ]^{-1/2}` for Kronecker
//!   statistics, which the tests check;
//! - a dimension of size 1 or above `max_size_triangular` (and every vector)
//!   gets a diagonal factor, fitted the same way elementwise;
//! - on about 1% of the fitting steps the factors of a matrix are rescaled to
//!   the geometric mean of their max-norms (the reference's balancing);
//! - the step is `−lr·T(QᵀQ·m̂)` with the reference's elementwise trust region
//!   `T(x) = s·(0.1·sign(x/s)·ln(|x/s| + 1) + 0.9·tanh(x/s))`, s = 1.5, and
//!   weight decay added for matrices.
//!
//! The coin flips and V come from a generator seeded by the step, as the
//! reference's fixed seed, so a resumed run draws the same numbers. The fitting
//! is host work in f32 (the reference's precision), like Dion's QR: the
//! momentum comes down once per step and the update goes up once.

use anyhow::Result;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::{Capture, UpdateRule, ranges};
use crate::backend::Backend;
use crate::linalg::matmul;
use crate::models::ParamStore;

/// The reference's `tiny` (the smallest normal bf16): keeps the fitting step finite.
const TINY: f32 = 1.175_494_4e-38;
/// The reference's fixed seed (`random.Random(5318008)`), mixed with the step here.
const SEED: u64 = 5_318_008;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PsgdKronConfig {
    pub lr: f32,
    pub beta1: f32,
    /// Added to matrices' preconditioned steps (not vectors'), as the reference.
    pub weight_decay: f32,
    /// η of the factors' fitting step.
    pub precond_lr: f32,
    /// A dimension above this gets a diagonal factor.
    pub max_size_triangular: usize,
    pub trust_region_scale: f32,
    /// Fitting probability: `max·exp(−decay·(k − flat_start))` clamped to [min, max].
    pub update_probability_max: f32,
    pub update_probability_min: f32,
    pub update_probability_decay: f32,
    pub update_probability_flat_start: u64,
}

impl Default for PsgdKronConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            weight_decay: 0.0,
            precond_lr: 0.1,
            max_size_triangular: 8192,
            trust_region_scale: 1.5,
            update_probability_max: 1.0,
            update_probability_min: 0.03,
            update_probability_decay: 0.001,
            update_probability_flat_start: 250,
        }
    }
}

impl PsgdKronConfig {
    /// The fitting probability at the k-th step (0-based).
    fn update_probability(&self, k: u64) -> f32 {
        let p =
            self.update_probability_max * (-self.update_probability_decay * (k as f32 - self.update_probability_flat_start as f32)).exp();
        p.clamp(self.update_probability_min, self.update_probability_max)
    }
}

/// One dimension's factor of Q.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Upper triangular n×n.
    Triangular,
    /// n entries.
    Diagonal,
}

struct Factor<B: Backend> {
    kind: Kind,
    dim: usize,
    q: B::Buf,
}

/// A parameter as the rows×cols matrix X = L·…·Rᵀ acts on; a vector has no left factor.
struct Preconditioned<B: Backend> {
    param: usize,
    rows: usize,
    cols: usize,
    left: Option<Factor<B>>,
    right: Factor<B>,
}

pub struct PsgdKron<B: Backend> {
    config: PsgdKronConfig,
    params: Vec<Preconditioned<B>>,
    momentum: B::Buf,
}

impl<B: Backend> PsgdKron<B> {
    pub fn new(backend: &B, store: &ParamStore<B>, params: &[usize], config: PsgdKronConfig) -> Self {
        let factor = |dim: usize, diagonal: bool| {
            let kind = if diagonal || dim == 1 || dim > config.max_size_triangular { Kind::Diagonal } else { Kind::Triangular };
            let q = match kind {
                Kind::Triangular => super::identity(backend, dim),
                Kind::Diagonal => backend.upload(&vec![1.0; dim]),
            };
            Factor { kind, dim, q }
        };
        let params = params
            .iter()
            .map(|&i| {
                let s = &store.specs[i];
                // A 1-row parameter is a vector: one diagonal factor, as the reference's 1-D tensors.
                let vector = s.rows == 1;
                Preconditioned {
                    param: i,
                    rows: s.rows,
                    cols: s.cols,
                    left: (!vector).then(|| factor(s.rows, false)),
                    right: factor(s.cols, vector),
                }
            })
            .collect();
        Self { config, params, momentum: backend.zeros(store.len()) }
    }
}

/// A factor brought to the host for one step.
struct HostFactor {
    kind: Kind,
    dim: usize,
    q: Vec<f32>,
}

impl HostFactor {
    /// `Q·X` (`transpose`: `Qᵀ·X`) for an x of dim×cols.
    fn left(&self, x: &[f32], cols: usize, transpose: bool) -> Vec<f32> {
        match self.kind {
            Kind::Triangular => {
                let mut out = vec![0.0; x.len()];
                matmul(&mut out, &self.q, x, self.dim, self.dim, cols, transpose, false, 1.0, 0.0);
                out
            }
            Kind::Diagonal => x.chunks(cols).zip(&self.q).flat_map(|(row, &d)| row.iter().map(move |v| v * d)).collect(),
        }
    }

    /// `X·Qᵀ` (`transpose`) or `X·Q` for an x of rows×dim.
    fn right(&self, x: &[f32], rows: usize, transpose: bool) -> Vec<f32> {
        match self.kind {
            Kind::Triangular => {
                let mut out = vec![0.0; x.len()];
                matmul(&mut out, x, &self.q, rows, self.dim, self.dim, false, transpose, 1.0, 0.0);
                out
            }
            Kind::Diagonal => x.chunks(self.dim).flat_map(|row| row.iter().zip(&self.q).map(|(v, d)| v * d)).collect(),
        }
    }

    /// `X·Q⁻¹` for an x of rows×dim (Q upper triangular: forward substitution per
    /// row, reading Q's columns as the contiguous rows of Qᵀ).
    fn solve_right(&self, x: &mut [f32]) {
        let n = self.dim;
        match self.kind {
            Kind::Diagonal => x.chunks_mut(n).for_each(|row| row.iter_mut().zip(&self.q).for_each(|(v, d)| *v /= d)),
            Kind::Triangular => {
                let qt = transpose(&self.q, n, n);
                for row in x.chunks_mut(n) {
                    for j in 0..n {
                        let column = &qt[j * n..j * n + j];
                        let s: f32 = row[..j].iter().zip(column).map(|(a, b)| a * b).sum();
                        row[j] = (row[j] - s) / qt[j * n + j];
                    }
                }
            }
        }
    }

    /// This factor's fitting term of x: `X·Xᵀ` over its dimension (`over_rows`:
    /// x is dim×other; else other×dim), or its diagonal for a diagonal factor.
    fn term(&self, x: &[f32], other: usize, over_rows: bool) -> Vec<f32> {
        let n = self.dim;
        match (self.kind, over_rows) {
            (Kind::Triangular, true) => {
                let mut out = vec![0.0; n * n];
                matmul(&mut out, x, x, n, other, n, false, true, 1.0, 0.0);
                out
            }
            (Kind::Triangular, false) => {
                let mut out = vec![0.0; n * n];
                matmul(&mut out, x, x, n, other, n, true, false, 1.0, 0.0);
                out
            }
            (Kind::Diagonal, true) => x.chunks(other).map(|row| row.iter().map(|v| v * v).sum()).collect(),
            (Kind::Diagonal, false) => {
                let mut out = vec![0.0; n];
                x.chunks(n).for_each(|row| out.iter_mut().zip(row).for_each(|(o, v)| *o += v * v));
                out
            }
        }
    }

    /// `Q ← Q − η·triu(T1 − T2)/(‖T1 + T2‖ + tiny)·Q` (diagonal: elementwise, max-norm).
    fn fit(&mut self, t1: &[f32], t2: &[f32], eta: f32) {
        let sum: Vec<f32> = t1.iter().zip(t2).map(|(a, b)| a + b).collect();
        let n = self.dim;
        match self.kind {
            Kind::Diagonal => {
                let norm = max_abs(&sum) + TINY;
                for ((q, a), b) in self.q.iter_mut().zip(t1).zip(t2) {
                    *q -= eta * (a - b) * *q / norm;
                }
            }
            Kind::Triangular => {
                let norm = spectral_norm_lower_bound(&sum, n) + TINY;
                let triu: Vec<f32> = (0..n * n).map(|k| if k % n >= k / n { eta * (t1[k] - t2[k]) / norm } else { 0.0 }).collect();
                let mut moved = vec![0.0; n * n];
                matmul(&mut moved, &triu, &self.q, n, n, n, false, false, 1.0, 0.0);
                self.q.iter_mut().zip(&moved).for_each(|(q, m)| *q -= m);
            }
        }
    }
}

/// One parameter's factors on the host for a step.
struct HostFactors {
    left: Option<HostFactor>,
    right: HostFactor,
}

impl HostFactors {
    fn download<B: Backend>(backend: &B, p: &Preconditioned<B>) -> Result<Self> {
        let host =
            |f: &Factor<B>| -> Result<HostFactor> { Ok(HostFactor { kind: f.kind, dim: f.dim, q: backend.download(B::all(&f.q))? }) };
        Ok(Self { left: p.left.as_ref().map(host).transpose()?, right: host(&p.right)? })
    }

    fn upload<B: Backend>(&self, backend: &B, p: &mut Preconditioned<B>) {
        if let (Some(f), Some(h)) = (p.left.as_mut(), &self.left) {
            f.q = backend.upload(&h.q);
        }
        p.right.q = backend.upload(&self.right.q);
    }

    /// A matrix's two factors to the geometric mean of their max-norms (vectors: nothing).
    fn balance(&mut self) {
        if let Some(l) = self.left.as_mut() {
            let (nl, nr) = (max_abs(&l.q), max_abs(&self.right.q));
            let mean = (nl * nr).sqrt();
            l.q.iter_mut().for_each(|q| *q *= mean / nl);
            self.right.q.iter_mut().for_each(|q| *q *= mean / nr);
        }
    }

    /// One fitting step on the pair (V, G) of rows×cols matrices.
    fn fit(&mut self, g: &[f32], v: Vec<f32>, (rows, cols): (usize, usize), eta: f32) {
        // A = L·G·Rᵀ;  B = L⁻ᵀ·V·R⁻¹ = ((Vᵀ·L⁻¹)ᵀ)·R⁻¹.
        let lg = self.left.as_ref().map_or_else(|| g.to_vec(), |l| l.left(g, cols, false));
        let a = self.right.right(&lg, rows, true);
        let mut b = v;
        if let Some(l) = &self.left {
            let mut vt = transpose(&b, rows, cols);
            l.solve_right(&mut vt);
            b = transpose(&vt, cols, rows);
        }
        self.right.solve_right(&mut b);
        // Every factor's terms come from the same A and B, before any of them moves.
        let left_terms = self.left.as_ref().map(|l| (l.term(&a, cols, true), l.term(&b, cols, true)));
        let (r1, r2) = (self.right.term(&a, rows, false), self.right.term(&b, rows, false));
        if let (Some(l), Some((t1, t2))) = (self.left.as_mut(), left_terms) {
            l.fit(&t1, &t2, eta);
        }
        self.right.fit(&r1, &r2, eta);
    }

    /// P·G = Lᵀ·L·G·Rᵀ·R.
    fn precondition(&self, g: Vec<f32>, (rows, cols): (usize, usize)) -> Vec<f32> {
        let lg = match &self.left {
            Some(l) => l.left(&l.left(&g, cols, false), cols, true),
            None => g,
        };
        self.right.right(&self.right.right(&lg, rows, true), rows, false)
    }
}

/// The reference's cheap lower bound of the spectral norm of a symmetric n×n `a`:
/// its largest column (by norm) x, then ‖A·x/‖x‖‖ after one multiplication.
fn spectral_norm_lower_bound(a: &[f32], n: usize) -> f32 {
    let largest = max_abs(a);
    if largest == 0.0 {
        return 0.0;
    }
    let scaled: Vec<f32> = a.iter().map(|v| v / largest).collect();
    // Symmetric: the reference's row and column branches agree.
    let column_norm2 = |j: usize| (0..n).map(|i| scaled[i * n + j].powi(2)).sum::<f32>();
    let best = (0..n).max_by(|&i, &j| column_norm2(i).total_cmp(&column_norm2(j))).unwrap_or(0);
    let mut x = vec![0.0; n];
    matmul(&mut x, &scaled[best * n..(best + 1) * n], &scaled, 1, n, n, false, false, 1.0, 0.0);
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        return 0.0;
    }
    let mut y = vec![0.0; n];
    matmul(&mut y, &x, &scaled, 1, n, n, false, true, 1.0 / norm, 0.0);
    largest * y.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// The largest |x|: the reference's infinity norm of factors and fitting terms.
fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The reference's elementwise trust region on the preconditioned step.
fn trust_region(x: f32, scale: f32) -> f32 {
    let x = x / scale;
    scale * (0.1 * x.signum() * (x.abs() + 1.0).ln() + 0.9 * x.tanh())
}

impl<B: Backend> UpdateRule<B> for PsgdKron<B> {
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
        let ranges = ranges(store, params);
        for r in &ranges {
            backend.axpby(B::view_mut(&mut self.momentum, r.clone()), 1.0 - c.beta1, B::view(&store.grads, r.clone()), c.beta1);
        }
        let mut rng = StdRng::seed_from_u64(SEED ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fit = rng.random::<f32>() < c.update_probability(t - 1);
        let balance = fit && rng.random::<f32>() < 0.01;
        let debias = 1.0 / (1.0 - c.beta1.powi(t as i32));
        let momentum = backend.download(B::all(&self.momentum))?;
        let values = if c.weight_decay > 0.0 { Some(backend.download(B::all(&store.values))?) } else { None };
        let mut step = vec![0.0f32; store.len()];
        for p in &mut self.params {
            let range = store.specs[p.param].range();
            let g: Vec<f32> = momentum[range.clone()].iter().map(|v| v * debias).collect();
            let mut host = HostFactors::download(backend, p)?;
            if balance {
                host.balance();
            }
            if fit {
                let v: Vec<f32> = (0..p.rows * p.cols).map(|_| rng.sample(StandardNormal)).collect();
                host.fit(&g, v, (p.rows, p.cols), c.precond_lr);
            }
            if balance || fit {
                host.upload(backend, p);
            }
            let pg = host.precondition(g, (p.rows, p.cols));
            let decay = if p.left.is_some() { values.as_ref().map(|v| &v[range.clone()]) } else { None };
            for (k, (out, x)) in step[range].iter_mut().zip(pg).enumerate() {
                let x = trust_region(x, c.trust_region_scale) + decay.map_or(0.0, |v| c.weight_decay * v[k]);
                *out = -lr * x;
            }
        }
        // One upload of the whole step: −lr·T(P·m̂) on this group's ranges, 0 elsewhere.
        let step = backend.upload(&step);
        for r in &ranges {
            backend.axpby(B::view_mut(&mut store.values, r.clone()), 1.0, B::view(&step, r.clone()), 1.0);
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        let mut state = vec![("momentum".into(), &mut self.momentum)];
        for p in &mut self.params {
            if let Some(l) = p.left.as_mut() {
                state.push((format!("p{}.left", p.param), &mut l.q));
            }
            state.push((format!("p{}.right", p.param), &mut p.right.q));
        }
        state
    }
}

/// The cols×rows transpose of a rows×cols matrix.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|k| x[(k % rows) * cols + k / rows]).collect()
}
