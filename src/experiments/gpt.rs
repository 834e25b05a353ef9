//! The gradient-rank study of a small GPT (the seeds' Adam-vs-Muon experiment):
//! train on a byte-level corpus with each optimizer, and record every step's
//! loss, every `probe_every` steps the spectra of every matrix's weight,
//! gradient and update (Muon: before and after Newton-Schulz), and the held-out
//! loss every `eval_every` steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::config::{NamedOptimizer, named_optimizers, read_config, spelled_out};
use super::probes::{self, Snapshot};
use crate::backend::Backend;
use crate::data::text::Corpus;
use crate::models::{Gpt, GptConfig, TransformerConfig};
use crate::optim::Capture;
use crate::record::{TableWriter, schema};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptStudyConfig {
    /// A text file; default: the Shakespeare corpus (fetched and verified once).
    pub corpus: Option<PathBuf>,
    pub validation_fraction: f64,
    pub seq: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub model: TransformerConfig,
    pub seeds: Vec<u64>,
    pub optimizers: Vec<String>,
    pub optimizer: BTreeMap<String, toml::Table>,
    /// Scale gradients whose global L2 norm exceeds this (0 = no clipping).
    pub grad_clip: f32,
    pub probe_every: u64,
    pub eval_every: u64,
    pub eval_batches: usize,
}

impl Default for GptStudyConfig {
    /// The seed's setting: 4 layers, hidden 256, 4 heads, sequence 256, batch 8,
    /// 200 steps, Adam lr 3e-4 vs Muon lr 0.02, clipping at 1.0.
    fn default() -> Self {
        let table = |t: &str| toml::from_str::<toml::Table>(t).expect("valid default table");
        Self {
            corpus: None,
            validation_fraction: 0.1,
            seq: 256,
            batch_size: 8,
            steps: 200,
            model: TransformerConfig::default(),
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
        }
    }
}

impl GptStudyConfig {
    pub fn resolve(preset: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let config: Self = read_config(preset, overrides)?;
        if config.seq == 0 || config.batch_size == 0 || config.steps == 0 || config.eval_batches == 0 {
            bail!("seq, batch_size, steps and eval_batches must be positive");
        }
        if config.model.dim % config.model.heads != 0 {
            bail!("model.dim {} must be a multiple of model.heads {}", config.model.dim, config.model.heads);
        }
        config.named_optimizers()?;
        Ok(config)
    }

    pub fn named_optimizers(&self) -> Result<Vec<NamedOptimizer>> {
        named_optimizers(&self.optimizers, &self.optimizer)
    }

    pub fn to_resolved_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(&Self { optimizer: spelled_out(&self.optimizers, &self.optimizer)?, ..self.clone() })?)
    }
}

/// Runs every (optimizer, seed) on `corpus`, writing under `out` (which must not hold a study).
pub fn run_study<B: Backend>(
    backend: &B,
    config: &GptStudyConfig,
    corpus: &Corpus,
    out: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    if out.join("config.toml").exists() {
        bail!("{} already holds a study; choose another --out", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.toml"), config.to_resolved_toml()?)?;
    let optimizers = config.named_optimizers()?;
    progress.set_length(config.steps * (optimizers.len() * config.seeds.len()) as u64);
    // The same held-out batches for every run.
    let mut eval_rng = StdRng::seed_from_u64(0xE7A1);
    let eval: Vec<_> = (0..config.eval_batches)
        .map(|_| Corpus::sample(&corpus.validation, config.batch_size, config.seq, &mut eval_rng))
        .collect::<Result<_>>()?;
    for &seed in &config.seeds {
        for named in &optimizers {
            let id = format!("{}-s{seed}", named.label);
            let outcome = train(backend, config, corpus, &eval, out, named, seed, &id, progress)?;
            progress.println(format!("{id}: {outcome}"));
        }
    }
    progress.finish_and_clear();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train<B: Backend>(
    b: &B,
    config: &GptStudyConfig,
    corpus: &Corpus,
    eval: &[(Vec<u32>, Vec<u8>)],
    out: &Path,
    named: &NamedOptimizer,
    seed: u64,
    id: &str,
    progress: &indicatif::ProgressBar,
) -> Result<String> {
    let started = Instant::now();
    let gpt = GptConfig { vocab: 256, seq: config.seq, body: config.model };
    let mut model = Gpt::new(b, gpt, seed);
    let mut optimizer = named.config.build(b, &model.store);
    let w = |t| TableWriter::new(out, t, id, usize::MAX);
    let (mut steps, mut spectra, mut validation) = (w(&schema::STEPS)?, w(&schema::SPECTRA)?, w(&schema::VALIDATION)?);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut previous = b.zeros(model.store.len());
    let mut diverged = None;
    for step in 1..=config.steps {
        progress.set_message(format!("{id} step {step}"));
        let (ids, targets) = Corpus::sample(&corpus.train, config.batch_size, config.seq, &mut rng)?;
        b.copy(B::all_mut(&mut previous), B::all(&model.store.values));
        let loss = model.loss_and_gradients(b, &ids, &targets, config.batch_size);
        let grad_norm = b.sum_squares(B::all(&model.store.grads)).sqrt();
        if !loss.loss.is_finite() || !grad_norm.is_finite() {
            diverged = Some(step);
            break;
        }
        if config.grad_clip > 0.0 && grad_norm > f64::from(config.grad_clip) {
            b.scale(B::all_mut(&mut model.store.grads), (f64::from(config.grad_clip) / grad_norm) as f32);
        }
        let probe_now = config.probe_every > 0 && (step == 1 || step % config.probe_every == 0);
        let mut captures: Option<Vec<Capture>> = probe_now.then(Vec::new);
        optimizer.step(b, &mut model.store, 1.0, captures.as_mut());
        let update_norm = b.sum_squared_difference(B::all(&model.store.values), B::all(&previous)).sqrt();
        steps.push(vec![
            ("run", id.into()),
            ("step", step.into()),
            ("task", 0usize.into()),
            ("epoch", 0usize.into()),
            ("loss", loss.loss.into()),
            ("batch_accuracy", (loss.correct as f64 / targets.len() as f64).into()),
            ("lr", optimizer.groups.first().map_or(0.0, |g| g.lr).into()),
            ("grad_norm", grad_norm.into()),
            ("update_norm", update_norm.into()),
        ])?;
        if let Some(captures) = captures {
            probes::spectra(&mut spectra, &model.store.specs, id, step, 0, &Snapshot::take(b, &model.store, &previous), &captures)?;
        }
        if step % config.eval_every.max(1) == 0 || step == config.steps {
            let mean: f64 =
                eval.iter().map(|(i, t)| f64::from(model.loss(b, i, t, config.batch_size).loss)).sum::<f64>() / eval.len() as f64;
            validation.push(vec![
                ("run", id.into()),
                ("step", step.into()),
                ("loss", mean.into()),
                ("bits_per_byte", (mean / std::f64::consts::LN_2).into()),
            ])?;
        }
        progress.inc(1);
    }
    for t in [&mut steps, &mut spectra, &mut validation] {
        t.flush()?;
    }
    let mut runs = TableWriter::new(out, &schema::RUNS, &format!("{id}-final"), 1)?;
    let status = if diverged.is_some() { "diverged" } else { "completed" };
    runs.push(vec![
        ("run", id.into()),
        ("optimizer", named.label.as_str().into()),
        ("kind", named.config.name().into()),
        ("seed", seed.into()),
        ("status", status.into()),
        ("diverged_step", diverged.into()),
        ("steps", optimizer.steps.into()),
        ("final_all_accuracy", None::<f64>.into()),
        ("average_accuracy", None::<f64>.into()),
        ("backward_transfer", None::<f64>.into()),
        ("forgetting", None::<f64>.into()),
        ("seconds", started.elapsed().as_secs_f64().into()),
    ])?;
    Ok(match diverged {
        Some(step) => format!("diverged at step {step} (recorded; other runs go on)"),
        None => "completed".into(),
    })
}
