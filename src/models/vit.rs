//! A small Vision Transformer (Dosovitskiy et al. 2021): square images cut into
//! patches (all channels of a patch together), a linear patch embedding, a class token, learned positions, the
//! pre-norm transformer body, and a linear head on the class token.

use super::transformer::{Body, Init, Layout, TransformerConfig};
use super::{Classifier, ParamStore, Representation, Role};
use crate::backend::{Backend, LossOut};
use crate::nn::Linear;
use crate::random::{self, Stream};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    /// Side of the square image, e.g. 28 (MNIST) or 32 (CIFAR-10).
    pub image: usize,
    /// Colour planes per image (stored CHW): 1 for MNIST, 3 for CIFAR-10.
    pub channels: usize,
    /// Side of a square patch; must divide `image`.
    pub patch: usize,
    pub classes: usize,
    pub body: TransformerConfig,
}

impl VitConfig {
    pub fn patches(&self) -> usize {
        (self.image / self.patch).pow(2)
    }
    /// Values per patch, the patch embedding's input width.
    pub fn patch_values(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Values per image.
    pub fn image_values(&self) -> usize {
        self.channels * self.image * self.image
    }
    /// Tokens per image: the patches and the class token.
    pub fn seq(&self) -> usize {
        self.patches() + 1
    }
}

pub struct Vit<B: Backend> {
    pub config: VitConfig,
    pub store: ParamStore<B>,
    embed: Linear,
    cls: usize,
    pos: usize,
    head: Linear,
    body: Body<B>,
    work: Option<Work<B>>,
}

/// Per-batch buffers outside the body.
struct Work<B: Backend> {
    batch: usize,
    patches: B::Buf,
    embedded: B::Buf,
    cls_out: B::Buf,
    logits: B::Buf,
    d_logits: B::Buf,
    d_cls_out: B::Buf,
    d_embedded: B::Buf,
}

impl<B: Backend> Vit<B> {
    pub fn new(backend: &B, config: VitConfig, seed: u64) -> Self {
        Self::build(backend, config, |layout| layout.init(&mut random::rng(seed, Stream::Init, 0)))
    }

    /// A model with the given parameter values (checkpoints, cross-backend tests).
    pub fn from_values(backend: &B, config: VitConfig, values: &[f32]) -> Self {
        Self::build(backend, config, |_| values.to_vec())
    }

    fn build(backend: &B, config: VitConfig, values: impl FnOnce(&Layout) -> Vec<f32>) -> Self {
        assert!(config.image.is_multiple_of(config.patch), "patch {} does not divide image {}", config.patch, config.image);
        let d = config.body.dim;
        let mut layout = Layout::default();
        let std = config.body.init_std;
        let embed = layout.linear("patch_embed", config.patch_values(), d, Role::InputMatrix, std);
        let cls = layout.push("cls_token".into(), 1, d, Role::Embedding, Init::Normal(std));
        let pos = layout.push("pos_embed".into(), config.seq(), d, Role::Embedding, Init::Normal(std));
        let body = Body::declare(config.body, false, &mut layout);
        let head = layout.linear("head", d, config.classes, Role::OutputHead, std);
        let store = ParamStore::new(backend, &layout.params, &values(&layout)).with_blocks(&layout.blocks);
        Self { config, store, embed, cls, pos, head, body, work: None }
    }

    /// Cuts each image (CHW, side `image`) into patches, row by row; a patch is
    /// its channels' p×p squares in turn (a conv weight's (c, y, x) order).
    fn patchify(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let (side, p) = (self.config.image, self.config.patch);
        let per_row = side / p;
        let mut out = Vec::with_capacity(x.len());
        for img in x.chunks_exact(self.config.image_values()).take(batch) {
            for (py, px) in (0..per_row).flat_map(|py| (0..per_row).map(move |px| (py, px))) {
                for plane in img.chunks_exact(side * side) {
                    for dy in 0..p {
                        out.extend_from_slice(&plane[(py * p + dy) * side + px * p..][..p]);
                    }
                }
            }
        }
        out
    }
}

impl<B: Backend> Classifier<B> for Vit<B> {
    fn store(&self) -> &ParamStore<B> {
        &self.store
    }
    fn store_mut(&mut self) -> &mut ParamStore<B> {
        &mut self.store
    }
    fn classes(&self) -> usize {
        self.config.classes
    }
    /// Logits (batch×classes) of `batch` images.
    fn forward(&mut self, backend: &B, x: &[f32], batch: usize) -> &B::Buf {
        let (d, np, seq, classes) = (self.config.body.dim, self.config.patches(), self.config.seq(), self.config.classes);
        let c = &self.config;
        assert_eq!(x.len(), batch * c.image_values(), "input must be batch×{}×{}²", c.channels, c.image);
        if self.work.as_ref().is_none_or(|w| w.batch != batch) {
            let z = |n: usize| backend.zeros(n);
            self.work = Some(Work {
                batch,
                patches: z(batch * np * self.config.patch_values()),
                embedded: z(batch * np * d),
                cls_out: z(batch * d),
                logits: z(batch * classes),
                d_logits: z(batch * classes),
                d_cls_out: z(batch * d),
                d_embedded: z(batch * np * d),
            });
        }
        let patches = self.patchify(x, batch);
        let Self { store, embed, cls, pos, head, body, work, .. } = self;
        let w = work.as_mut().expect("made above");
        w.patches = backend.upload(&patches);
        embed.forward(backend, store, &mut w.embedded, &w.patches, batch * np);
        // Sequence b: [class token, its patches] + positions.
        let x0 = body.input(backend, batch, seq);
        for b in 0..batch {
            backend.copy(B::view_mut(x0, b * seq * d..(b * seq + 1) * d), store.value(*cls));
            backend.copy(B::view_mut(x0, (b * seq + 1) * d..(b + 1) * seq * d), B::view(&w.embedded, b * np * d..(b + 1) * np * d));
        }
        backend.add_bias_rows(B::all_mut(x0), store.value(*pos));
        let normed = body.forward(backend, store);
        for b in 0..batch {
            backend.copy(B::view_mut(&mut w.cls_out, b * d..(b + 1) * d), B::view(normed, b * seq * d..(b * seq + 1) * d));
        }
        head.forward(backend, store, &mut w.logits, &w.cls_out, batch);
        &w.logits
    }
    /// Zeroes the gradients, runs forward and backward on one batch.
    fn loss_and_gradients(&mut self, backend: &B, x: &[f32], labels: &[u8]) -> anyhow::Result<LossOut> {
        let batch = labels.len();
        self.forward(backend, x, batch);
        self.store.zero_grads(backend);
        let (d, np, seq) = (self.config.body.dim, self.config.patches(), self.config.seq());
        let Self { store, embed, cls, pos, head, body, work, config, .. } = self;
        let w = work.as_mut().expect("forward made it");
        let out = backend.softmax_cross_entropy(B::all_mut(&mut w.d_logits), B::all(&w.logits), labels, config.classes)?;
        store.taps.loss_terms = batch;
        head.backward(backend, store, Some(&mut w.d_cls_out), &w.d_logits, &w.cls_out, batch);
        // Only the class tokens reach the head.
        let d_normed = body.output_gradient();
        backend.fill(B::all_mut(d_normed), 0.0);
        for b in 0..batch {
            backend.copy(B::view_mut(d_normed, b * seq * d..(b * seq + 1) * d), B::view(&w.d_cls_out, b * d..(b + 1) * d));
        }
        let d_x0 = body.backward(backend, store);
        backend.accumulate_column_sums(B::view_mut(&mut store.grads, store.specs[*pos].range()), B::all(d_x0));
        for b in 0..batch {
            let cls_grad = store.specs[*cls].range();
            backend.axpby(B::view_mut(&mut store.grads, cls_grad), 1.0, B::view(d_x0, b * seq * d..(b * seq + 1) * d), 1.0);
            backend.copy(B::view_mut(&mut w.d_embedded, b * np * d..(b + 1) * np * d), B::view(d_x0, (b * seq + 1) * d..(b + 1) * seq * d));
        }
        embed.backward(backend, store, None, &w.d_embedded, &w.patches, batch * np);
        Ok(out)
    }

    /// Every block's GELU outputs (all tokens), then the class token after the
    /// final LayerNorm: what the head classifies.
    fn representations(&self, backend: &B) -> anyhow::Result<Vec<Representation>> {
        let Some(w) = &self.work else { return Ok(Vec::new()) };
        let (body, seq) = (self.config.body, self.config.seq());
        let mut reps: Vec<Representation> = self
            .body
            .mlp_activations(backend)?
            .into_iter()
            .enumerate()
            .map(|(i, values)| Representation {
                name: format!("blocks.{i}.mlp.{}", body.feed_forward.output_name()),
                width: body.dim * body.mlp_ratio,
                rows_per_example: seq,
                values,
            })
            .collect();
        reps.push(Representation {
            name: "cls".into(),
            width: body.dim,
            rows_per_example: 1,
            values: backend.download(B::all(&w.cls_out))?,
        });
        Ok(reps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn patches_hold_each_channel_square_in_turn() {
        let body = TransformerConfig { dim: 4, depth: 1, heads: 1, mlp_ratio: 1, ..Default::default() };
        let vit = Vit::new(&Cpu, VitConfig { image: 4, channels: 2, patch: 2, classes: 2, body }, 0);
        // Value c·100 + y·10 + x at channel c, row y, column x.
        let image: Vec<f32> = (0..2).flat_map(|c| (0..4).flat_map(move |y| (0..4).map(move |x| (c * 100 + y * 10 + x) as f32))).collect();
        let patches = vit.patchify(&image, 1);
        assert_eq!(patches.len(), image.len());
        assert_eq!(patches[..8], [0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0]);
        // The second patch is to the right of the first; the third starts row 2.
        assert_eq!(patches[8..16], [2.0, 3.0, 12.0, 13.0, 102.0, 103.0, 112.0, 113.0]);
        assert_eq!(patches[16..20], [20.0, 21.0, 30.0, 31.0]);
    }
}
