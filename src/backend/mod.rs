//! The op set that models and optimizers are written against.
//!
//! Models and optimizers are written once over [`Backend`]; the CPU backend is the
//! readable reference (and the oracle of every kernel test), a CUDA backend fills
//! the same trait with kernels. Ops take *views* (sub-ranges of device buffers) so
//! that one parameter store can hold every tensor of a model in one allocation.

// Kernel-shaped ops take many scalars (shapes, hyperparameters) by design.
#![allow(clippy::too_many_arguments)]

pub mod cpu;
pub mod cuda;
pub mod kernels;

use std::ops::Range;

pub use cpu::Cpu;

/// Matrix multiply shape: `C (m×n) = op(A) (m×k) · op(B) (k×n)`, all row-major;
/// `trans_a` means A is stored k×m.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Operand precision of a GEMM; the accumulation, C, the weights and the
/// optimizer state stay f32 (mixed-precision training as Micikevicius et al.
/// 2018 define it). The CPU computes in f32 only: it is the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 arithmetic throughout: the CPU's precision.
    #[default]
    F32,
    /// f32 operands rounded to TF32 (10-bit mantissa) by the tensor cores.
    Tf32,
    /// bf16 operands (8-bit mantissa), converted from f32 before each product.
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "tf32" => Ok(Self::Tf32),
            "bf16" => Ok(Self::Bf16),
            _ => anyhow::bail!("unknown precision {s:?}: f32, tf32 or bf16"),
        }
    }
}

/// Shape of a multi-head attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Position i attends to positions ≤ i only (GPT); otherwise to all (ViT).
    pub causal: bool,
}

impl Attention {
    /// Columns of one row of the packed `qkv` input.
    pub fn qkv_width(&self) -> usize {
        3 * self.heads * self.head_dim
    }
    /// Columns of one row of the output.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Scores are `q·k` times this: `1/sqrt(head_dim)`.
    pub fn score_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    /// Panics unless `qkv`, `out` and `lse` have this shape's lengths (a caller bug).
    pub fn assert_lengths(&self, qkv: usize, out: usize, lse: usize) {
        let rows = self.batch * self.seq;
        assert!(
            qkv == rows * self.qkv_width() && out == rows * self.width() && lse == self.batch * self.heads * self.seq,
            "attention shapes do not match {self:?}"
        );
    }
}

/// Elementwise nonlinearities of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    Tanh,
    /// GELU, tanh approximation (as GPT-2 and `nn.GELU(approximate="tanh")`).
    Gelu,
    /// SiLU, x·σ(x): the gate of SwiGLU.
    Silu,
}

impl Activation {
    pub const ALL: [Self; 4] = [Self::Relu, Self::Tanh, Self::Gelu, Self::Silu];
}

impl std::str::FromStr for Activation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "relu" => Ok(Self::Relu),
            "tanh" => Ok(Self::Tanh),
            "gelu" => Ok(Self::Gelu),
            "silu" => Ok(Self::Silu),
            _ => anyhow::bail!("unknown activation {s:?} (known: relu, tanh, gelu, silu)"),
        }
    }
}

/// Result of the fused softmax + cross-entropy op.
#[derive(Clone, Copy, Debug)]
pub struct LossOut {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Rows whose arg-max equals the label.
    pub correct: usize,
}

/// AdamW hyperparameters for one step; `step` is 1-based (bias correction).
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
}

/// One step of a per-coordinate optimizer of `torch.optim`, with its
/// hyperparameters, over up to three state buffers `s0, s1, s2` (PyTorch's
/// names in each variant). Weight decay is PyTorch's: coupled L2 (`g + wd·p`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiagonalRule {
    /// `s0 += g²; p −= lr·g/(√s0 + eps)` (`lr` already decayed by `lr_decay`); s0 = `sum`.
    Adagrad { lr: f32, eps: f32, weight_decay: f32 },
    /// `s0 = α·s0 + (1−α)·g²`; centered: `s2 = α·s2 + (1−α)·g`, `d = √(s0 − s2²) + eps`,
    /// else `d = √s0 + eps`; momentum: `s1 = μ·s1 + g/d`, `p −= lr·s1`, else `p −= lr·g/d`.
    /// s0 = `square_avg`, s1 = `momentum_buffer`, s2 = `grad_avg`.
    RmsProp { lr: f32, alpha: f32, eps: f32, weight_decay: f32, momentum: f32, centered: bool },
    /// `s0 = ρ·s0 + (1−ρ)·g²`, `Δ = √(s1 + eps)/√(s0 + eps)·g`, `s1 = ρ·s1 + (1−ρ)·Δ²`,
    /// `p −= lr·Δ`. s0 = `square_avg`, s1 = `acc_delta`.
    Adadelta { lr: f32, rho: f32, eps: f32, weight_decay: f32 },
    /// Adam with coupled L2: `s0 = β1·s0 + (1−β1)·g`, `s1 = β2·s1 + (1−β2)·g²`,
    /// AMSGrad: `s2 = max(s2, s1)` in place of s1; `p −= lr·(s0/bias1)/(√(v/bias2) + eps)`
    /// with `bias_i = 1 − β_iᵗ`. s0 = `exp_avg`, s1 = `exp_avg_sq`, s2 = `max_exp_avg_sq`.
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, amsgrad: bool, bias1: f32, bias2: f32 },
}

/// The op set. `View`/`ViewMut` are borrowed sub-ranges of `Buf`.
///
/// Failures are values, in the way a GPU reports them: an op that only queues
/// work returns nothing (a device reports a kernel's failure later, at a
/// synchronization), and every op that brings a value to the host (a download,
/// a reduction, a loss, a root) returns a `Result` that carries the first
/// failure of the work queued before it, naming the op and its shapes. So no
/// number computed after a failure reaches the host. Shape mismatches between
/// views are caller bugs and stay assertions.
pub trait Backend: Send + Sync + 'static {
    type Buf: Send;
    type View<'a>: Copy
    where
        Self: 'a;
    type ViewMut<'a>
    where
        Self: 'a;

    fn name(&self) -> &'static str;

    /// What exactly runs the ops (device model, driver, instruction set), for provenance.
    fn describe(&self) -> String;

    /// Running counts worth recording (e.g. CUDA roots that fell back to the CPU).
    fn counters(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    // ---- memory ----
    fn zeros(&self, len: usize) -> Self::Buf;
    fn upload(&self, host: &[f32]) -> Self::Buf;
    fn download(&self, view: Self::View<'_>) -> anyhow::Result<Vec<f32>>;
    fn len(buf: &Self::Buf) -> usize;
    fn view(buf: &Self::Buf, range: Range<usize>) -> Self::View<'_>;
    fn view_mut(buf: &mut Self::Buf, range: Range<usize>) -> Self::ViewMut<'_>;
    /// Two mutable views of disjoint ranges of one buffer (e.g. two gradients).
    fn view_mut_pair(buf: &mut Self::Buf, a: Range<usize>, b: Range<usize>) -> (Self::ViewMut<'_>, Self::ViewMut<'_>);
    fn all(buf: &Self::Buf) -> Self::View<'_> {
        Self::view(buf, 0..Self::len(buf))
    }
    fn all_mut(buf: &mut Self::Buf) -> Self::ViewMut<'_> {
        let n = Self::len(buf);
        Self::view_mut(buf, 0..n)
    }
    fn copy(&self, dst: Self::ViewMut<'_>, src: Self::View<'_>);
    fn fill(&self, dst: Self::ViewMut<'_>, value: f32);

    // ---- dense layers ----
    /// `C = alpha·op(A)·op(B) + beta·C`; with `beta == 0` the old C is never read.
    fn matmul(&self, c: Self::ViewMut<'_>, a: Self::View<'_>, b: Self::View<'_>, shape: Gemm, alpha: f32, beta: f32);
    /// `y[r, :] += bias` for each of the rows of a rows×bias.len() matrix.
    fn add_bias_rows(&self, y: Self::ViewMut<'_>, bias: Self::View<'_>);
    /// `out[c] += Σ_r x[r, c]` (bias gradients).
    fn accumulate_column_sums(&self, out: Self::ViewMut<'_>, x: Self::View<'_>);
    fn activation_forward(&self, kind: Activation, y: Self::ViewMut<'_>, x: Self::View<'_>);
    /// `dx = dy · act'(x)` given the pre-activation `x`.
    fn activation_backward(&self, kind: Activation, dx: Self::ViewMut<'_>, dy: Self::View<'_>, x: Self::View<'_>);
    /// Gated linear unit `out = act(gate) ⊙ up` (Shazeer 2020, "GLU Variants
    /// Improve Transformer"; `Silu` makes it SwiGLU).
    fn glu_forward(&self, kind: Activation, out: Self::ViewMut<'_>, gate: Self::View<'_>, up: Self::View<'_>);
    /// `dgate = dout ⊙ up ⊙ act'(gate)`, `dup = dout ⊙ act(gate)`.
    fn glu_backward(
        &self,
        kind: Activation,
        dgate: Self::ViewMut<'_>,
        dup: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        gate: Self::View<'_>,
        up: Self::View<'_>,
    );
    /// Mean softmax cross-entropy of rows×classes logits; writes `dlogits`
    /// (the gradient of the mean loss) and counts arg-max hits. Labels are
    /// class bytes (digits) or token ids (a BPE vocabulary).
    fn softmax_cross_entropy(
        &self,
        dlogits: Self::ViewMut<'_>,
        logits: Self::View<'_>,
        labels: &[impl Into<u32> + Copy + Sync],
        classes: usize,
    ) -> anyhow::Result<LossOut>;

    // ---- transformer layers ----
    /// LayerNorm over rows of length `gamma.len()`: `y = (x − μ)·rstd·γ + β` with
    /// the biased variance (as PyTorch); saves each row's `mean` and `rstd`.
    fn layernorm_forward(
        &self,
        y: Self::ViewMut<'_>,
        mean: Self::ViewMut<'_>,
        rstd: Self::ViewMut<'_>,
        x: Self::View<'_>,
        gamma: Self::View<'_>,
        beta: Self::View<'_>,
        eps: f32,
    );
    /// Writes `dx`; accumulates `dgamma` and `dbeta`.
    fn layernorm_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dgamma: Self::ViewMut<'_>,
        dbeta: Self::ViewMut<'_>,
        dy: Self::View<'_>,
        x: Self::View<'_>,
        mean: Self::View<'_>,
        rstd: Self::View<'_>,
        gamma: Self::View<'_>,
    );
    /// Multi-head scaled dot-product attention. `qkv` is (batch·seq)×(3·heads·head_dim),
    /// columns `[q | k | v]` with head h at `h·head_dim` in each; `out` is
    /// (batch·seq)×(heads·head_dim). Saves the log-sum-exp of every score row
    /// (batch·heads·seq) for the backward pass, so no seq×seq matrix is kept.
    fn attention_forward(&self, out: Self::ViewMut<'_>, lse: Self::ViewMut<'_>, qkv: Self::View<'_>, shape: Attention);
    /// Writes `dqkv` (same layout as `qkv`) from `dout`.
    fn attention_backward(
        &self,
        dqkv: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        qkv: Self::View<'_>,
        out: Self::View<'_>,
        lse: Self::View<'_>,
        shape: Attention,
    );
    /// `out[i, :] = table[ids[i], :]` for a table of rows of length `dim`.
    fn embedding_forward(&self, out: Self::ViewMut<'_>, table: Self::View<'_>, ids: &[u32], dim: usize);
    /// `dtable[ids[i], :] += dout[i, :]` (repeated ids accumulate).
    fn embedding_backward(&self, dtable: Self::ViewMut<'_>, dout: Self::View<'_>, ids: &[u32], dim: usize);

    // ---- reductions ----
    /// Σ x², accumulated in f64.
    fn sum_squares(&self, x: Self::View<'_>) -> anyhow::Result<f64>;
    /// Σ (a − b)², accumulated in f64 (update norms without a temporary).
    fn sum_squared_difference(&self, a: Self::View<'_>, b: Self::View<'_>) -> anyhow::Result<f64>;
    /// Σ a·b, accumulated in f64 (least-squares systems of Anderson mixing).
    fn dot(&self, a: Self::View<'_>, b: Self::View<'_>) -> anyhow::Result<f64>;
    fn all_finite(&self, x: Self::View<'_>) -> anyhow::Result<bool>;

    // ---- optimizer steps (multi-tensor: one call per parameter group) ----
    /// `y = alpha·x + beta·y`.
    fn axpby(&self, y: Self::ViewMut<'_>, alpha: f32, x: Self::View<'_>, beta: f32);
    /// Scale `x` in place.
    fn scale(&self, x: Self::ViewMut<'_>, alpha: f32);
    /// Fused AdamW over the given ranges of a store-sized parameter buffer.
    fn adamw_step(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        ranges: &[Range<usize>],
        hp: AdamParams,
    );
    /// SGD as `torch.optim.SGD`: `g' = g + wd·p`, `buf = μ·buf + g'`, step along
    /// `g' + μ·buf` (Nesterov) or `buf`.
    fn sgd_step(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        momentum_buf: &mut Self::Buf,
        ranges: &[Range<usize>],
        lr: f32,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    );
    /// Lion (Chen et al. 2023): `p ← p(1−lr·wd) − lr·sign(β1·m + (1−β1)·g)`, then `m ← β2·m + (1−β2)·g`.
    fn lion_step(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        ranges: &[Range<usize>],
        lr: f32,
        beta1: f32,
        beta2: f32,
        weight_decay: f32,
    );
    /// One step of a per-coordinate `torch.optim` optimizer (see [`DiagonalRule`]);
    /// every state buffer is store-sized.
    fn diagonal_step(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        state: [&mut Self::Buf; 3],
        ranges: &[Range<usize>],
        rule: DiagonalRule,
    );
    /// Adam's direction `out = (m/bias1) / (sqrt(v/bias2) + eps)` (bias_i = 1−β_iᵗ),
    /// used for grafting.
    fn adam_direction(&self, out: Self::ViewMut<'_>, m: Self::View<'_>, v: Self::View<'_>, bias1: f32, bias2: f32, eps: f32);
    /// `v = β·v + (1−β)·g²`.
    fn ema_square(&self, v: Self::ViewMut<'_>, g: Self::View<'_>, beta: f32);

    // ---- matrix functions (optimizers) ----
    /// Muon's orthogonalization (see `linalg::newton_schulz`) of a batch of
    /// same-shape rows×cols matrices at `ranges` of `input`, written to the same
    /// ranges of `out` (nothing else of `out` is touched): one call per shape, so a
    /// GPU can batch them. The CUDA backend multiplies in bf16 with f32
    /// accumulation, as Muon implementations do, so it matches the CPU's f32 to
    /// ~1e-2 of max |X| after 5 steps, not to f32 round-off.
    fn newton_schulz_batched(
        &self,
        out: &mut Self::Buf,
        input: &Self::Buf,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: crate::linalg::NsCoefficients,
    );
    /// `(A + εI)^{-1/p}` of a symmetric PSD n×n matrix. `Ok(false)` when the
    /// statistic has none (non-finite entries, a failed decomposition): `out` is
    /// untouched, so the caller's previous root stays in use. `Err` is a backend failure.
    fn inverse_root(
        &self,
        out: Self::ViewMut<'_>,
        a: Self::View<'_>,
        n: usize,
        p: u32,
        eps: crate::linalg::Epsilon,
    ) -> anyhow::Result<bool>;
    /// [`Backend::inverse_root`] of several n×n statistics at once (Shampoo's
    /// same-size sides): `roots[i] ← (stats[i] + εI)^{-1/p}`, one result per pair.
    /// One at a time unless a backend batches them (CUDA: one coupled Newton
    /// iteration over the batch).
    fn inverse_roots<'a>(
        &self,
        roots: Vec<Self::ViewMut<'a>>,
        stats: Vec<Self::View<'a>>,
        n: usize,
        p: u32,
        eps: crate::linalg::Epsilon,
    ) -> anyhow::Result<Vec<bool>> {
        assert_eq!(roots.len(), stats.len(), "inverse_roots: one root per statistic");
        roots.into_iter().zip(stats).map(|(root, stat)| self.inverse_root(root, stat, n, p, eps)).collect()
    }
    /// Eigenvectors of the symmetric n×n `a` as the columns of `out`, by descending
    /// eigenvalue (see `linalg::sym_eigenvectors`): SOAP's rotation basis.
    /// `Ok(false)` leaves `out` untouched, as for [`Backend::inverse_root`].
    fn sym_eigenvectors(&self, out: Self::ViewMut<'_>, a: Self::View<'_>, n: usize) -> anyhow::Result<bool>;
    /// Scales the rows (or columns) of a rows×cols matrix `x` by `(d + eps)^{-1/p}`:
    /// Shampoo's diagonal fallback for a side too large to precondition fully.
    fn scale_by_diagonal_root(&self, x: Self::ViewMut<'_>, d: Self::View<'_>, rows: usize, cols: usize, over_rows: bool, p: u32, eps: f32);
    /// Row (or column) sums of squares of a rows×cols matrix, EMA'd into `out`:
    /// the diagonal of `G·Gᵀ` (or `Gᵀ·G`) without forming it.
    fn ema_square_sums(&self, out: Self::ViewMut<'_>, g: Self::View<'_>, rows: usize, cols: usize, over_rows: bool, beta: f32, weight: f32);
}
