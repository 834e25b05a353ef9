//! A GPT-style language model: token and learned position embeddings, the
//! causal pre-norm transformer body, and a linear head predicting the next
//! token at every position, its weight untied or the token table itself.

use super::transformer::{Body, Init, Layout, TransformerConfig};
use super::{ParamStore, Role};
use crate::backend::{Backend, LossOut};
use crate::nn::Linear;
use crate::random::{self, Stream};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Token ids are `0..vocab` (256 for bytes, 50,257 for GPT-2's BPE).
    pub vocab: usize,
    /// Longest context (rows of the position table).
    pub seq: usize,
    pub body: TransformerConfig,
    /// The head's weight is the token embedding table (GPT-2, Radford et al.
    /// 2019; Press & Wolf 2017), which then takes gradients from both ends;
    /// the head keeps its own bias.
    pub tie_embeddings: bool,
}

impl GptConfig {
    /// Parameters of the whole model (embeddings, body, head), saturating.
    pub fn parameter_count(&self) -> usize {
        let d = self.body.dim;
        let embeddings = (self.vocab.saturating_add(self.seq)).saturating_mul(d);
        let head_weight = if self.tie_embeddings { 0 } else { d.saturating_mul(self.vocab) };
        embeddings.saturating_add(self.body.parameter_count()).saturating_add(head_weight.saturating_add(self.vocab))
    }
}

pub struct Gpt<B: Backend> {
    pub config: GptConfig,
    pub store: ParamStore<B>,
    tokens: usize,
    positions: usize,
    head: Linear,
    body: Body<B>,
    work: Option<Work<B>>,
}

struct Work<B: Backend> {
    shape: (usize, usize),
    ids: Vec<u32>,
    normed: B::Buf,
    logits: B::Buf,
    d_logits: B::Buf,
}

impl<B: Backend> Gpt<B> {
    pub fn new(backend: &B, config: GptConfig, seed: u64) -> Self {
        Self::build(backend, config, |layout| layout.init(&mut random::rng(seed, Stream::Init, 0)))
    }

    /// A model with the given parameter values (checkpoints, tests).
    pub fn from_values(backend: &B, config: GptConfig, values: &[f32]) -> Self {
        Self::build(backend, config, |_| values.to_vec())
    }

    fn build(backend: &B, config: GptConfig, values: impl FnOnce(&Layout) -> Vec<f32>) -> Self {
        let d = config.body.dim;
        let mut layout = Layout::default();
        let std = config.body.init_std;
        let tokens = layout.push("tok_embed".into(), config.vocab, d, Role::Embedding, Init::Normal(std));
        let positions = layout.push("pos_embed".into(), config.seq, d, Role::Embedding, Init::Normal(std));
        let body = Body::declare(config.body, true, &mut layout);
        let head = if config.tie_embeddings {
            // The table is vocab×dim: the head's out×in layout already.
            let bias = layout.push("head.bias".into(), 1, config.vocab, Role::Vector, Init::Constant(0.0));
            Linear { weight: tokens, bias, in_dim: d, out_dim: config.vocab }
        } else {
            layout.linear("head", d, config.vocab, Role::OutputHead, std)
        };
        let store = ParamStore::new(backend, &layout.params, &values(&layout)).with_blocks(&layout.blocks);
        Self { config, store, tokens, positions, head, body, work: None }
    }

    /// Next-token logits ((batch·seq)×vocab) for `batch` sequences of `seq` ids.
    pub fn forward(&mut self, backend: &B, ids: &[u32], batch: usize) -> &B::Buf {
        let (d, vocab) = (self.config.body.dim, self.config.vocab);
        let seq = ids.len() / batch;
        assert!(seq * batch == ids.len() && seq <= self.config.seq, "ids must be batch×seq with seq ≤ {}", self.config.seq);
        if self.work.as_ref().is_none_or(|w| w.shape != (batch, seq)) {
            let rows = batch * seq;
            self.work = Some(Work {
                shape: (batch, seq),
                ids: Vec::new(),
                normed: backend.zeros(rows * d),
                logits: backend.zeros(rows * vocab),
                d_logits: backend.zeros(rows * vocab),
            });
        }
        let Self { store, tokens, positions, head, body, work, .. } = self;
        let w = work.as_mut().expect("made above");
        w.ids = ids.to_vec();
        let x0 = body.input(backend, batch, seq);
        backend.embedding_forward(B::all_mut(x0), store.value(*tokens), ids, d);
        backend.add_bias_rows(
            B::all_mut(x0),
            B::view(&store.values, store.specs[*positions].offset..store.specs[*positions].offset + seq * d),
        );
        let normed = body.forward(backend, store);
        backend.copy(B::all_mut(&mut w.normed), B::all(normed));
        head.forward(backend, store, &mut w.logits, &w.normed, batch * seq);
        &w.logits
    }

    /// Mean next-token cross-entropy over every position (`targets[i]` follows
    /// `ids[i]`), forward only: held-out evaluation needs no gradients.
    pub fn loss(&mut self, backend: &B, ids: &[u32], targets: &[u32], batch: usize) -> anyhow::Result<LossOut> {
        assert_eq!(ids.len(), targets.len(), "one target per position");
        self.forward(backend, ids, batch);
        let w = self.work.as_mut().expect("forward made it");
        backend.softmax_cross_entropy(B::all_mut(&mut w.d_logits), B::all(&w.logits), targets, self.config.vocab)
    }

    /// [`Gpt::loss`], then zeroes the gradients and leaves ∂loss/∂θ in the store.
    pub fn loss_and_gradients(&mut self, backend: &B, ids: &[u32], targets: &[u32], batch: usize) -> anyhow::Result<LossOut> {
        let out = self.loss(backend, ids, targets, batch)?;
        self.store.zero_grads(backend);
        let d = self.config.body.dim;
        let Self { store, tokens, positions, head, body, work, .. } = self;
        let w = work.as_mut().expect("forward made it");
        let (rows, seq) = (ids.len(), w.shape.1);
        // The loss is a mean over every position.
        store.taps.loss_terms = rows;
        head.backward(backend, store, Some(body.output_gradient()), &w.d_logits, &w.normed, rows);
        let d_x0 = body.backward(backend, store);
        backend.embedding_backward(B::view_mut(&mut store.grads, store.specs[*tokens].range()), B::all(d_x0), &w.ids, d);
        let pos = store.specs[*positions].offset;
        backend.accumulate_column_sums(B::view_mut(&mut store.grads, pos..pos + seq * d), B::all(d_x0));
        Ok(out)
    }
}
