//! Every table optlab writes, every column's type and meaning. The one place
//! where a number in the Parquet output gets its definition (`exp schema`
//! prints this as Markdown for the README).

/// Column types, as they land in Parquet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    I64,
    F64,
    Bool,
    /// A list of f32 (e.g. all singular values of a matrix, descending).
    ListF32,
    /// A list of f64 (e.g. a flattened row-major square matrix).
    ListF64,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::I64 => "int64",
            Kind::F64 => "float64",
            Kind::Bool => "bool",
            Kind::ListF32 => "list<float32>",
            Kind::ListF64 => "list<float64>",
        }
    }
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Nullable columns may hold missing values (e.g. a per-task column in an all-classes row).
    pub nullable: bool,
    pub doc: &'static str,
}

pub struct Table {
    /// Also the folder name under the run directory.
    pub name: &'static str,
    pub doc: &'static str,
    pub columns: &'static [Column],
}

const fn col(name: &'static str, kind: Kind, doc: &'static str) -> Column {
    Column { name, kind, nullable: false, doc }
}
const fn opt(name: &'static str, kind: Kind, doc: &'static str) -> Column {
    Column { name, kind, nullable: true, doc }
}

const RUN: Column = col("run", Kind::Str, "Run id: `<optimizer>-s<seed>` (unique within an output directory).");
const OPTIMIZER: Column = col(
    "optimizer",
    Kind::Str,
    "Optimizer label: an optimizer's name (the README's optimizer table) or a preset's key such as `muon-all`.",
);
const SEED: Column =
    col("seed", Kind::I64, "Seed of initialization, batch order and sampling (separate ChaCha12 streams: `src/random.rs`).");
const STEP: Column = col("step", Kind::I64, "Optimizer steps taken so far in this run (0 = before training).");
const TASK: Column = col("task", Kind::I64, "Task being trained when the row was written (0-based; 0 for language models).");
const PARAM: Column = col("param", Kind::Str, "Parameter name, e.g. `fc2.weight` (PyTorch's names for the same model).");

pub const STEPS: Table = Table {
    name: "steps",
    doc: "One row per optimizer step.",
    columns: &[
        RUN,
        STEP,
        TASK,
        col("epoch", Kind::I64, "Epoch within the current task (0-based)."),
        col("loss", Kind::F64, "Mean softmax cross-entropy of the batch, before the step."),
        col("batch_accuracy", Kind::F64, "Fraction of the batch classified correctly, before the step."),
        col("lr", Kind::F64, "Learning rate of the optimizer's main group at this step."),
        col("grad_norm", Kind::F64, "L2 norm of the whole gradient (all parameters)."),
        col("update_norm", Kind::F64, "L2 norm of the whole applied update θ_after − θ_before."),
    ],
};

pub const PARAM_STEPS: Table = Table {
    name: "param_steps",
    doc: "One row per optimizer step and parameter.",
    columns: &[
        RUN,
        STEP,
        PARAM,
        col("group", Kind::Str, "Parameter group that updated it (e.g. `muon`, `adamw-aux`)."),
        col("grad_norm", Kind::F64, "‖∇θ‖₂ of this parameter."),
        col("update_norm", Kind::F64, "‖Δθ‖₂, the applied update (weight decay included)."),
        col("param_norm", Kind::F64, "‖θ‖₂ after the step."),
        col("update_ratio", Kind::F64, "update_norm / param_norm: the relative step size."),
    ],
};

pub const OPTIMIZER_STEPS: Table = Table {
    name: "optimizer_steps",
    doc: "What an optimizer reports about its own step, per step and parameter, for the optimizers that have something to say.",
    columns: &[
        RUN,
        STEP,
        PARAM,
        col(
            "name",
            Kind::Str,
            "`muon_step_scale` (the factor on lr of this matrix's orthogonalized step: scaling × scale_extra × small-matrix penalty), \
             `muon_ns_steps` (Newton-Schulz iterations taken, fewer than ns_steps when ns_tol stopped it), \
             `anderson_memory_used` (differences in AndersonGDA's mixing), `anderson_mixing_norm` (‖γ‖₂ of its mixing coefficients; \
             0 when the system was singular and the plain gradient step was taken), \
             `oblique_drift` (largest |‖column‖ − 1| of a matrix kept on the oblique manifold, after its retraction), \
             `manifold_dual_steps` (dual iterations of `stiefel` and `sl-muon`; 0 for the closed-form steps of `grassmann`, `symplectic` and `l1-stiefel`), \
             `manifold_tangent_residual` (how far the step taken is from the tangent space: ‖WᵀA + AᵀW‖_F/p, or \
             |tr(W⁻¹A)|/√n for `sl-muon`), `manifold_drift` (max |WᵀW − I|, |det W − 1| for `sl-muon`, or max |WᵀJW − J| for \
             `symplectic`, of the stored matrix after the retraction), `manifold_step_density` (`l1-stiefel`: the fraction of the matrix's entries its Givens rotations move), \
             `gda2_memory_used`, `gda2_mixing_norm` (‖γ‖₂ of GDA2's mixing coefficients over all parameters; 0 when the \
             step taken was Adam's), `gda2_regularization` (its adaptive δ), `gda2_rejected` (1 when the descent check \
             replaced the mixed step by Adam's), `gda2_trust_scale` (the factor the trust region put on the step, 1 inside it), \
             `kfac_kl_scale` (K-FAC's KL-clipping factor ν on every matrix's direction, 1 when unclipped), and on the steps \
             K-FAC recomputes its inverses `kfac_damping_a` / `kfac_damping_g` (π√γ and √γ/π added to each Kronecker factor) \
             and `kfac_condition_a` / `kfac_condition_g` (λ_max/λ_min of each damped factor).",
        ),
        col("value", Kind::F64, "The value at this step."),
    ],
};

pub const SPECTRA: Table = Table {
    name: "spectra",
    doc: "Singular spectra of every weight matrix and of what moved it, every `probe_every` steps and at each task boundary.",
    columns: &[
        RUN,
        STEP,
        TASK,
        PARAM,
        col(
            "tensor",
            Kind::Str,
            "Which matrix: `weight`; `gradient` (of the last batch); `update` (applied Δθ of the last step); \
             `muon_pre_orthogonalization` / `muon_post_orthogonalization` (Muon's direction before / after Newton-Schulz); \
             `shampoo_preconditioned` (L^-1/4·M·R^-1/4 before grafting); \
             `kfac_preconditioned` (K-FAC's G⁻¹·∇W·A⁻¹ with the damped factors, before KL-clipping and momentum); \
             `soap_direction` (Q_L·N·Q_Rᵀ, N Adam's direction in SOAP's eigenbasis; before learning rate and weight decay).",
        ),
        col("rows", Kind::I64, "Rows of the matrix (output features)."),
        col("cols", Kind::I64, "Columns of the matrix (input features)."),
        col("singular_values", Kind::ListF32, "All singular values σ, descending."),
        col("effective_rank", Kind::F64, "exp(H(p)) with p = σ/Σσ (Roy & Vetterli 2007); 0 for a zero matrix."),
        col("stable_rank", Kind::F64, "‖W‖_F² / ‖W‖₂²; 0 for a zero matrix."),
        col("spectral_norm", Kind::F64, "‖W‖₂ = σ_max."),
        col("frobenius_norm", Kind::F64, "‖W‖_F = sqrt(Σσ²)."),
    ],
};

pub const ACCURACY: Table = Table {
    name: "accuracy",
    doc: "The accuracy matrix R[i][j] in long form: test accuracy on task j after training task i, plus all-class rows.",
    columns: &[
        RUN,
        col("after_task", Kind::I64, "i: the last task trained."),
        opt("eval_task", Kind::I64, "j: the task whose test set was evaluated; null for the union of every task's test set (all classes)."),
        col(
            "split",
            Kind::Str,
            "`test`, or `validation`: the examples of each task's training set held out by `validation_fraction` (never trained on; \
             what a sweep selects hyperparameters on).",
        ),
        STEP,
        col("accuracy", Kind::F64, "Fraction of that test set classified correctly (arg-max over all 10 classes)."),
        col("examples", Kind::I64, "Size of that test set."),
    ],
};

pub const ACTIVATIONS: Table = Table {
    name: "activations",
    doc: "Representations on the union of every task's test set after each task (and each epoch, with `representations_every_epoch`), per hidden layer.",
    columns: &[
        RUN,
        col("after_task", Kind::I64, "The task being trained (its last epoch: the task is done)."),
        opt("step", Kind::I64, "Optimizer steps taken so far in this run; null in folders written before the column existed."),
        col("layer", Kind::I64, "Probed layer, in order (1 = first)."),
        col(
            "name",
            Kind::Str,
            "`fc1`, `fc2`, … (MLP hidden layers after the activation); `blocks.i.mlp.gelu` or `blocks.i.mlp.swiglu` (a ViT block's GELU outputs or SwiGLU products, every token); `cls` (the ViT's class token after the final LayerNorm).",
        ),
        col("width", Kind::I64, "Units in the layer."),
        col("zero_fraction", Kind::F64, "Fraction of (row, unit) activations exactly 0 (ReLU sparsity)."),
        col("near_zero_fraction", Kind::F64, "Fraction of activations with |a| < 0.01 (sparsity of GELU, which is never exactly 0)."),
        col("dead_unit_fraction", Kind::F64, "Fraction of units that are 0 on every test example."),
        col(
            "class_cosine",
            Kind::ListF64,
            "10×10 row-major cosine similarity of the class-mean activation vectors (NaN for a class with no examples); token rows count for their example's class.",
        ),
        opt(
            "covariance",
            Kind::ListF64,
            "width×width row-major sample covariance of the rows (per-example layers only: MLP layers, `cls`); null for token-level layers.",
        ),
        opt(
            "effective_rank",
            Kind::F64,
            "Effective rank (Roy & Vetterli 2007) of the centered rows: of the square roots of `covariance`'s eigenvalues (the rows' singular values up to a common factor); null where `covariance` is.",
        ),
    ],
};

pub const VALIDATION: Table = Table {
    name: "validation",
    doc: "Language-model studies (`exp gpt`): loss on held-out text every `eval_every` steps.",
    columns: &[
        RUN,
        STEP,
        col("loss", Kind::F64, "Mean next-token cross-entropy (nats) over `eval_batches` fixed held-out batches."),
        col(
            "bits_per_byte",
            Kind::F64,
            "Held-out loss in bits per byte of text, loss × (held-out tokens ÷ held-out bytes) / ln 2, so byte and BPE runs compare (loss / ln 2 for bytes).",
        ),
        opt(
            "test_loss",
            Kind::F64,
            "The same on fixed batches of the test split (`test_fraction`, the text's last part); null without one.",
        ),
        opt("test_bits_per_byte", Kind::F64, "`test_loss` in bits per byte of the test split's text; null without one."),
    ],
};

pub const COUNTERS: Table = Table {
    name: "counters",
    doc: "Running counts of numerical events at each checkpoint (task boundary, or evaluation for language models): optimizer diagnostics and backend fallbacks.",
    columns: &[
        RUN,
        STEP,
        TASK,
        col(
            "name",
            Kind::Str,
            "`shampoo_root_failures` (roots whose eigendecomposition failed; the previous root was kept), `shampoo_roots_computed`, \
             `soap_basis_failures` (eigenbases whose decomposition failed; the previous basis was kept), `soap_bases_computed`, \
             `cuda_inverse_root_cpu_fallbacks` (GPU roots that did not converge in f32 and were computed by the CPU in f64), \
             `muon_ns_early_stops` (with `ns_tol`: matrices whose Newton-Schulz stopped before `ns_steps`), \
             `kfac_failed_inversions` (K-FAC factors that could not be inverted; the previous inverses were kept).",
        ),
        col("value", Kind::F64, "The count so far in this run, carried across resumed sessions."),
    ],
};

pub const RUNS: Table = Table {
    name: "runs",
    doc: "One row per finished, diverged or failed run: the study's summary numbers.",
    columns: &[
        RUN,
        OPTIMIZER,
        col("kind", Kind::Str, "The optimizer behind the label (`amsgrad` is `adam` with amsgrad = true)."),
        SEED,
        col(
            "status",
            Kind::Str,
            "`completed`; `diverged` (a NaN/Inf loss, gradient or parameter: final); `failed` (an error or a crash inside the run, \
             e.g. a probe, the device or memory: `--resume` retries it from its last checkpoint).",
        ),
        opt("diverged_step", Kind::I64, "First step whose loss, gradient or parameters were NaN/Inf; null if none."),
        opt("failed_step", Kind::I64, "Step being taken (or last step taken) when the run failed; null unless failed."),
        opt("error", Kind::Str, "What failed: the operation and its message; null unless failed."),
        col("steps", Kind::I64, "Optimizer steps taken."),
        opt("final_all_accuracy", Kind::F64, "Accuracy on the union of every task's test set after the last task (null unless completed)."),
        opt("average_accuracy", Kind::F64, "Mean of the last row of R (Chaudhry et al. 2018)."),
        opt("backward_transfer", Kind::F64, "BWT = mean over j < T−1 of R[T−1][j] − R[j][j] (Lopez-Paz & Ranzato 2017)."),
        opt("forgetting", Kind::F64, "Mean over j < T−1 of max_{l<T−1} R[l][j] − R[T−1][j] (Chaudhry et al. 2018)."),
        opt(
            "final_validation_accuracy",
            Kind::F64,
            "Like final_all_accuracy, on the examples held out by `validation_fraction` (null without one, or unless completed).",
        ),
        opt(
            "final_validation_loss",
            Kind::F64,
            "Language-model studies: held-out loss (nats) at the last evaluation (null unless completed).",
        ),
        opt(
            "final_test_loss",
            Kind::F64,
            "Language-model studies with a test split (`test_fraction`): its loss (nats) at the last evaluation (null otherwise).",
        ),
        col("seconds", Kind::F64, "Wall time spent training the run, summed over every session that worked on it."),
        col(
            "session",
            Kind::Str,
            "The session that wrote this row: its `provenance/<session>.toml` holds the code, machine, data hashes and command line.",
        ),
        col("git_commit", Kind::Str, "optlab's git commit in that session (`-dirty`: tracked files differed from it)."),
    ],
};

pub const ALL: [&Table; 9] = [&STEPS, &PARAM_STEPS, &OPTIMIZER_STEPS, &SPECTRA, &ACCURACY, &ACTIVATIONS, &VALIDATION, &COUNTERS, &RUNS];

/// The schema as Markdown (README, `exp schema`).
pub fn markdown() -> String {
    let mut out = String::new();
    for t in ALL {
        out += &format!("### `{}/`\n{}\n\n| column | type | meaning |\n|---|---|---|\n", t.name, t.doc);
        for c in t.columns {
            let null = if c.nullable { ", nullable" } else { "" };
            out += &format!("| `{}` | {}{} | {} |\n", c.name, c.kind.as_str(), null, c.doc);
        }
        out += "\n";
    }
    out
}
