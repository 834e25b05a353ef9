//! Manifold Muon: steepest descent under the spectral norm on a matrix manifold,
//! then a retraction (Bernstein, "Modular Manifolds", Thinking Machines 2025;
//! reference code `thinky-manifolds/src/manifold_muon.py`, the dual-ascent
//! version of October 2025): document 003's Stiefel, Grassmannian, SL-Muon and
//! Symplectic members, and its L1-Stiefel under the ℓ1 norm.
//!
//! Every hidden matrix W is taken as tall (n×p, transposed when wide).
//! - **Stiefel** (WᵀW = I). The tangent space at W is {A : WᵀA + AᵀW = 0}; the
//!   step A maximises ⟨G, A⟩ over it with ‖A‖₂ ≤ 1. Its Lagrange dual (Λ
//!   symmetric p×p) gives A(Λ) = msign(G + 2WΛ), found by the reference's dual
//!   ascent: Λ₀ = −¼(WᵀG + GᵀW); per iteration k < K, H = WᵀA + AᵀW, stop once
//!   ‖H‖_F/p < tol, else Λ ← Λ − α(1 − k/K)·H. For a square W the start is
//!   already optimal: A = W·msign(skew(WᵀG)).
//! - **Grassmannian** (the subspace spanned by W, represented by WᵀW = I). Its
//!   horizontal space is {A : WᵀA = 0}, where the steepest step has the closed
//!   form A = msign((I − WWᵀ)G). A square W spans the whole space, a single point
//!   of the Grassmannian with nothing to learn: it takes the Stiefel step.
//!
//! Then W ← polar(W − lr·A), the retraction. As the reference does at
//! initialisation, W is replaced by its polar factor at the first step.
//! - **SL-Muon** (det W = 1, square W: the special linear group, volume
//!   preserving). The tangent space at W is {A : tr(W⁻¹A) = 0} = W·sl(n), with
//!   sl(n) the traceless matrices. The norm is the left-invariant spectral norm
//!   ‖W⁻¹A‖₂, so a step changes W by at most lr relative to itself in every
//!   direction, as Muon's steps do (the ambient ‖A‖₂ would let a step of lr cross
//!   det = 0 wherever W's smallest singular value is below lr, which at a random
//!   256×256 initialization scaled to det 1 is about 5e-4). With S = WᵀG (then
//!   ⟨G, WΩ⟩ = ⟨S, Ω⟩) the step is A = WΩ, Ω = argmax ⟨S, Ω⟩ over ‖Ω‖₂ ≤ 1,
//!   tr Ω = 0. One linear constraint, so the dual is one number λ:
//!   Ω(λ) = msign(S − λI), and ψ(λ) = tr Ω(λ)/√n is nonincreasing (−ψ·√n is the
//!   derivative of the convex f(λ) = ‖S − λI‖_*). λ is bracketed from tr S/n and
//!   found by cutting planes on f (the next λ where the bracket ends' supporting
//!   lines meet) within `dual_steps` evaluations, stopping once |ψ| < tol, or
//!   once the traceless mix of the ends' directions is within a relative tol of
//!   the ends' smaller f (a bound on every feasible Ω's value): at a kink of f,
//!   where ψ jumps (S − λI singular, as at λ = 0 for a minibatch gradient of rank
//!   below n), |ψ| never falls below tol and this mix is the step. The retraction is
//!   the group's own, W ← W·exp(−lr·Ω) (det exp(X) = e^{tr X} = 1), then scaled to
//!   det 1 at round-off. At the first step W is scaled to |det W| = 1 (its first
//!   row negated if det W < 0). A non-square matrix has no determinant: it takes
//!   the unconstrained steepest step under the spectral norm, W − lr·msign(G)
//!   (Muon without momentum), and reports no drift.
//! - **Block-Stiefel** (a product of Stiefel manifolds): each attention head's
//!   block of a projection is a Stiefel matrix of its own, with the Stiefel step
//!   above: the Q, K and V rows of a head in qkv, the head's columns in the output
//!   projection, as the model declares them (`ParamSpec::blocks`; no name
//!   matching). A matrix without declared blocks (an MLP's) is one block. The
//!   reports per parameter take the largest value over its blocks.
//! - **L1-Stiefel** (WᵀW = I; "sparse orthogonal updates" in `003`'s table,
//!   which gives no form). O(n) acts transitively on the frames, so the tangent
//!   space at W is {ΩW : Ω skew}; the norm is the ℓ1 norm of Ω's entries. As
//!   ⟨G, ΩW⟩ = ⟨GWᵀ, Ω⟩ is linear in Ω, the steepest unit step is one plane
//!   generator, eᵢeⱼᵀ − eⱼeᵢᵀ with the largest |Mᵢⱼ − Mⱼᵢ| (M = GWᵀ), and its exact
//!   retraction a Givens rotation of W's rows i and j by lr: coordinate descent
//!   on the orthogonal group (Shalit & Chechik, "Coordinate-descent for learning
//!   orthogonal matrices through Givens rotations", ICML 2014). A step changes two
//!   rows of W by an orthogonal matrix, sparse and exact in every shape (a wide
//!   matrix turns its columns). `rotations` = k turns the k steepest disjoint
//!   planes at once (chosen greedily; disjoint rotations commute), k = 1 being the
//!   ℓ1 steepest descent. A Björck–Bowie step W(3I − WᵀW)/2 then squares W's f32
//!   round-off, which rotations alone would let accumulate. The ambient ℓ1 norm
//!   of A over the tangent space gives no such sparsity: its maximiser, a vertex
//!   of the ℓ1 ball cut by the p(p+1)/2 tangent equations, may have that many
//!   nonzero entries plus one, half of a square W (and costs a linear program per
//!   step). Reported per step:
//!   `manifold_step_density`, the fraction of W's entries the step moves.
//! - **Symplectic** (WᵀJW = J, W of even size 2k, J = [[0, I], [−I, 0]]). The
//!   tangent space is W·sp(2k), sp(2k) = {Ω : JΩ symmetric}. With S = WᵀG the
//!   step is Ω = P(S)/‖P(S)‖₂, where P(X) = (X + JXᵀJ)/2 is the Frobenius
//!   projection onto sp(2k): the steepest direction of the left-invariant
//!   Frobenius norm, scaled to unit spectral norm like the others (the
//!   spectral-norm problem has a matrix dual, as Stiefel's, and is left for when a
//!   study needs it). The retraction is the Cayley transform,
//!   W ← W·(I + lr·Ω/2)⁻¹(I − lr·Ω/2), which maps sp(2k) into the group exactly.
//!   At the first step W is replaced by cay(P(W)) (a symplectic matrix made from
//!   the initialization). Matrices that are not square of even size take
//!   W − lr·msign(G), unconstrained.
//!
//! Unlike
//! the reference, which approximates msign and the polar factor by ten Polar
//! Express steps in bf16, both are exact here (an f64 SVD on the host; a
//! download and an upload per matrix on CUDA: a study tool, not a speed path),
//! so the dual tolerance means what it says and the constraint holds at f32
//! round-off. No momentum, as the reference. Every parameter that is not a
//! hidden matrix goes to an auxiliary AdamW. Reported per matrix and step
//! (`optimizer_steps`): `manifold_dual_steps`, `manifold_tangent_residual`
//! (‖WᵀA + AᵀW‖_F/p of the step taken; |tr(W⁻¹A)|/√n for SL) and
//! `manifold_drift` (max |WᵀW − I|, |det W − 1| or max |WᵀJW − J| of the stored
//! matrix; on the non-compact SL and Sp groups f32 storage makes it grow with ‖W‖²).

use std::ops::Range;

use anyhow::Result;
use faer::{Mat, MatRef, Scale};
use serde::{Deserialize, Serialize};

use super::{AdamWConfig, Capture, StepReport, UpdateRule};
use crate::backend::Backend;
use crate::models::{Blocks, ParamStore};

/// The manifold a hidden matrix lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manifold {
    Stiefel,
    Grassmann,
    SpecialLinear,
    Symplectic,
    BlockStiefel,
    L1Stiefel,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifoldMuonConfig {
    pub manifold: Manifold,
    /// η: the spectral norm of each step.
    pub lr: f32,
    /// α: the dual ascent's step size (decayed linearly over `dual_steps`).
    pub dual_lr: f32,
    /// K: the most dual ascent iterations per step.
    pub dual_steps: usize,
    /// The dual ascent stops once ‖WᵀA + AᵀW‖_F/p is below this (SL-Muon: once
    /// |ψ| is, or the step's relative duality gap).
    pub dual_tol: f32,
    /// L1-Stiefel: Givens rotations per step, of disjoint row pairs (1: the
    /// steepest descent under the ℓ1 norm).
    pub rotations: usize,
    /// Optimizer of every parameter that is not a hidden matrix.
    pub aux_adamw: AdamWConfig,
}

impl Default for ManifoldMuonConfig {
    /// The reference's defaults: η 0.1, α 0.01, 100 iterations, tolerance 1e-6;
    /// one rotation, Shalit and Chechik's.
    fn default() -> Self {
        Self {
            manifold: Manifold::Stiefel,
            lr: 0.1,
            dual_lr: 0.01,
            dual_steps: 100,
            dual_tol: 1e-6,
            rotations: 1,
            aux_adamw: AdamWConfig::default(),
        }
    }
}

/// One step of one tall matrix.
#[derive(Debug)]
pub struct ManifoldStep {
    /// The retracted matrix.
    pub w: Mat<f64>,
    /// The step direction A (‖A‖₂ = 1 unless the gradient is rank-deficient;
    /// L1-Stiefel: its turned planes' generators applied to W).
    pub direction: Mat<f64>,
    pub dual_steps: usize,
    /// ‖WᵀA + AᵀW‖_F/p (Stiefel, Grassmannian), |tr(W⁻¹A)|/√n (SL),
    /// ‖JΩ − (JΩ)ᵀ‖_F/n (symplectic); 0 for an unconstrained shape.
    pub tangent_residual: f64,
}

/// U·sign(Σ)·Vᵀ of `x`'s SVD, with sign(σ) = 0 for σ at round-off of the largest
/// (`zero_kernel`; msign of a step), or U·Vᵀ (the polar factor; a retraction).
fn orthogonal_factor(x: MatRef<'_, f64>, zero_kernel: bool) -> Result<Mat<f64>> {
    let svd = x.thin_svd().map_err(|e| anyhow::anyhow!("SVD of a {}×{} matrix failed: {e:?}", x.nrows(), x.ncols()))?;
    let sigma = svd.S().column_vector();
    let largest = (0..sigma.nrows()).map(|i| sigma[i]).fold(0.0, f64::max);
    let mut u = svd.U().to_owned();
    for k in (0..sigma.nrows()).filter(|&k| zero_kernel && sigma[k] <= largest * 1e-12) {
        u.col_mut(k).fill(0.0);
    }
    Ok(u * svd.V().transpose())
}

/// ‖WᵀA + AᵀW‖_F/p.
fn tangent_residual(w: MatRef<'_, f64>, a: MatRef<'_, f64>) -> f64 {
    let h = w.transpose() * a;
    let sym = &h + h.transpose();
    sym.norm_l2() / w.ncols() as f64
}

/// The manifold Muon step of a tall `w` (n×p, WᵀW = I) with gradient `g`.
pub fn manifold_step(w: MatRef<'_, f64>, g: MatRef<'_, f64>, config: &ManifoldMuonConfig) -> Result<ManifoldStep> {
    assert!(w.nrows() >= w.ncols() && g.nrows() == w.nrows() && g.ncols() == w.ncols(), "manifold_step: W must be tall, G its shape");
    if !fits(config.manifold, w.nrows(), w.ncols()) {
        // No constraint for this shape: the steepest step under the spectral norm.
        let direction = orthogonal_factor(g, true)?;
        let lr = f64::from(config.lr);
        return Ok(ManifoldStep { w: w - &direction * Scale(lr), direction, dual_steps: 0, tangent_residual: 0.0 });
    }
    match config.manifold {
        Manifold::SpecialLinear => return special_linear_step(w, g, config),
        Manifold::Symplectic => return symplectic_step(w, g, config),
        Manifold::L1Stiefel => return Ok(l1_stiefel_step(w, g, config)),
        Manifold::Stiefel | Manifold::Grassmann | Manifold::BlockStiefel => {}
    }
    let (direction, dual_steps, tangent_residual) = if config.manifold == Manifold::Grassmann && w.nrows() > w.ncols() {
        let projected = g - w * (w.transpose() * g);
        let a = orthogonal_factor(projected.as_ref(), true)?;
        let residual = tangent_residual(w, a.as_ref());
        (a, 0, residual)
    } else {
        let wtg = w.transpose() * g;
        let mut lambda = (&wtg + wtg.transpose()) * Scale(-0.25);
        let mut k = 0;
        loop {
            let a = orthogonal_factor((g + w * &lambda * Scale(2.0)).as_ref(), true)?;
            k += 1;
            let wta = w.transpose() * &a;
            let h = &wta + wta.transpose();
            let residual = h.norm_l2() / w.ncols() as f64;
            if residual < f64::from(config.dual_tol) || k >= config.dual_steps {
                break (a, k, residual);
            }
            lambda -= h * Scale(f64::from(config.dual_lr) * (1.0 - (k - 1) as f64 / config.dual_steps as f64));
        }
    };
    let moved = w - &direction * Scale(f64::from(config.lr));
    Ok(ManifoldStep { w: orthogonal_factor(moved.as_ref(), false)?, direction, dual_steps, tangent_residual })
}

/// sign(det W) and log |det W| of a square W from its LU factors PW = LU (det
/// W itself under- or overflows for large n): det P·Π sign(uᵢᵢ) and Σ log |uᵢᵢ|,
/// det P = (−1)^(n − cycles of P).
fn sign_and_log_det(w: MatRef<'_, f64>) -> (f64, f64) {
    let lu = w.partial_piv_lu();
    let (forward, _) = lu.P().arrays();
    let mut seen = vec![false; forward.len()];
    let mut transpositions = 0;
    for start in 0..forward.len() {
        let mut i = start;
        while !seen[i] {
            seen[i] = true;
            i = forward[i];
            transpositions += usize::from(i != start);
        }
    }
    let diagonal = lu.U().diagonal().column_vector();
    let sign = (0..diagonal.nrows()).map(|i| diagonal[i].signum()).product::<f64>();
    let log_det = (0..diagonal.nrows()).map(|i| diagonal[i].abs().ln()).sum::<f64>();
    (if transpositions % 2 == 0 { sign } else { -sign }, log_det)
}

/// W with its first row negated if det W < 0, scaled to det W = 1.
fn onto_special_linear(w: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let (sign, log_det) = sign_and_log_det(w);
    anyhow::ensure!(log_det.is_finite(), "a singular {}×{} matrix has no scaling to det 1", w.nrows(), w.ncols());
    let scale = (-log_det / w.nrows() as f64).exp();
    Ok(Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)] * scale * if i == 0 { sign } else { 1.0 }))
}

/// exp(X) by scaling and squaring with a degree-12 Taylor polynomial (‖X/2ˢ‖_F ≤ 1/2):
/// f64 round-off for the small X of an optimizer step.
fn expm(x: MatRef<'_, f64>) -> Mat<f64> {
    let n = x.nrows();
    let squarings = (x.norm_l2() / 0.5).log2().ceil().max(0.0) as i32;
    let y = x * Scale(0.5f64.powi(squarings));
    let (mut sum, mut term) = (Mat::<f64>::identity(n, n), Mat::<f64>::identity(n, n));
    for k in 1..=12 {
        term = &term * &y * Scale(1.0 / f64::from(k));
        sum += &term;
    }
    for _ in 0..squarings {
        sum = &sum * &sum;
    }
    sum
}

/// One point of SL-Muon's dual: Ω(λ) = msign(S − λI), ψ(λ) = tr Ω/√n, the value
/// ⟨S, Ω⟩ of Ω and the dual function f(λ) = ‖S − λI‖_* = ⟨S − λI, Ω⟩, which
/// bounds the value of every traceless Ω of unit spectral norm from above (weak
/// duality).
struct DualPoint {
    lambda: f64,
    omega: Mat<f64>,
    psi: f64,
    value: f64,
    dual: f64,
}

impl DualPoint {
    fn at(s: MatRef<'_, f64>, lambda: f64) -> Result<Self> {
        let n = s.nrows();
        let omega = orthogonal_factor((s - Mat::<f64>::identity(n, n) * Scale(lambda)).as_ref(), true)?;
        let trace = omega.diagonal().column_vector().sum();
        let value = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| s[(i, j)] * omega[(i, j)]).sum::<f64>();
        Ok(Self { lambda, psi: trace / (n as f64).sqrt(), value, dual: value - lambda * trace, omega })
    }
}

/// SL-Muon's step (see the module documentation).
fn special_linear_step(w: MatRef<'_, f64>, g: MatRef<'_, f64>, config: &ManifoldMuonConfig) -> Result<ManifoldStep> {
    let (n, lr) = (w.nrows(), f64::from(config.lr));
    let s = w.transpose() * g;
    let tol = f64::from(config.dual_tol);
    let mut evaluations = 1;
    let first = DualPoint::at(s.as_ref(), s.diagonal().column_vector().sum() / n as f64)?;
    let omega = if first.psi.abs() < tol {
        first.omega
    } else {
        // Bracket the root: ψ > 0 below it, < 0 above it, stepping away from the
        // start by doubling widths.
        let mut width = (s.norm_l2() / (n as f64).sqrt()).max(f64::MIN_POSITIVE);
        let towards = first.psi.signum();
        let mut near = first;
        let mut far = loop {
            let next = DualPoint::at(s.as_ref(), near.lambda + towards * width)?;
            evaluations += 1;
            if next.psi.signum() != towards || next.psi.abs() < tol {
                break next;
            }
            anyhow::ensure!(evaluations < config.dual_steps, "SL-Muon's dual did not bracket its root in {} steps", config.dual_steps);
            (near, width) = (next, width * 2.0);
        };
        // Cutting planes: f(λ) = ‖S − λI‖_* is convex with slope −tr Ω(λ), so each
        // point gives a supporting line λ ↦ ⟨S, Ω⟩ − λ·tr Ω. The ends' two lines
        // meet at the minimum of that model, evaluated next: at a kink of f (ψ
        // jumps where S − λI is singular, as at λ = 0 for a minibatch gradient of
        // rank below n) this takes a few steps where regula falsi on ψ crawls. The
        // model's minimum, the value of the ends' traceless mix, bounds f's minimum
        // from below and the ends' smaller f from above; once they agree within a
        // relative tol, that mix is the step.
        loop {
            if far.psi.abs() < tol {
                break far.omega;
            }
            // θ·ψ(near) + (1 − θ)·ψ(far) = 0: the ends' traceless mix.
            let theta = far.psi / (far.psi - near.psi);
            let (mixed, dual) = (theta * near.value + (1.0 - theta) * far.value, near.dual.min(far.dual));
            if dual - mixed <= tol * dual.abs() || evaluations >= config.dual_steps {
                break &near.omega * Scale(theta) + &far.omega * Scale(1.0 - theta);
            }
            let (lo, hi) = (near.lambda.min(far.lambda), near.lambda.max(far.lambda));
            let meet = (near.value - far.value) / ((near.psi - far.psi) * (n as f64).sqrt());
            let next = DualPoint::at(s.as_ref(), if lo < meet && meet < hi { meet } else { (lo + hi) / 2.0 })?;
            evaluations += 1;
            if next.psi.abs() < tol || next.psi.signum() != near.psi.signum() {
                far = next;
            } else {
                near = next;
            }
        }
    };
    let tangent_residual = (omega.diagonal().column_vector().sum() / (n as f64).sqrt()).abs();
    let moved = w * expm((&omega * Scale(-lr)).as_ref());
    let (sign, log_det) = sign_and_log_det(moved.as_ref());
    if !(sign > 0.0 && log_det.is_finite()) {
        // Exact arithmetic keeps det = 1; f32 storage does not once W's singular
        // values have spread far enough (SL(n) is not compact).
        let sigma = w.singular_values().unwrap_or_default();
        let (largest, smallest) = sigma.iter().fold((0.0f64, f64::INFINITY), |(a, b), &s| (a.max(s), b.min(s)));
        anyhow::bail!(
            "SL-Muon: W·exp(−lr·Ω) has det {sign}·e^{log_det:.3} instead of 1: W's condition number {:.2e} is past what its \
             f32 storage can hold with det 1 (the group is not compact, and these steps spread W's singular values that far)",
            largest / smallest
        );
    }
    Ok(ManifoldStep { w: moved * Scale((-log_det / n as f64).exp()), direction: w * &omega, dual_steps: evaluations, tangent_residual })
}

/// L1-Stiefel's step (see the module documentation): `rotations` Givens
/// rotations of disjoint row pairs of the tall W, the steepest first, each by lr.
fn l1_stiefel_step(w: MatRef<'_, f64>, g: MatRef<'_, f64>, config: &ManifoldMuonConfig) -> ManifoldStep {
    let n = w.nrows();
    // ⟨G, (eᵢeⱼᵀ − eⱼeᵢᵀ)W⟩ = Mᵢⱼ − Mⱼᵢ with M = GWᵀ.
    let m = g * w.transpose();
    let mut pairs: Vec<(usize, usize, f64)> =
        (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).map(|(i, j)| (i, j, m[(i, j)] - m[(j, i)])).collect();
    pairs.sort_by(|x, y| y.2.abs().total_cmp(&x.2.abs()));
    let mut used = vec![false; n];
    let mut moved = w.to_owned();
    let mut direction = Mat::<f64>::zeros(n, w.ncols());
    let (cos, sin) = (f64::from(config.lr).cos(), f64::from(config.lr).sin());
    let mut turned = 0;
    // Sorted by |gain|: once one is 0, so are the rest.
    for &(i, j, gain) in &pairs {
        if turned == config.rotations || gain == 0.0 {
            break;
        }
        if used[i] || used[j] {
            continue;
        }
        (used[i], used[j], turned) = (true, true, turned + 1);
        // Along −sign(gain)·(eᵢeⱼᵀ − eⱼeᵢᵀ)W: rows i and j turn by lr in their plane.
        let (sign, sin) = (gain.signum(), sin * gain.signum());
        for c in 0..w.ncols() {
            let (wi, wj) = (w[(i, c)], w[(j, c)]);
            (moved[(i, c)], moved[(j, c)]) = (cos * wi - sin * wj, sin * wi + cos * wj);
            (direction[(i, c)], direction[(j, c)]) = (sign * wj, -sign * wi);
        }
    }
    // The rotations are exact, but W arrives with f32 round-off, which would
    // accumulate over steps: one Björck–Bowie step, W(3I − WᵀW)/2, squares it.
    let gram = moved.transpose() * &moved;
    let p = w.ncols();
    let corrected = &moved * ((Mat::<f64>::identity(p, p) * Scale(3.0) - gram) * Scale(0.5));
    ManifoldStep { w: corrected, direction, dual_steps: 0, tangent_residual: 0.0 }
}

/// Whether a rows×cols matrix is constrained by `manifold` (others take the unconstrained step).
fn fits(manifold: Manifold, rows: usize, cols: usize) -> bool {
    match manifold {
        Manifold::Stiefel | Manifold::Grassmann | Manifold::BlockStiefel | Manifold::L1Stiefel => true,
        Manifold::SpecialLinear => rows == cols,
        Manifold::Symplectic => rows == cols && rows.is_multiple_of(2),
    }
}

/// J·X for J = [[0, I], [−I, 0]] of size n = 2k: the rows' halves swapped, the second negated.
fn j_times(x: MatRef<'_, f64>) -> Mat<f64> {
    let k = x.nrows() / 2;
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| if i < k { x[(i + k, j)] } else { -x[(i - k, j)] })
}

/// P(X) = (X + J·Xᵀ·J)/2, the Frobenius projection onto sp(2k).
fn onto_symplectic_algebra(x: MatRef<'_, f64>) -> Mat<f64> {
    let jxt = j_times(x.transpose());
    // (J·Xᵀ)·J = −(J·(J·Xᵀ)ᵀ)ᵀ, as Jᵀ = −J.
    let jxtj = j_times(jxt.transpose()).transpose() * Scale(-1.0);
    (x + jxtj) * Scale(0.5)
}

/// cay(−X) = (I + X/2)⁻¹(I − X/2): in Sp(2k) for X in sp(2k).
fn cayley(x: MatRef<'_, f64>) -> Mat<f64> {
    use faer::linalg::solvers::Solve;
    let n = x.nrows();
    let half = x * Scale(0.5);
    let identity = Mat::<f64>::identity(n, n);
    (&identity + &half).partial_piv_lu().solve(&identity - &half)
}

/// The symplectic step (see the module documentation).
fn symplectic_step(w: MatRef<'_, f64>, g: MatRef<'_, f64>, config: &ManifoldMuonConfig) -> Result<ManifoldStep> {
    let lr = f64::from(config.lr);
    let projected = onto_symplectic_algebra((w.transpose() * g).as_ref());
    let size = projected.singular_values().map_err(|e| anyhow::anyhow!("SVD failed: {e:?}"))?.into_iter().fold(0.0, f64::max);
    let omega = if size > 0.0 { projected * Scale(1.0 / size) } else { projected };
    let jo = j_times(omega.as_ref());
    let tangent_residual = (&jo - jo.transpose()).norm_l2() / w.ncols() as f64;
    Ok(ManifoldStep { w: w * cayley((&omega * Scale(lr)).as_ref()), direction: w * &omega, dual_steps: 0, tangent_residual })
}

/// max |WᵀJW − J| of a row-major square matrix.
pub fn symplectic_drift(x: &[f32], n: usize) -> f64 {
    let w = tall(x, n, n);
    let form = w.transpose() * j_times(w.as_ref());
    let j = j_times(Mat::<f64>::identity(n, n).as_ref());
    (0..n * n).map(|k| (form[(k / n, k % n)] - j[(k / n, k % n)]).abs()).fold(0.0, f64::max)
}

/// A row-major rows×cols matrix as a tall f64 matrix (transposed when wide).
fn tall(x: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    if rows >= cols {
        Mat::from_fn(rows, cols, |i, j| f64::from(x[i * cols + j]))
    } else {
        Mat::from_fn(cols, rows, |i, j| f64::from(x[j * cols + i]))
    }
}

/// The inverse of [`tall`].
fn row_major(m: MatRef<'_, f64>, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|k| if rows >= cols { m[(k / cols, k % cols)] } else { m[(k % cols, k / cols)] } as f32).collect()
}

/// max |WᵀW − I| of a row-major matrix taken as tall.
pub fn stiefel_drift(x: &[f32], rows: usize, cols: usize) -> f64 {
    let w = tall(x, rows, cols);
    let gram = w.transpose() * &w;
    let p = w.ncols();
    (0..p * p).map(|k| (gram[(k / p, k % p)] - f64::from(u8::from(k / p == k % p))).abs()).fold(0.0, f64::max)
}

/// |det W − 1| of a row-major square matrix.
pub fn special_linear_drift(x: &[f32], n: usize) -> f64 {
    let (sign, log_det) = sign_and_log_det(tall(x, n, n).as_ref());
    (sign * log_det.exp() - 1.0).abs()
}

/// A block of a matrix parameter constrained as a matrix of its own: the whole
/// matrix, or one attention head's block for Block-Stiefel.
#[derive(Clone, Debug)]
struct Piece {
    rows: Range<usize>,
    cols: Range<usize>,
}

impl Piece {
    /// Its entries out of a row-major matrix with `cols` columns.
    fn gather(&self, x: &[f32], cols: usize) -> Vec<f32> {
        self.rows.clone().flat_map(|r| x[r * cols + self.cols.start..r * cols + self.cols.end].iter().copied()).collect()
    }

    fn scatter(&self, x: &mut [f32], cols: usize, values: &[f32]) {
        for (k, r) in self.rows.clone().enumerate() {
            x[r * cols + self.cols.start..r * cols + self.cols.end]
                .copy_from_slice(&values[k * self.cols.len()..(k + 1) * self.cols.len()]);
        }
    }
}

pub struct ManifoldMuon {
    config: ManifoldMuonConfig,
    /// (parameter, columns, pieces) of each hidden matrix.
    matrices: Vec<(usize, usize, Vec<Piece>)>,
    last: Vec<StepReport>,
}

impl ManifoldMuon {
    pub fn new<B: Backend>(store: &ParamStore<B>, params: &[usize], config: ManifoldMuonConfig) -> Self {
        let matrices = params
            .iter()
            .map(|&i| {
                let s = &store.specs[i];
                let pieces = match (config.manifold, s.blocks) {
                    (Manifold::BlockStiefel, Some(Blocks::Rows(n))) => {
                        (0..s.rows).step_by(n).map(|r| Piece { rows: r..r + n, cols: 0..s.cols }).collect()
                    }
                    (Manifold::BlockStiefel, Some(Blocks::Cols(n))) => {
                        (0..s.cols).step_by(n).map(|c| Piece { rows: 0..s.rows, cols: c..c + n }).collect()
                    }
                    _ => vec![Piece { rows: 0..s.rows, cols: 0..s.cols }],
                };
                (i, s.cols, pieces)
            })
            .collect();
        Self { config, matrices, last: Vec::new() }
    }
}

impl<B: Backend> UpdateRule<B> for ManifoldMuon {
    fn step(&mut self, backend: &B, store: &mut ParamStore<B>, _: &[usize], lr: f32, t: u64, _: Option<&mut Vec<Capture>>) -> Result<()> {
        // Each block of Block-Stiefel is a Stiefel matrix.
        let manifold = if self.config.manifold == Manifold::BlockStiefel { Manifold::Stiefel } else { self.config.manifold };
        let config = ManifoldMuonConfig { lr, manifold, ..self.config };
        self.last.clear();
        for (i, cols, pieces) in &self.matrices {
            let (i, cols) = (*i, *cols);
            let mut values = backend.download(store.value(i))?;
            let grads = backend.download(store.grad(i))?;
            anyhow::ensure!(
                values.iter().chain(&grads).all(|x| x.is_finite()),
                "{}: non-finite weights or gradient have no step on the manifold",
                store.specs[i].name
            );
            let (mut dual_steps, mut residual, mut drift, mut nonzero) = (0, 0.0f64, None::<f64>, 0usize);
            for piece in pieces {
                let (r, c) = (piece.rows.len(), piece.cols.len());
                let mut w = tall(&piece.gather(&values, cols), r, c);
                let g = tall(&piece.gather(&grads, cols), r, c);
                let constrained = fits(manifold, r, c);
                if t == 1 && constrained {
                    w = match manifold {
                        Manifold::SpecialLinear => onto_special_linear(w.as_ref())?,
                        Manifold::Symplectic => cayley(onto_symplectic_algebra(w.as_ref()).as_ref()),
                        Manifold::Stiefel | Manifold::Grassmann | Manifold::BlockStiefel | Manifold::L1Stiefel => {
                            orthogonal_factor(w.as_ref(), false)?
                        }
                    };
                }
                let step = manifold_step(w.as_ref(), g.as_ref(), &config).map_err(|e| e.context(store.specs[i].name.clone()))?;
                let stored = row_major(step.w.as_ref(), r, c);
                piece.scatter(&mut values, cols, &stored);
                if manifold == Manifold::L1Stiefel {
                    let d = step.direction.as_ref();
                    nonzero += (0..d.ncols()).flat_map(|j| (0..d.nrows()).map(move |i| d[(i, j)])).filter(|&x| x != 0.0).count();
                }
                dual_steps = dual_steps.max(step.dual_steps);
                residual = residual.max(step.tangent_residual);
                if constrained {
                    let piece_drift = match manifold {
                        Manifold::SpecialLinear => special_linear_drift(&stored, r),
                        Manifold::Symplectic => symplectic_drift(&stored, r),
                        Manifold::Stiefel | Manifold::Grassmann | Manifold::BlockStiefel | Manifold::L1Stiefel => {
                            stiefel_drift(&stored, r, c)
                        }
                    };
                    drift = Some(drift.unwrap_or(0.0).max(piece_drift));
                }
            }
            backend.copy(B::view_mut(&mut store.values, store.specs[i].range()), B::all(&backend.upload(&values)));
            self.last.extend([
                StepReport { param: i, name: "manifold_dual_steps", value: dual_steps as f64 },
                StepReport { param: i, name: "manifold_tangent_residual", value: residual },
            ]);
            if manifold == Manifold::L1Stiefel {
                let size = store.specs[i].rows * store.specs[i].cols;
                self.last.push(StepReport { param: i, name: "manifold_step_density", value: nonzero as f64 / size as f64 });
            }
            if let Some(value) = drift {
                self.last.push(StepReport { param: i, name: "manifold_drift", value });
            }
        }
        Ok(())
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)> {
        Vec::new()
    }

    fn last_step(&self) -> Vec<StepReport> {
        self.last.clone()
    }
}
