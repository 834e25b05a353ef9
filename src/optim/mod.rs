//! One optimizer interface with parameter groups routed by [`Role`].
//!
//! An [`Optimizer`] is a list of [`ParamGroup`]s, each an [`UpdateRule`] over some
//! parameters of a [`ParamStore`]. Muon's "auxiliary AdamW for everything that is
//! not a hidden matrix" is just a second group; so are Shampoo's and SOAP's AdamW
//! for vectors.
//! Configs are small typed structs with defaults (serde: TOML presets and CLI).

pub mod adamw;
pub mod anderson;
pub mod diagonal;
pub mod dion;
pub mod gda2;
pub mod kfac;
pub mod lion;
pub mod manifold_muon;
pub mod muon;
pub mod oblique;
pub mod psgd_kron;
pub mod schedule;
pub mod sgd;
pub mod shampoo;
pub mod soap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Gemm};
use crate::models::{ParamStore, Role};

pub use adamw::{AdamW, AdamWConfig};
pub use anderson::{AndersonGda, AndersonGdaConfig};
pub use diagonal::{AdadeltaConfig, AdagradConfig, AdamConfig, Diagonal, DiagonalConfig, RmsPropConfig};
pub use dion::{Dion, DionConfig};
pub use gda2::{Gda2, Gda2Config};
pub use kfac::{Kfac, KfacConfig};
pub use lion::{Lion, LionConfig};
pub use manifold_muon::{Manifold, ManifoldMuon, ManifoldMuonConfig};
pub use muon::{Muon, MuonConfig, MuonScaling};
pub use psgd_kron::{PsgdKron, PsgdKronConfig};
pub use schedule::{Decay, Schedule};
pub use sgd::{Sgd, SgdConfig};
pub use shampoo::{Grafting, Shampoo, ShampooConfig};
pub use soap::{Soap, SoapConfig};

/// A tensor an update rule exposes on probe steps (e.g. Muon's direction before
/// and after orthogonalization), keyed by parameter index.
pub struct Capture {
    pub param: usize,
    pub kind: &'static str,
    pub values: Vec<f32>,
}

/// One update rule over the parameters of its group.
pub trait UpdateRule<B: Backend>: Send {
    /// Applies step `t` (1-based) with learning rate `lr` to `params` (store indices).
    /// With `captures`, pushes the intermediate tensors probes want to see.
    /// Errors are the backend's (see [`Backend`]) and the rule's own.
    fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        params: &[usize],
        lr: f32,
        t: u64,
        captures: Option<&mut Vec<Capture>>,
    ) -> anyhow::Result<()>;

    /// Every state buffer by a stable name, for checkpoints.
    fn state_mut(&mut self) -> Vec<(String, &mut B::Buf)>;

    /// Counters worth recording (e.g. Shampoo's failed root computations).
    fn diagnostics(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// What the last step did per parameter (e.g. Muon's scale of each matrix),
    /// for the `optimizer_steps` table.
    fn last_step(&self) -> Vec<StepReport> {
        Vec::new()
    }
}

/// One value an update rule reports about its last step on one parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub param: usize,
    pub name: &'static str,
    pub value: f64,
}

pub struct ParamGroup<B: Backend> {
    /// e.g. "muon", "adamw-aux".
    pub name: String,
    pub params: Vec<usize>,
    pub lr: f32,
    pub rule: Box<dyn UpdateRule<B>>,
}

pub struct Optimizer<B: Backend> {
    pub name: String,
    pub groups: Vec<ParamGroup<B>>,
    /// Steps taken so far (restored from checkpoints).
    pub steps: u64,
}

impl<B: Backend> Optimizer<B> {
    /// One step of every group; `lr_scale` multiplies each group's learning rate (schedules).
    pub fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        lr_scale: f32,
        mut captures: Option<&mut Vec<Capture>>,
    ) -> anyhow::Result<()> {
        self.steps += 1;
        for g in &mut self.groups {
            g.rule
                .step(backend, store, &g.params, g.lr * lr_scale, self.steps, captures.as_deref_mut())
                .map_err(|e| e.context(format!("optimizer group {}", g.name)))?;
        }
        Ok(())
    }

    /// Which group updates parameter `i`.
    pub fn group_of(&self, i: usize) -> Option<&str> {
        self.groups.iter().find(|g| g.params.contains(&i)).map(|g| g.name.as_str())
    }
}

/// Every optimizer the lab knows, with its hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    Lion(LionConfig),
    Muon(MuonConfig),
    Shampoo(ShampooConfig),
    Soap(SoapConfig),
    Adagrad(AdagradConfig),
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
    Adadelta(AdadeltaConfig),
    Adam(AdamConfig),
    AndersonGda(AndersonGdaConfig),
    Dion(DionConfig),
    Oblique(ObliqueConfig),
    ManifoldMuon(ManifoldMuonConfig),
    Kfac(KfacConfig),
    Gda2(Gda2Config),
    PsgdKron(PsgdKronConfig),
}

/// A base optimizer whose hidden matrices are kept on the oblique manifold
/// (unit-norm columns; see [`oblique`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObliqueConfig {
    /// The optimizer whose steps are projected and retracted (AdamW by default).
    pub base: Box<OptimizerConfig>,
}

impl Default for ObliqueConfig {
    fn default() -> Self {
        Self { base: Box::new(OptimizerConfig::AdamW(AdamWConfig::default())) }
    }
}

/// Names accepted by [`OptimizerConfig::by_name`].
pub const OPTIMIZER_NAMES: [&str; 25] = [
    "sgd",
    "adamw",
    "lion",
    "muon",
    "muon-fast",
    "normuon",
    "shampoo",
    "soap",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "amsgrad",
    "anderson-gda",
    "gda2",
    "dion",
    "oblique",
    "stiefel",
    "grassmann",
    "sl-muon",
    "symplectic",
    "block-stiefel",
    "l1-stiefel",
    "kfac",
    "psgd-kron",
];

impl OptimizerConfig {
    /// The default configuration of a named optimizer.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "sgd" => Self::Sgd(SgdConfig::default()),
            "adamw" => Self::AdamW(AdamWConfig::default()),
            "adagrad" => Self::Adagrad(AdagradConfig::default()),
            "rmsprop" => Self::RmsProp(RmsPropConfig::default()),
            "adadelta" => Self::Adadelta(AdadeltaConfig::default()),
            "adam" => Self::Adam(AdamConfig::default()),
            "amsgrad" => Self::Adam(AdamConfig { amsgrad: true, ..AdamConfig::default() }),
            "anderson-gda" => Self::AndersonGda(AndersonGdaConfig::default()),
            "gda2" => Self::Gda2(Gda2Config::default()),
            "dion" => Self::Dion(DionConfig::default()),
            "oblique" => Self::Oblique(ObliqueConfig::default()),
            // `manifold-muon` is the serialized kind of these six (saved configs).
            "stiefel" | "manifold-muon" => Self::ManifoldMuon(ManifoldMuonConfig::default()),
            "grassmann" => Self::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::Grassmann, ..Default::default() }),
            "sl-muon" => Self::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::SpecialLinear, ..Default::default() }),
            "symplectic" => Self::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::Symplectic, ..Default::default() }),
            "block-stiefel" => Self::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::BlockStiefel, ..Default::default() }),
            "l1-stiefel" => Self::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::L1Stiefel, ..Default::default() }),
            "lion" => Self::Lion(LionConfig::default()),
            "muon" => Self::Muon(MuonConfig::default()),
            "muon-fast" => Self::Muon(MuonConfig::muon_fast()),
            "normuon" => Self::Muon(MuonConfig::normuon()),
            "shampoo" => Self::Shampoo(ShampooConfig::default()),
            "soap" => Self::Soap(SoapConfig::default()),
            "kfac" => Self::Kfac(KfacConfig::default()),
            "psgd-kron" => Self::PsgdKron(PsgdKronConfig::default()),
            _ => bail!("unknown optimizer {name:?}; known: {}", OPTIMIZER_NAMES.join(", ")),
        })
    }

    /// Checks every hyperparameter against its range (PyTorch's checks where
    /// PyTorch has one), naming the key.
    pub fn validate(&self) -> Result<()> {
        use check::*;
        let adamw = |prefix: &str, c: &AdamWConfig| -> Result<()> {
            positive(&format!("{prefix}lr"), c.lr)?;
            unit(&format!("{prefix}beta1"), c.beta1)?;
            unit(&format!("{prefix}beta2"), c.beta2)?;
            positive(&format!("{prefix}eps"), c.eps)?;
            non_negative(&format!("{prefix}weight_decay"), c.weight_decay)
        };
        match self {
            Self::Sgd(c) => {
                positive("lr", c.lr)?;
                unit("momentum", c.momentum)?;
                non_negative("weight_decay", c.weight_decay)?;
                if c.nesterov && c.momentum == 0.0 {
                    bail!("nesterov = true needs momentum > 0 (as torch.optim.SGD)");
                }
            }
            Self::AdamW(c) => adamw("", c)?,
            Self::Lion(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                unit("beta2", c.beta2)?;
                non_negative("weight_decay", c.weight_decay)?;
            }
            Self::Muon(c) => {
                positive("lr", c.lr)?;
                unit("momentum", c.momentum)?;
                at_least_one("ns_steps", c.ns_steps as u64)?;
                positive("scale_extra", c.scale_extra)?;
                non_negative("ns_tol", c.ns_tol)?;
                unit("beta2", c.beta2)?;
                non_negative("small_matrix_penalty", c.small_matrix_penalty)?;
                at_least_one("penalty_below", c.penalty_below as u64)?;
                non_negative("weight_decay", c.weight_decay)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::Shampoo(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                if !(c.beta2 > 0.0 && c.beta2 <= 1.0) {
                    bail!("beta2 must be in (0, 1] (1: summed statistics), got {}", c.beta2);
                }
                non_negative("epsilon.absolute", c.epsilon.absolute as f32)?;
                non_negative("epsilon.relative", c.epsilon.relative as f32)?;
                at_least_one("precondition_frequency", c.precondition_frequency)?;
                at_least_one("max_preconditioner_dim", c.max_preconditioner_dim as u64)?;
                unit("graft_beta2", c.graft_beta2)?;
                positive("graft_eps", c.graft_eps)?;
                non_negative("weight_decay", c.weight_decay)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::Soap(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                unit("beta2", c.beta2)?;
                unit("shampoo_beta", c.shampoo_beta)?;
                positive("eps", c.eps)?;
                non_negative("weight_decay", c.weight_decay)?;
                at_least_one("precondition_frequency", c.precondition_frequency)?;
                at_least_one("max_preconditioner_dim", c.max_preconditioner_dim as u64)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::Adagrad(c) => {
                positive("lr", c.lr)?;
                non_negative("lr_decay", c.lr_decay)?;
                non_negative("weight_decay", c.weight_decay)?;
                non_negative("initial_accumulator_value", c.initial_accumulator_value)?;
                positive("eps", c.eps)?;
            }
            Self::RmsProp(c) => {
                positive("lr", c.lr)?;
                unit("alpha", c.alpha)?;
                positive("eps", c.eps)?;
                non_negative("weight_decay", c.weight_decay)?;
                unit("momentum", c.momentum)?;
            }
            Self::Adadelta(c) => {
                positive("lr", c.lr)?;
                unit("rho", c.rho)?;
                positive("eps", c.eps)?;
                non_negative("weight_decay", c.weight_decay)?;
            }
            Self::Adam(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                unit("beta2", c.beta2)?;
                positive("eps", c.eps)?;
                non_negative("weight_decay", c.weight_decay)?;
            }
            Self::Oblique(c) => {
                if matches!(*c.base, Self::Oblique(_)) {
                    bail!("base: an oblique optimizer cannot be the base of another");
                }
                c.base.validate().map_err(|e| anyhow::anyhow!("base.{e}"))?;
            }
            Self::Dion(c) => {
                positive("lr", c.lr)?;
                unit("momentum", c.momentum)?;
                if !(c.rank_fraction > 0.0 && c.rank_fraction <= 1.0) {
                    bail!("rank_fraction must be in (0, 1], got {}", c.rank_fraction);
                }
                non_negative("weight_decay", c.weight_decay)?;
                positive("epsilon", c.epsilon)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::ManifoldMuon(c) => {
                positive("lr", c.lr)?;
                positive("dual_lr", c.dual_lr)?;
                at_least_one("dual_steps", c.dual_steps as u64)?;
                non_negative("dual_tol", c.dual_tol)?;
                at_least_one("rotations", c.rotations as u64)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::Kfac(c) => {
                positive("lr", c.lr)?;
                unit("momentum", c.momentum)?;
                positive("damping", c.damping as f32)?;
                unit("statistics_decay", c.statistics_decay)?;
                at_least_one("inverse_every", c.inverse_every)?;
                positive("kl_clip", c.kl_clip as f32)?;
                non_negative("weight_decay", c.weight_decay)?;
                adamw("aux_adamw.", &c.aux_adamw)?;
            }
            Self::PsgdKron(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                non_negative("weight_decay", c.weight_decay)?;
                positive("precond_lr", c.precond_lr)?;
                at_least_one("max_size_triangular", c.max_size_triangular as u64)?;
                positive("trust_region_scale", c.trust_region_scale)?;
                let (min, max) = (c.update_probability_min, c.update_probability_max);
                if !(min > 0.0 && min <= max && max <= 1.0) {
                    bail!("update_probability_min and _max must satisfy 0 < min ≤ max ≤ 1, got {min} and {max}");
                }
                non_negative("update_probability_decay", c.update_probability_decay)?;
            }
            Self::Gda2(c) => {
                positive("lr", c.lr)?;
                unit("beta1", c.beta1)?;
                unit("beta2", c.beta2)?;
                positive("eps", c.eps)?;
                at_least_one("memory", c.memory as u64)?;
                non_negative("regularization", c.regularization as f32)?;
                non_negative("descent_margin", c.descent_margin as f32)?;
                positive("trust_ratio", c.trust_ratio as f32)?;
            }
            Self::AndersonGda(c) => {
                positive("lr", c.lr)?;
                at_least_one("memory", c.memory as u64)?;
                non_negative("beta", c.beta)?;
                non_negative("regularization", c.regularization as f32)?;
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd(_) => "sgd",
            Self::AdamW(_) => "adamw",
            Self::Lion(_) => "lion",
            Self::Muon(_) => "muon",
            Self::Shampoo(_) => "shampoo",
            Self::Soap(_) => "soap",
            Self::Adagrad(_) => "adagrad",
            Self::RmsProp(_) => "rmsprop",
            Self::Adadelta(_) => "adadelta",
            Self::Adam(_) => "adam",
            Self::AndersonGda(_) => "anderson-gda",
            Self::Gda2(_) => "gda2",
            Self::PsgdKron(_) => "psgd-kron",
            Self::Dion(_) => "dion",
            Self::Oblique(_) => "oblique",
            Self::Kfac(_) => "kfac",
            Self::ManifoldMuon(c) => match c.manifold {
                Manifold::Stiefel => "stiefel",
                Manifold::Grassmann => "grassmann",
                Manifold::SpecialLinear => "sl-muon",
                Manifold::Symplectic => "symplectic",
                Manifold::BlockStiefel => "block-stiefel",
                Manifold::L1Stiefel => "l1-stiefel",
            },
        }
    }

    /// Builds the groups for a model's parameters (K-FAC also asks the store
    /// for its layers' inputs and output gradients).
    pub fn build<B: Backend>(&self, backend: &B, store: &mut ParamStore<B>) -> Optimizer<B> {
        let all: Vec<usize> = (0..store.specs.len()).collect();
        let with_role =
            |keep: &dyn Fn(Role) -> bool| -> Vec<usize> { all.iter().copied().filter(|&i| keep(store.specs[i].role)).collect() };
        // Shampoo and SOAP precondition every matrix; an AdamW takes the vectors.
        let (matrices, vectors) = (with_role(&Role::is_matrix), with_role(&|r| !r.is_matrix()));
        let mut groups = Vec::new();
        let mut push = |name: &str, params: Vec<usize>, lr: f32, rule: Box<dyn UpdateRule<B>>| {
            if !params.is_empty() {
                groups.push(ParamGroup { name: name.into(), params, lr, rule });
            }
        };
        match self {
            Self::Oblique(c) => {
                for g in c.base.build(backend, store).groups {
                    let rule = Box::new(oblique::OnOblique::new(g.rule, store, &g.params));
                    push(&g.name, g.params, g.lr, rule);
                }
            }
            Self::Sgd(c) => push("sgd", all.clone(), c.lr, Box::new(Sgd::new(backend, store, *c))),
            Self::AdamW(c) => push("adamw", all.clone(), c.lr, Box::new(AdamW::new(backend, store, *c))),
            Self::Lion(c) => push("lion", all.clone(), c.lr, Box::new(Lion::new(backend, store, *c))),
            Self::Muon(c) => {
                let muon_roles = |r: Role| r == Role::HiddenMatrix || (c.all_matrices && r.is_matrix());
                let (main, aux) = (with_role(&muon_roles), with_role(&|r| !muon_roles(r)));
                push("muon", main.clone(), c.lr, Box::new(Muon::new(backend, store, &main, *c)));
                push("adamw-aux", aux, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
            Self::Shampoo(c) => {
                push("shampoo", matrices.clone(), c.lr, Box::new(Shampoo::new(backend, store, &matrices, *c)));
                push("adamw-aux", vectors, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
            Self::Kfac(c) => {
                push("kfac", matrices.clone(), c.lr, Box::new(Kfac::new(backend, store, &matrices, *c)));
                push("adamw-aux", vectors, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
            Self::Soap(c) => {
                push("soap", matrices.clone(), c.lr, Box::new(Soap::new(backend, store, &matrices, *c)));
                push("adamw-aux", vectors, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
            Self::Adagrad(c) => push("adagrad", all.clone(), c.lr, Box::new(Diagonal::new(backend, store, DiagonalConfig::Adagrad(*c)))),
            Self::RmsProp(c) => push("rmsprop", all.clone(), c.lr, Box::new(Diagonal::new(backend, store, DiagonalConfig::RmsProp(*c)))),
            Self::Adadelta(c) => push("adadelta", all.clone(), c.lr, Box::new(Diagonal::new(backend, store, DiagonalConfig::Adadelta(*c)))),
            Self::Adam(c) => push("adam", all.clone(), c.lr, Box::new(Diagonal::new(backend, store, DiagonalConfig::Adam(*c)))),
            Self::AndersonGda(c) => push("anderson-gda", all.clone(), c.lr, Box::new(AndersonGda::new(backend, store, *c))),
            Self::Gda2(c) => push("gda2", all.clone(), c.lr, Box::new(Gda2::new(backend, store, *c))),
            Self::PsgdKron(c) => push("psgd-kron", all.clone(), c.lr, Box::new(PsgdKron::new(backend, store, &all, *c))),
            Self::ManifoldMuon(c) => {
                let (hidden, rest) = (with_role(&|r| r == Role::HiddenMatrix), with_role(&|r| r != Role::HiddenMatrix));
                push(self.name(), hidden.clone(), c.lr, Box::new(ManifoldMuon::new(store, &hidden, *c)));
                push("adamw-aux", rest, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
            Self::Dion(c) => {
                let (hidden, rest) = (with_role(&|r| r == Role::HiddenMatrix), with_role(&|r| r != Role::HiddenMatrix));
                push("dion", hidden.clone(), c.lr, Box::new(Dion::new(backend, store, &hidden, *c)));
                push("adamw-aux", rest, c.aux_adamw.lr, Box::new(AdamW::new(backend, store, c.aux_adamw)));
            }
        }
        Optimizer { name: self.name().into(), groups, steps: 0 }
    }
}

/// Range checks of hyperparameters; each error names the key and the value.
mod check {
    use anyhow::{Result, ensure};

    /// Finite and > 0 (learning rates, epsilons).
    pub fn positive(key: &str, x: f32) -> Result<()> {
        ensure!(x.is_finite() && x > 0.0, "{key} must be a finite number > 0, got {x}");
        Ok(())
    }
    /// Finite and ≥ 0 (weight decay).
    pub fn non_negative(key: &str, x: f32) -> Result<()> {
        ensure!(x.is_finite() && x >= 0.0, "{key} must be a finite number ≥ 0, got {x}");
        Ok(())
    }
    /// In [0, 1) (momenta, betas).
    pub fn unit(key: &str, x: f32) -> Result<()> {
        ensure!((0.0..1.0).contains(&x), "{key} must be in [0, 1), got {x}");
        Ok(())
    }
    /// An integer ≥ 1 (frequencies, iteration counts, sizes).
    pub fn at_least_one(key: &str, x: u64) -> Result<()> {
        ensure!(x >= 1, "{key} must be at least 1, got {x}");
        Ok(())
    }
}

/// The store ranges of a group's parameters (for multi-tensor ops).
fn ranges<B: Backend>(store: &ParamStore<B>, params: &[usize]) -> Vec<std::ops::Range<usize>> {
    params.iter().map(|&i| store.specs[i].range()).collect()
}

/// `stat ← beta·stat + weight·G·Gᵀ` (`over_rows`: m×m) or `weight·Gᵀ·G` (n×n) for an
/// m×n gradient: the Kronecker-factored statistics of Shampoo and SOAP.
fn accumulate_gram<B: Backend>(
    backend: &B,
    stat: &mut B::Buf,
    g: B::View<'_>,
    (m, n): (usize, usize),
    over_rows: bool,
    weight: f32,
    beta: f32,
) {
    let shape = if over_rows {
        Gemm { m, k: n, n: m, trans_a: false, trans_b: true }
    } else {
        Gemm { m: n, k: m, n, trans_a: true, trans_b: false }
    };
    backend.matmul(B::all_mut(stat), g, g, shape, weight, beta);
}

/// A matrix parameter with state per side (rows: left, columns: right):
/// Shampoo's preconditioners, SOAP's eigenbases.
struct TwoSided<S> {
    param: usize,
    rows: usize,
    cols: usize,
    left: S,
    right: S,
}

/// One [`TwoSided`] per parameter in `params`, each side made by `side(dim)`.
///
/// # Panics
/// If a parameter is not a matrix (`optimizer` names the caller).
fn two_sided<B: Backend, S>(store: &ParamStore<B>, params: &[usize], optimizer: &str, side: impl Fn(usize) -> S) -> Vec<TwoSided<S>> {
    params
        .iter()
        .map(|&i| {
            let s = &store.specs[i];
            assert!(s.role.is_matrix(), "{optimizer} here takes matrices only; {} is a {}", s.name, s.role.as_str());
            TwoSided { param: i, rows: s.rows, cols: s.cols, left: side(s.rows), right: side(s.cols) }
        })
        .collect()
}

/// The n×n identity: the root or basis a side starts with, which leaves a
/// direction unchanged until the first one is computed (or if none ever can be).
fn identity<B: Backend>(backend: &B, n: usize) -> B::Buf {
    let mut eye = vec![0.0; n * n];
    (0..n).for_each(|i| eye[i * n + i] = 1.0);
    backend.upload(&eye)
}
