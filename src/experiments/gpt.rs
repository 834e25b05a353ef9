//! The gradient-rank study of a small GPT (the seeds' Adam-vs-Muon experiment):
//! train on a corpus of bytes or GPT-2 BPE tokens with each optimizer, and record every step's
//! loss, every `probe_every` steps the spectra of every matrix's weight,
//! gradient and update (Muon: before and after Newton-Schulz), and the held-out
//! loss every `eval_every` steps. The steps up to an evaluation are one segment
//! of the study driver: a run is checkpointed (and can pause) at each evaluation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use super::config::{StudyConfig, check_optimizers, check_seeds, positive};
use super::records::Records;
use super::study::{Evaluation, Protocol, Summary};
use super::trainer::{BatchLoss, Settings};
use crate::backend::Backend;
use crate::data::text::{Corpus, Tokenizer};
use crate::models::{FeedForward, Gpt, GptConfig, ParamStore, TransformerConfig};
use crate::optim::Schedule;
use crate::random::{self, Stream};
use crate::record::schema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptStudyConfig {
    /// A text file; default: the Shakespeare corpus (fetched and verified once).
    pub corpus: Option<PathBuf>,
    /// `bytes` (vocabulary 256) or `gpt2` (GPT-2's BPE, 50,257 tokens).
    pub tokenizer: Tokenizer,
    pub validation_fraction: f64,
    /// This fraction of the text, at its end after the validation part, held
    /// out as a test split: what a sweep's `[select]` reports once it has
    /// chosen on validation (0: none, every held-out number is validation's).
    pub test_fraction: f64,
    pub seq: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub model: TransformerConfig,
    /// The head's weight is the token table (see `GptConfig::tie_embeddings`).
    pub tie_embeddings: bool,
    pub seeds: Vec<u64>,
    pub optimizers: Vec<String>,
    pub optimizer: BTreeMap<String, toml::Table>,
    /// Scale gradients whose global L2 norm exceeds this (0 = no clipping).
    pub grad_clip: f32,
    /// Spectra every this many steps and at step 1 (0: only at evaluations).
    pub probe_every: u64,
    /// Held-out loss (and a checkpoint) every this many steps and at the last.
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Learning-rate schedule over the run's steps, on every parameter group.
    pub schedule: Schedule,
}

impl Default for GptStudyConfig {
    /// The seed's setting: 4 layers, hidden 256, 4 heads, sequence 256, batch 8,
    /// 200 steps, Adam lr 3e-4 vs Muon lr 0.02, clipping at 1.0.
    fn default() -> Self {
        let table = |t: &str| toml::from_str::<toml::Table>(t).expect("valid default table");
        Self {
            corpus: None,
            tokenizer: Tokenizer::Bytes,
            validation_fraction: 0.1,
            test_fraction: 0.0,
            seq: 256,
            batch_size: 8,
            steps: 200,
            model: TransformerConfig::default(),
            tie_embeddings: false,
            seeds: vec![0],
            optimizers: vec!["adam".into(), "muon".into()],
            optimizer: BTreeMap::from([
                ("adam".into(), table("kind = \"adamw\"\nlr = 3e-4")),
                ("muon".into(), table("lr = 0.02\naux_adamw = { lr = 3e-4 }")),
            ]),
            grad_clip: 1.0,
            probe_every: 20,
            eval_every: 50,
            eval_batches: 4,
            schedule: Schedule::default(),
        }
    }
}

impl StudyConfig for GptStudyConfig {
    fn optimizer_tables(&self) -> (&[String], &BTreeMap<String, toml::Table>) {
        (&self.optimizers, &self.optimizer)
    }

    fn optimizer_tables_mut(&mut self) -> &mut BTreeMap<String, toml::Table> {
        &mut self.optimizer
    }

    fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    fn validate(&self) -> Result<()> {
        positive("seq", self.seq)?;
        positive("batch_size", self.batch_size)?;
        positive("steps", self.steps)?;
        positive("eval_every", self.eval_every)?;
        positive("eval_batches", self.eval_batches)?;
        ensure!(
            self.validation_fraction > 0.0 && self.validation_fraction < 1.0,
            "validation_fraction must be in (0, 1), got {}",
            self.validation_fraction
        );
        ensure!(
            self.test_fraction >= 0.0 && self.validation_fraction + self.test_fraction < 1.0,
            "test_fraction must be ≥ 0 and leave text to train on beside validation_fraction {}, got {}",
            self.validation_fraction,
            self.test_fraction
        );
        self.schedule.validate(Some(self.steps))?;
        ensure!(self.grad_clip.is_finite() && self.grad_clip >= 0.0, "grad_clip must be ≥ 0 (0: no clipping), got {}", self.grad_clip);
        self.model.validate("model")?;
        check_seeds(&self.seeds)?;
        check_optimizers(&self.optimizers, &self.optimizer)?;
        super::memory::check(self.memory_estimate())
    }
}

impl GptStudyConfig {
    /// Parameters of the configured model.
    pub fn parameter_count(&self) -> usize {
        self.gpt().parameter_count()
    }

    fn gpt(&self) -> GptConfig {
        GptConfig { vocab: self.tokenizer.vocab(), seq: self.seq, body: self.model, tie_embeddings: self.tie_embeddings }
    }

    /// Bytes one run needs at its peak (see `memory`).
    fn memory_estimate(&self) -> super::memory::Estimate {
        let m = &self.model;
        let params = self.gpt().parameter_count();
        let rows = self.batch_size.saturating_mul(self.seq);
        // Per block: ~16 rows×dim buffers kept for backward (LayerNorms, qkv,
        // attention, MLP at mlp_ratio×, 5 of them for SwiGLU).
        let mlp_buffers = if m.feed_forward == FeedForward::Swiglu { 5 } else { 3 };
        let per_block = rows.saturating_mul(m.dim).saturating_mul(8 + mlp_buffers * m.mlp_ratio);
        let vocab = self.tokenizer.vocab();
        let activations = per_block.saturating_mul(m.depth).saturating_add(rows.saturating_mul(vocab * 3));
        super::memory::Estimate::new(params, activations, m.dim.max(vocab).saturating_mul(m.dim * m.mlp_ratio))
    }
}

/// The GPT study: segments of `eval_every` steps, each ending in a held-out evaluation.
pub struct GptStudy<'a> {
    config: &'a GptStudyConfig,
    corpus: &'a Corpus,
    /// The same held-out batches for every run: validation's, and the test
    /// split's (none without one).
    eval: Vec<(Vec<u32>, Vec<u32>)>,
    test: Vec<(Vec<u32>, Vec<u32>)>,
}

impl<'a> GptStudy<'a> {
    /// Fails if the corpus is too short for the configured sequences.
    pub fn new(config: &'a GptStudyConfig, corpus: &'a Corpus) -> Result<Self> {
        let mut rng = random::rng(0, Stream::Evaluation, 0);
        let mut batches = |part: &[u32], name: &str, fraction: f64| -> Result<Vec<_>> {
            (0..config.eval_batches)
                .map(|_| Corpus::sample(part, config.batch_size, config.seq, &mut rng))
                .collect::<Result<_>>()
                .with_context(|| format!("the {name} text ({name}_fraction {fraction})"))
        };
        let eval = batches(&corpus.validation.tokens, "validation", config.validation_fraction)?;
        let test = corpus.test.as_ref().map_or(Ok(Vec::new()), |t| batches(&t.tokens, "test", config.test_fraction))?;
        Corpus::sample(&corpus.train, 1, config.seq, &mut rng)?;
        Ok(Self { config, corpus, eval, test })
    }

    /// Mean next-token loss over fixed held-out batches.
    fn held_out_loss<B: Backend>(&self, backend: &B, model: &mut Gpt<B>, batches: &[(Vec<u32>, Vec<u32>)]) -> Result<f64> {
        let b = self.config.batch_size;
        let total = batches.iter().map(|(i, t)| Ok(f64::from(model.loss(backend, i, t, b)?.loss))).sum::<Result<f64>>()?;
        Ok(total / batches.len() as f64)
    }
}

impl<B: Backend> Protocol<B> for GptStudy<'_> {
    type Model = Gpt<B>;
    /// Token ids and next-token targets of `batch_size` windows.
    type Batch = (Vec<u32>, Vec<u32>);

    fn segments(&self) -> usize {
        self.config.steps.div_ceil(self.config.eval_every) as usize
    }

    fn segment_steps(&self, segment: usize) -> u64 {
        let start = segment as u64 * self.config.eval_every;
        self.config.eval_every.min(self.config.steps - start)
    }

    fn task_of(&self, _: usize) -> usize {
        0
    }

    fn describe(&self, segment: usize) -> String {
        let start = segment as u64 * self.config.eval_every;
        format!("steps {}–{}", start + 1, start + <Self as Protocol<B>>::segment_steps(self, segment))
    }

    fn build_model(&self, backend: &B, seed: u64) -> Result<Gpt<B>> {
        Ok(Gpt::new(backend, self.config.gpt(), seed))
    }

    fn store(model: &Gpt<B>) -> &ParamStore<B> {
        &model.store
    }

    fn store_mut(model: &mut Gpt<B>) -> &mut ParamStore<B> {
        &mut model.store
    }

    /// Random windows from the segment's own stream: a resumed run draws the same ones.
    fn batches(&self, seed: u64, segment: usize) -> Result<Vec<(usize, Self::Batch)>> {
        let mut rng = random::rng(seed, Stream::Sampling, segment as u64);
        let c = self.config;
        (0..<Self as Protocol<B>>::segment_steps(self, segment))
            .map(|_| Ok((0, Corpus::sample(&self.corpus.train, c.batch_size, c.seq, &mut rng)?)))
            .collect()
    }

    fn loss_and_gradients(&self, backend: &B, model: &mut Gpt<B>, (ids, targets): &Self::Batch) -> Result<BatchLoss> {
        let out = model.loss_and_gradients(backend, ids, targets, self.config.batch_size)?;
        Ok(BatchLoss { loss: out.loss, correct: out.correct, predictions: targets.len() })
    }

    fn evaluate(&self, backend: &B, model: &mut Gpt<B>, at: Evaluation, scores: &mut Vec<f64>, records: &mut Records) -> Result<()> {
        let validation = self.held_out_loss(backend, model, &self.eval)?;
        let test = match &self.corpus.test {
            Some(part) => Some((self.held_out_loss(backend, model, &self.test)?, part.tokens_per_byte)),
            None => None,
        };
        *scores = [Some(validation), test.map(|t| t.0)].into_iter().flatten().collect();
        let bits_per_byte = |loss: f64, tokens_per_byte: f64| loss * tokens_per_byte / std::f64::consts::LN_2;
        records.push(
            &schema::VALIDATION,
            vec![
                ("run", at.run.into()),
                ("step", at.step.into()),
                ("loss", validation.into()),
                ("bits_per_byte", bits_per_byte(validation, self.corpus.validation.tokens_per_byte).into()),
                ("test_loss", test.map(|t| t.0).into()),
                ("test_bits_per_byte", test.map(|(loss, per_byte)| bits_per_byte(loss, per_byte)).into()),
            ],
        )
    }

    fn summary(&self, scores: &[f64]) -> Summary {
        Summary { final_validation_loss: scores.first().copied(), final_test_loss: scores.get(1).copied(), ..Summary::default() }
    }

    fn settings(&self) -> Settings {
        Settings { grad_clip: self.config.grad_clip, probe_every: self.config.probe_every, schedule: self.config.schedule, total_steps: 0 }
    }
}
