//! The pre-norm transformer body shared by ViT and GPT: `depth` blocks of
//! `x + Attn(LN(x))` then `x + MLP(LN(x))` (GELU or SwiGLU, `mlp_ratio`× wide),
//! and a final LayerNorm. Forward keeps what backward needs per block; backward returns the
//! gradient of the body's input and accumulates every parameter gradient.

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Normal};

use super::{Blocks, ParamStore, Role};
use crate::backend::{Activation, Attention, Backend};
use crate::nn::{LayerNorm, LayerNormCache, Linear};

/// The feed-forward half of a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedForward {
    /// `fc2(GELU(fc(x)))`: GPT-2 and ViT.
    #[default]
    Gelu,
    /// `fc2(SiLU(fc(x)) ⊙ up(x))` (Shazeer 2020; LLaMA's w2(SiLU(w1 x) ⊙ w3 x),
    /// with fc = w1, up = w3, fc2 = w2), all `mlp_ratio`× wide as in the seeds'
    /// gradient-rank GPT; `up` starts like `fc`.
    Swiglu,
}

impl FeedForward {
    /// What the hidden activations are called in the records (`blocks.i.mlp.<this>`).
    pub fn output_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::Swiglu => "swiglu",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub feed_forward: FeedForward,
    /// Standard deviation of the normal initialisation of every weight matrix
    /// and embedding (biases start at 0, LayerNorm at γ = 1, β = 0); the
    /// residual projections (`attn.proj`, `mlp.fc2`) get `init_std/sqrt(2·depth)`.
    /// GPT-2's scheme (Radford et al. 2019; nanoGPT), 0.02 as there and as ViT's
    /// N(0, 0.02) (Dosovitskiy et al. 2021; timm).
    pub init_std: f32,
}

impl Default for TransformerConfig {
    /// The small GPT of the gradient-rank study: 4 layers, width 256, 4 heads.
    fn default() -> Self {
        Self { dim: 256, depth: 4, heads: 4, mlp_ratio: 4, feed_forward: FeedForward::Gelu, init_std: 0.02 }
    }
}

impl TransformerConfig {
    /// Positive sizes, heads that divide the width, a finite positive `init_std`;
    /// `key` names the config table in errors.
    pub fn validate(&self, key: &str) -> anyhow::Result<()> {
        for (name, v) in [("dim", self.dim), ("depth", self.depth), ("heads", self.heads), ("mlp_ratio", self.mlp_ratio)] {
            anyhow::ensure!(v > 0, "{key}.{name} must be positive, got {v}");
        }
        anyhow::ensure!(self.dim.is_multiple_of(self.heads), "{key}.dim {} must be a multiple of {key}.heads {}", self.dim, self.heads);
        anyhow::ensure!(
            self.init_std.is_finite() && self.init_std > 0.0,
            "{key}.init_std must be a finite number > 0, got {}",
            self.init_std
        );
        Ok(())
    }

    /// Parameters of the body (blocks and final LayerNorm), saturating.
    pub fn parameter_count(&self) -> usize {
        let (d, h) = (self.dim, self.dim.saturating_mul(self.mlp_ratio));
        let up = match self.feed_forward {
            FeedForward::Gelu => 0,
            FeedForward::Swiglu => d.saturating_mul(h).saturating_add(h),
        };
        let block = d
            .saturating_mul(3 * d + 3)
            .saturating_add(d.saturating_mul(d + 1))
            .saturating_add(d.saturating_mul(h))
            .saturating_add(h)
            .saturating_add(h.saturating_mul(d))
            .saturating_add(d)
            .saturating_add(4 * d)
            .saturating_add(up);
        block.saturating_mul(self.depth).saturating_add(2 * d)
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Uniform in ±bound (PyTorch's `nn.Linear`: bound = 1/sqrt(fan_in)).
    Uniform(f32),
    /// N(0, std²).
    Normal(f32),
    Constant(f32),
}

/// A model's parameter declarations: the store layout plus each one's init.
#[derive(Default)]
pub struct Layout {
    pub params: Vec<(String, usize, usize, Role)>,
    pub inits: Vec<Init>,
    /// Head blocks of attention projections, by parameter index.
    pub blocks: Vec<(usize, Blocks)>,
}

impl Layout {
    /// Declares a parameter; returns its store index.
    pub fn push(&mut self, name: String, rows: usize, cols: usize, role: Role, init: Init) -> usize {
        self.params.push((name, rows, cols, role));
        self.inits.push(init);
        self.params.len() - 1
    }

    /// A `fan_in → fan_out` linear layer: weights N(0, std²), biases 0.
    pub fn linear(&mut self, name: &str, fan_in: usize, fan_out: usize, role: Role, std: f32) -> Linear {
        let weight = self.push(format!("{name}.weight"), fan_out, fan_in, role, Init::Normal(std));
        let bias = self.push(format!("{name}.bias"), 1, fan_out, Role::Vector, Init::Constant(0.0));
        Linear { weight, bias, in_dim: fan_in, out_dim: fan_out }
    }

    pub fn layernorm(&mut self, name: &str, dim: usize) -> LayerNorm {
        let gamma = self.push(format!("{name}.weight"), 1, dim, Role::Vector, Init::Constant(1.0));
        let beta = self.push(format!("{name}.bias"), 1, dim, Role::Vector, Init::Constant(0.0));
        LayerNorm { gamma, beta, dim }
    }

    pub fn init(&self, rng: &mut impl Rng) -> Vec<f32> {
        let mut values = Vec::new();
        for ((_, rows, cols, _), init) in self.params.iter().zip(&self.inits) {
            match *init {
                Init::Uniform(b) => values.extend((0..rows * cols).map(|_| rng.random_range(-b..b))),
                Init::Normal(std) => {
                    let normal = Normal::new(0.0, std).expect("a validated, finite positive std");
                    values.extend((0..rows * cols).map(|_| normal.sample(rng)));
                }
                Init::Constant(c) => values.extend(std::iter::repeat_n(c, rows * cols)),
            }
        }
        values
    }
}

/// Store indices of one block's layers.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc: Linear,
    /// SwiGLU's up projection (w3).
    up: Option<Linear>,
    fc2: Linear,
}

/// One block's activations for a batch (rows = batch·seq).
struct BlockCache<B: Backend> {
    x: B::Buf,
    ln1: B::Buf,
    ln1_stats: LayerNormCache<B>,
    qkv: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    mid: B::Buf,
    ln2: B::Buf,
    ln2_stats: LayerNormCache<B>,
    fc: B::Buf,
    /// SwiGLU's up projection (empty for GELU).
    up: B::Buf,
    act: B::Buf,
}

/// Gradient scratch shared by all blocks (one block is differentiated at a time).
struct Scratch<B: Backend> {
    d_act: B::Buf,
    d_fc: B::Buf,
    d_up: B::Buf,
    d_ln2: B::Buf,
    d_mid: B::Buf,
    d_att: B::Buf,
    d_qkv: B::Buf,
    d_ln1: B::Buf,
    /// Gradients flowing between blocks, used in turn.
    d_x: [B::Buf; 2],
    d_out: B::Buf,
}

struct Workspace<B: Backend> {
    shape: Attention,
    blocks: Vec<BlockCache<B>>,
    out: B::Buf,
    normed: B::Buf,
    final_stats: LayerNormCache<B>,
    scratch: Scratch<B>,
}

impl<B: Backend> Workspace<B> {
    fn new(backend: &B, c: &TransformerConfig, shape: Attention) -> Self {
        let rows = shape.batch * shape.seq;
        let (d, h) = (c.dim, c.dim * c.mlp_ratio);
        let z = |n: usize| backend.zeros(rows * n);
        let up = if c.feed_forward == FeedForward::Swiglu { h } else { 0 };
        let block = || BlockCache {
            x: z(d),
            ln1: z(d),
            ln1_stats: LayerNormCache::new(backend, rows),
            qkv: z(3 * d),
            att: z(d),
            lse: backend.zeros(shape.batch * shape.heads * shape.seq),
            mid: z(d),
            ln2: z(d),
            ln2_stats: LayerNormCache::new(backend, rows),
            fc: z(h),
            up: z(up),
            act: z(h),
        };
        let scratch = Scratch {
            d_act: z(h),
            d_fc: z(h),
            d_up: z(up),
            d_ln2: z(d),
            d_mid: z(d),
            d_att: z(d),
            d_qkv: z(3 * d),
            d_ln1: z(d),
            d_x: [z(d), z(d)],
            d_out: z(d),
        };
        Self {
            shape,
            blocks: (0..c.depth).map(|_| block()).collect(),
            out: z(d),
            normed: z(d),
            final_stats: LayerNormCache::new(backend, rows),
            scratch,
        }
    }
}

/// The blocks and final LayerNorm of a model, with their activations.
pub struct Body<B: Backend> {
    pub config: TransformerConfig,
    pub causal: bool,
    blocks: Vec<Block>,
    final_ln: LayerNorm,
    work: Option<Workspace<B>>,
}

impl<B: Backend> Body<B> {
    /// Declares the body's parameters (`blocks.{i}.…`, `ln_f`) in `layout`.
    pub fn declare(config: TransformerConfig, causal: bool, layout: &mut Layout) -> Self {
        assert!(config.dim.is_multiple_of(config.heads), "dim {} is not a multiple of heads {}", config.dim, config.heads);
        let (d, h) = (config.dim, config.dim * config.mlp_ratio);
        let (std, residual) = (config.init_std, config.init_std / ((2 * config.depth) as f32).sqrt());
        let blocks = (0..config.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                // Declared in this order: it fixes the store layout and the init stream.
                let ln1 = layout.layernorm(&format!("{p}.ln1"), d);
                let qkv = layout.linear(&format!("{p}.attn.qkv"), d, 3 * d, Role::HiddenMatrix, std);
                let proj = layout.linear(&format!("{p}.attn.proj"), d, d, Role::HiddenMatrix, residual);
                // Q, K and V of a head are row blocks of qkv; its share of proj, a column block.
                let head_dim = d / config.heads;
                layout.blocks.extend([(qkv.weight, Blocks::Rows(head_dim)), (proj.weight, Blocks::Cols(head_dim))]);
                let ln2 = layout.layernorm(&format!("{p}.ln2"), d);
                let fc = layout.linear(&format!("{p}.mlp.fc"), d, h, Role::HiddenMatrix, std);
                let up = (config.feed_forward == FeedForward::Swiglu)
                    .then(|| layout.linear(&format!("{p}.mlp.up"), d, h, Role::HiddenMatrix, std));
                Block { ln1, qkv, proj, ln2, fc, up, fc2: layout.linear(&format!("{p}.mlp.fc2"), h, d, Role::HiddenMatrix, residual) }
            })
            .collect();
        let final_ln = layout.layernorm("ln_f", d);
        Self { config, causal, blocks, final_ln, work: None }
    }

    /// The body's input buffer for a batch of `batch` sequences of `seq` tokens
    /// (rows = batch·seq, `dim` wide): the model writes its embeddings here.
    pub fn input(&mut self, backend: &B, batch: usize, seq: usize) -> &mut B::Buf {
        let shape = Attention { batch, seq, heads: self.config.heads, head_dim: self.config.dim / self.config.heads, causal: self.causal };
        if self.work.as_ref().is_none_or(|w| w.shape != shape) {
            self.work = Some(Workspace::new(backend, &self.config, shape));
        }
        let work = self.work.as_mut().expect("workspace made above");
        match work.blocks.first_mut() {
            Some(first) => &mut first.x,
            None => &mut work.out,
        }
    }

    /// Runs every block on the input written through [`Body::input`]; returns
    /// the final LayerNorm's output.
    pub fn forward(&mut self, backend: &B, store: &ParamStore<B>) -> &B::Buf {
        let work = self.work.as_mut().expect("Body::input before Body::forward");
        let (shape, rows) = (work.shape, work.shape.batch * work.shape.seq);
        for i in 0..self.blocks.len() {
            let (block, (done, rest)) = (self.blocks[i], work.blocks.split_at_mut(i + 1));
            let c = &mut done[i];
            let next = match rest.first_mut() {
                Some(n) => &mut n.x,
                None => &mut work.out,
            };
            block.ln1.forward(backend, store, &mut c.ln1, &mut c.ln1_stats, &c.x);
            block.qkv.forward(backend, store, &mut c.qkv, &c.ln1, rows);
            backend.attention_forward(B::all_mut(&mut c.att), B::all_mut(&mut c.lse), B::all(&c.qkv), shape);
            block.proj.forward(backend, store, &mut c.mid, &c.att, rows);
            backend.axpby(B::all_mut(&mut c.mid), 1.0, B::all(&c.x), 1.0);
            block.ln2.forward(backend, store, &mut c.ln2, &mut c.ln2_stats, &c.mid);
            block.fc.forward(backend, store, &mut c.fc, &c.ln2, rows);
            match block.up {
                None => backend.activation_forward(Activation::Gelu, B::all_mut(&mut c.act), B::all(&c.fc)),
                Some(up) => {
                    up.forward(backend, store, &mut c.up, &c.ln2, rows);
                    backend.glu_forward(Activation::Silu, B::all_mut(&mut c.act), B::all(&c.fc), B::all(&c.up));
                }
            }
            block.fc2.forward(backend, store, next, &c.act, rows);
            backend.axpby(B::all_mut(next), 1.0, B::all(&c.mid), 1.0);
        }
        self.final_ln.forward(backend, store, &mut work.normed, &mut work.final_stats, &work.out);
        &work.normed
    }

    /// The buffer the model writes ∂loss/∂(final output) into before [`Body::backward`].
    pub fn output_gradient(&mut self) -> &mut B::Buf {
        &mut self.work.as_mut().expect("forward before backward").scratch.d_out
    }

    /// Backpropagates the gradient written through [`Body::output_gradient`];
    /// returns ∂loss/∂input.
    pub fn backward(&mut self, backend: &B, store: &mut ParamStore<B>) -> &B::Buf {
        let work = self.work.as_mut().expect("forward before backward");
        let (shape, rows) = (work.shape, work.shape.batch * work.shape.seq);
        let s = &mut work.scratch;
        let [d_a, d_b] = &mut s.d_x;
        self.final_ln.backward(backend, store, d_a, &s.d_out, &work.out, &work.final_stats);
        let (mut d_out, mut d_in) = (d_a, d_b);
        for (block, c) in self.blocks.iter().zip(&work.blocks).rev() {
            // MLP branch, then its residual.
            block.fc2.backward(backend, store, Some(&mut s.d_act), d_out, &c.act, rows);
            match block.up {
                None => {
                    backend.activation_backward(Activation::Gelu, B::all_mut(&mut s.d_fc), B::all(&s.d_act), B::all(&c.fc));
                    block.fc.backward(backend, store, Some(&mut s.d_ln2), &s.d_fc, &c.ln2, rows);
                }
                Some(up) => {
                    let (dgate, dup) = (B::all_mut(&mut s.d_fc), B::all_mut(&mut s.d_up));
                    backend.glu_backward(Activation::Silu, dgate, dup, B::all(&s.d_act), B::all(&c.fc), B::all(&c.up));
                    block.fc.backward(backend, store, Some(&mut s.d_ln2), &s.d_fc, &c.ln2, rows);
                    // d_mid is free until ln2's backward writes it: it holds up's share of ∂LN2.
                    up.backward(backend, store, Some(&mut s.d_mid), &s.d_up, &c.ln2, rows);
                    backend.axpby(B::all_mut(&mut s.d_ln2), 1.0, B::all(&s.d_mid), 1.0);
                }
            }
            block.ln2.backward(backend, store, &mut s.d_mid, &s.d_ln2, &c.mid, &c.ln2_stats);
            backend.axpby(B::all_mut(&mut s.d_mid), 1.0, B::all(d_out), 1.0);
            // Attention branch, then its residual.
            block.proj.backward(backend, store, Some(&mut s.d_att), &s.d_mid, &c.att, rows);
            backend.attention_backward(B::all_mut(&mut s.d_qkv), B::all(&s.d_att), B::all(&c.qkv), B::all(&c.att), B::all(&c.lse), shape);
            block.qkv.backward(backend, store, Some(&mut s.d_ln1), &s.d_qkv, &c.ln1, rows);
            block.ln1.backward(backend, store, d_in, &s.d_ln1, &c.x, &c.ln1_stats);
            backend.axpby(B::all_mut(d_in), 1.0, B::all(&s.d_mid), 1.0);
            std::mem::swap(&mut d_out, &mut d_in);
        }
        d_out
    }

    /// Each block's hidden MLP activations from the last forward (rows × hidden):
    /// GELU's outputs, or SwiGLU's gated product (fc2's input).
    pub fn mlp_activations(&self, backend: &B) -> anyhow::Result<Vec<Vec<f32>>> {
        self.work.as_ref().map_or_else(|| Ok(Vec::new()), |w| w.blocks.iter().map(|c| backend.download(B::all(&c.act))).collect())
    }
}
