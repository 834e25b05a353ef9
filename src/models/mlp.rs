//! The multilayer perceptron of Pascanu et al.'s split-MNIST study: linear layers
//! with an elementwise activation between them and a softmax cross-entropy head.

use rand::RngExt;

use super::{Classifier, ParamStore, Representation, Role};
use crate::backend::{Activation, Backend, LossOut};
use crate::nn::Linear;
use crate::random::{self, Stream};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub activation: Activation,
}

impl MlpConfig {
    /// Widths of every layer boundary: input, hidden..., classes.
    fn widths(&self) -> Vec<usize> {
        std::iter::once(self.input).chain(self.hidden.iter().copied()).chain(std::iter::once(self.classes)).collect()
    }

    /// `(name, rows, cols, role)` of every parameter, in store order (weight, bias per layer).
    pub fn layout(&self) -> Vec<(String, usize, usize, Role)> {
        let widths = self.widths();
        let last = widths.len() - 2;
        let mut layout = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            let role = match i {
                i if i == last => Role::OutputHead,
                0 => Role::InputMatrix,
                _ => Role::HiddenMatrix,
            };
            layout.push((format!("fc{}.weight", i + 1), pair[1], pair[0], role));
            layout.push((format!("fc{}.bias", i + 1), 1, pair[1], Role::Vector));
        }
        layout
    }

    /// PyTorch's `nn.Linear` default: weight and bias uniform in ±1/sqrt(fan_in).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = random::rng(seed, Stream::Init, 0);
        let mut values = Vec::new();
        for pair in self.widths().windows(2) {
            let bound = 1.0 / (pair[0] as f32).sqrt();
            values.extend((0..pair[0] * pair[1] + pair[1]).map(|_| rng.random_range(-bound..bound)));
        }
        values
    }
}

/// Per-batch activations kept for the backward pass and for probes.
struct Workspace<B: Backend> {
    batch: usize,
    /// `inputs[i]`: the input of layer i (`inputs[0]` is the batch itself).
    inputs: Vec<B::Buf>,
    /// `pre[i]`: the output of layer i before the activation (the last one: logits).
    pre: Vec<B::Buf>,
    /// Gradient scratch with the shapes of `inputs` and `pre`.
    d_inputs: Vec<B::Buf>,
    d_pre: Vec<B::Buf>,
}

impl<B: Backend> Workspace<B> {
    fn new(backend: &B, widths: &[usize], batch: usize) -> Self {
        let alloc = |ws: &[usize]| ws.iter().map(|w| backend.zeros(batch * w)).collect::<Vec<_>>();
        let (ins, outs) = (&widths[..widths.len() - 1], &widths[1..]);
        Self { batch, inputs: alloc(ins), pre: alloc(outs), d_inputs: alloc(ins), d_pre: alloc(outs) }
    }
}

pub struct Mlp<B: Backend> {
    pub config: MlpConfig,
    pub store: ParamStore<B>,
    pub layers: Vec<Linear>,
    work: Option<Workspace<B>>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(backend: &B, config: MlpConfig, seed: u64) -> Self {
        let init = config.init(seed);
        Self::from_values(backend, config, &init)
    }

    /// A model with the given parameter values (checkpoints, cross-backend tests).
    pub fn from_values(backend: &B, config: MlpConfig, values: &[f32]) -> Self {
        let store = ParamStore::new(backend, &config.layout(), values);
        let layers = config
            .widths()
            .windows(2)
            .enumerate()
            .map(|(i, pair)| Linear { weight: 2 * i, bias: 2 * i + 1, in_dim: pair[0], out_dim: pair[1] })
            .collect();
        Self { config, store, layers, work: None }
    }

    /// Post-activation outputs of every hidden layer from the last forward call,
    /// each batch×width (probes read sparsity and class structure from these).
    pub fn hidden_activations(&self, backend: &B) -> anyhow::Result<Vec<Vec<f32>>> {
        self.work.as_ref().map_or_else(|| Ok(Vec::new()), |w| w.inputs[1..].iter().map(|a| backend.download(B::all(a))).collect())
    }
}

impl<B: Backend> Classifier<B> for Mlp<B> {
    fn store(&self) -> &ParamStore<B> {
        &self.store
    }
    fn store_mut(&mut self) -> &mut ParamStore<B> {
        &mut self.store
    }
    fn classes(&self) -> usize {
        self.config.classes
    }
    /// Runs the network on `batch` rows of `x`; returns the logits (batch×classes).
    fn forward(&mut self, backend: &B, x: &[f32], batch: usize) -> &B::Buf {
        assert_eq!(x.len(), batch * self.config.input, "input must be batch×{}", self.config.input);
        if self.work.as_ref().is_none_or(|w| w.batch != batch) {
            self.work = Some(Workspace::new(backend, &self.config.widths(), batch));
        }
        let Self { config, store, layers, work } = self;
        let work = work.as_mut().expect("workspace made above");
        work.inputs[0] = backend.upload(x);
        for (i, layer) in layers.iter().enumerate() {
            layer.forward(backend, store, &mut work.pre[i], &work.inputs[i], batch);
            if let Some(next) = work.inputs.get_mut(i + 1) {
                backend.activation_forward(config.activation, B::all_mut(next), B::all(&work.pre[i]));
            }
        }
        &work.pre[layers.len() - 1]
    }
    /// Zeroes the gradients, runs forward and backward on one batch, and leaves
    /// ∂(mean loss)/∂θ in `store.grads`.
    fn loss_and_gradients(&mut self, backend: &B, x: &[f32], labels: &[u8]) -> anyhow::Result<LossOut> {
        let batch = labels.len();
        self.forward(backend, x, batch);
        self.store.zero_grads(backend);
        let Self { config, store, layers, work } = self;
        let work = work.as_mut().expect("forward made the workspace");
        let last = layers.len() - 1;
        let out = backend.softmax_cross_entropy(B::all_mut(&mut work.d_pre[last]), B::all(&work.pre[last]), labels, config.classes)?;
        store.taps.loss_terms = batch;
        for (i, layer) in layers.iter().enumerate().rev() {
            let dx = (i > 0).then(|| &mut work.d_inputs[i]);
            layer.backward(backend, store, dx, &work.d_pre[i], &work.inputs[i], batch);
            if i > 0 {
                let (d_pre, d_in) = (&mut work.d_pre[i - 1], &work.d_inputs[i]);
                backend.activation_backward(config.activation, B::all_mut(d_pre), B::all(d_in), B::all(&work.pre[i - 1]));
            }
        }
        Ok(out)
    }
    fn representations(&self, backend: &B) -> anyhow::Result<Vec<Representation>> {
        Ok(self
            .hidden_activations(backend)?
            .into_iter()
            .zip(&self.config.hidden)
            .enumerate()
            .map(|(i, (values, &width))| Representation { name: format!("fc{}", i + 1), width, rows_per_example: 1, values })
            .collect())
    }
}
