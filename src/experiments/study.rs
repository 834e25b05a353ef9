//! The one study driver: every (optimizer, seed) run of a study, trained
//! segment by segment through the shared [`Trainer`], checkpointed at each
//! segment's end, resumed from there, and kept apart from the others.
//!
//! A study kind ([`Protocol`]) says what a segment is (a task of split-MNIST, a
//! stretch of GPT steps ending in an evaluation), how a batch is trained and
//! what is measured at a segment's end; the driver owns the rest: checkpoints
//! (with their checksum), staged records, the `runs` table, counters carried
//! across sessions, and failure containment: an error or a panic inside one run
//! records that run as `failed` and the study goes on.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::config::{NamedOptimizer, StudyConfig};
use super::folder::StudyFolder;
use super::provenance::Provenance;
use super::records::{self, Records};
use super::trainer::{BatchLoss, Position, Settings, Trainer};
use crate::backend::Backend;
use crate::models::ParamStore;
use crate::record::checkpoint::Checkpoint;
use crate::record::{TableWriter, Value, schema};

/// What a study kind supplies to the driver.
pub trait Protocol<B: Backend> {
    type Model;
    type Batch;
    /// Checkpointed units of a run: tasks, or stretches of steps.
    fn segments(&self) -> usize;
    /// Optimizer steps in `segment` (for progress).
    fn segment_steps(&self, segment: usize) -> u64;
    /// The task a segment trains (0 for a language model).
    fn task_of(&self, segment: usize) -> usize;
    /// A short description for the progress line.
    fn describe(&self, segment: usize) -> String;
    fn build_model(&self, backend: &B, seed: u64) -> Result<Self::Model>;
    fn store(model: &Self::Model) -> &ParamStore<B>;
    fn store_mut(model: &mut Self::Model) -> &mut ParamStore<B>;
    /// The batches of `segment`, each with its epoch: fixed by the seed and the
    /// segment alone, so a resumed run sees the data it would have seen.
    fn batches(&self, seed: u64, segment: usize) -> Result<Vec<(usize, Self::Batch)>>;
    /// Forward and backward: leaves ∂loss/∂θ in the model's store.
    fn loss_and_gradients(&self, backend: &B, model: &mut Self::Model, batch: &Self::Batch) -> Result<BatchLoss>;
    /// Measurements at the end of `segment` (accuracy matrix, held-out loss), into
    /// `records` and `scores`, the run's checkpointed numbers.
    fn evaluate(&self, backend: &B, model: &mut Self::Model, at: Evaluation, scores: &mut Vec<f64>, records: &mut Records) -> Result<()>;
    /// Measurements at the end of an epoch inside `segment` (its last epoch
    /// ends at `evaluate`): how the solution forms, not a score.
    fn epoch_end(&self, _backend: &B, _model: &mut Self::Model, _at: Evaluation, _records: &mut Records) -> Result<()> {
        Ok(())
    }
    /// The summary columns of the `runs` row of a completed run (null otherwise).
    fn summary(&self, scores: &[f64]) -> Summary;
    /// Clipping, probing and the learning-rate schedule (`total_steps` is
    /// filled in by the driver).
    fn settings(&self) -> Settings;
    /// Files that document the study's data (e.g. which examples were held
    /// out), written into its folder: (name, contents).
    fn study_files(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Where an evaluation happens.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation<'a> {
    pub run: &'a str,
    pub segment: usize,
    pub step: u64,
}

/// A completed run's summary columns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub final_all_accuracy: Option<f64>,
    pub final_validation_accuracy: Option<f64>,
    pub average_accuracy: Option<f64>,
    pub backward_transfer: Option<f64>,
    pub forgetting: Option<f64>,
    pub final_validation_loss: Option<f64>,
    pub final_test_loss: Option<f64>,
}

/// How a run ended in this invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    Completed,
    Diverged {
        step: u64,
    },
    Failed {
        step: u64,
        error: String,
    },
    /// Checkpointed after the requested number of segments; `--resume` continues it.
    Paused {
        segments_done: usize,
    },
}

/// What happened to every run the driver was asked for.
#[derive(Debug, Default)]
pub struct Report {
    pub runs: Vec<(String, RunEnd)>,
}

impl Report {
    pub fn failed(&self) -> Vec<&str> {
        self.runs.iter().filter(|(_, e)| matches!(e, RunEnd::Failed { .. })).map(|(r, _)| r.as_str()).collect()
    }
    pub fn paused(&self) -> bool {
        self.runs.iter().any(|(_, e)| matches!(e, RunEnd::Paused { .. }))
    }
}

/// A run's id: `<label>-s<seed>`.
pub fn run_id(label: &str, seed: u64) -> String {
    format!("{label}-s{seed}")
}

/// Status of a run as its checkpoint records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Running,
    Completed,
    Diverged,
}

/// Everything about a run that is not a tensor, saved in its checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run: String,
    pub status: Status,
    /// Segments finished (and checkpointed).
    pub next_segment: usize,
    pub steps: u64,
    pub diverged_step: Option<u64>,
    /// Training time over every session that worked on the run.
    pub seconds: f64,
    /// The protocol's numbers (e.g. the accuracy matrix), in f64.
    pub scores: Vec<f64>,
    /// Optimizer and backend counters so far.
    pub counters: BTreeMap<String, f64>,
}

const STATE_KEY: &str = "state";

pub fn checkpoint_path(root: &Path, run: &str) -> PathBuf {
    root.join("checkpoints").join(format!("{run}.safetensors"))
}

/// The state in a run's checkpoint, if it has one (for reports).
pub fn saved_state(root: &Path, run: &str) -> Result<Option<RunState>> {
    let path = checkpoint_path(root, run);
    if !path.exists() {
        return Ok(None);
    }
    let ck = Checkpoint::load(&path)?;
    Ok(Some(toml::from_str(ck.meta(STATE_KEY)?).with_context(|| format!("{}: unreadable run state", path.display()))?))
}

/// A study of `kind` in `out` as `exp` runs it: the folder created (or, with
/// `resume`, reopened and checked against `config`), the session's provenance
/// written, then every run.
#[allow(clippy::too_many_arguments)]
pub fn run_study<B: Backend, P: Protocol<B>, C: StudyConfig>(
    backend: &B,
    kind: &str,
    config: &C,
    protocol: &P,
    out: &Path,
    resume: bool,
    stop_after: Option<usize>,
    provenance: &mut Provenance,
    progress: &indicatif::ProgressBar,
) -> Result<Report> {
    let table = config.resolved_table()?;
    let _folder = if resume { StudyFolder::resume(out, kind, &table)? } else { StudyFolder::create(out, kind, &table)? };
    provenance.write(out)?;
    for (name, contents) in protocol.study_files() {
        super::folder::write_atomically(&out.join(name), &contents)?;
    }
    let report = run_all(backend, protocol, out, &config.named_optimizers()?, config.seeds(), stop_after, provenance, progress)?;
    provenance.finish(out)?;
    Ok(report)
}

/// Runs every (optimizer, seed) of a study under `root`; `stop_after` pauses
/// each run after that many segments in this invocation.
#[allow(clippy::too_many_arguments)]
fn run_all<B: Backend, P: Protocol<B>>(
    backend: &B,
    protocol: &P,
    root: &Path,
    optimizers: &[NamedOptimizer],
    seeds: &[u64],
    stop_after: Option<usize>,
    provenance: &Provenance,
    progress: &indicatif::ProgressBar,
) -> Result<Report> {
    std::fs::create_dir_all(root.join("checkpoints")).with_context(|| format!("creating {}", root.join("checkpoints").display()))?;
    let per_run: u64 = (0..protocol.segments()).map(|s| protocol.segment_steps(s)).sum();
    progress.set_length(per_run * (optimizers.len() * seeds.len()) as u64);
    let mut report = Report::default();
    for &seed in seeds {
        for named in optimizers {
            let run = Run { backend, protocol, root, named, seed, id: run_id(&named.label, seed), at: Where::default(), provenance };
            let end = run.contained(stop_after, progress);
            let line = match &end {
                RunEnd::Completed => format!("{}: completed", run.id),
                RunEnd::Diverged { step } => format!("{}: diverged at step {step} (recorded; other runs go on)", run.id),
                RunEnd::Failed { step, error } => format!("{}: FAILED at step {step}: {error} (recorded; other runs go on)", run.id),
                RunEnd::Paused { segments_done } => {
                    format!(
                        "{}: paused after {segments_done} of {} segments (checkpointed; --resume continues)",
                        run.id,
                        protocol.segments()
                    )
                }
            };
            // On stderr even when no progress bar is drawn (not a terminal).
            progress.suspend(|| eprintln!("{line}"));
            report.runs.push((run.id, end));
        }
    }
    progress.finish_and_clear();
    Ok(report)
}

/// The operation a run is in and its step, for a failure's message.
#[derive(Default)]
struct Where {
    operation: Cell<&'static str>,
    step: Cell<u64>,
    /// Training seconds of the run so far (for a failed row).
    seconds: Cell<f64>,
}

impl Where {
    fn set(&self, operation: &'static str) {
        self.operation.set(operation);
    }
}

struct Run<'a, B: Backend, P: Protocol<B>> {
    backend: &'a B,
    protocol: &'a P,
    root: &'a Path,
    named: &'a NamedOptimizer,
    seed: u64,
    id: String,
    at: Where,
    provenance: &'a Provenance,
}

impl<B: Backend, P: Protocol<B>> Run<'_, B, P> {
    /// Trains the run; an error or a panic becomes a `failed` row.
    fn contained(&self, stop_after: Option<usize>, progress: &indicatif::ProgressBar) -> RunEnd {
        self.at.set("starting");
        let outcome = catch_unwind(AssertUnwindSafe(|| self.train(stop_after, progress)));
        let error = match outcome {
            Ok(Ok(end)) => return end,
            Ok(Err(e)) => format!("{}: {e:#}", self.at.operation.get()),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into());
                format!("{}: crashed: {msg}", self.at.operation.get())
            }
        };
        let step = self.at.step.get();
        if let Err(e) = self.write_failed(step, &error) {
            progress.suspend(|| eprintln!("{}: could not record the failure: {e:#}", self.id));
        }
        RunEnd::Failed { step, error }
    }

    fn write_failed(&self, step: u64, error: &str) -> Result<()> {
        records::remove_published(self.root, &schema::RUNS, &self.id)?;
        let mut w = TableWriter::new(self.root, &schema::RUNS, &format!("{}-final", self.id), 1)?;
        w.push(self.runs_row("failed", None, Some(step), Some(error), step, Summary::default(), self.at.seconds.get()))
    }

    fn train(&self, stop_after: Option<usize>, progress: &indicatif::ProgressBar) -> Result<RunEnd> {
        let (b, p) = (self.backend, self.protocol);
        let segments = p.segments();
        self.at.set("building the model");
        let mut model = p.build_model(b, self.seed)?;
        let optimizer = self.named.config.build(b, P::store_mut(&mut model));
        let total_steps = (0..segments).map(|s| p.segment_steps(s)).sum();
        let mut trainer = Trainer::new(b, optimizer, P::store(&model), Settings { total_steps, ..p.settings() });
        let mut state = RunState {
            run: self.id.clone(),
            status: Status::Running,
            next_segment: 0,
            steps: 0,
            diverged_step: None,
            seconds: 0.0,
            scores: Vec::new(),
            counters: BTreeMap::new(),
        };
        let checkpoint = checkpoint_path(self.root, &self.id);
        if checkpoint.exists() {
            self.at.set("resuming from the checkpoint");
            state = self.restore(&checkpoint, &mut model, &mut trainer)?;
            self.at.step.set(state.steps);
            self.at.seconds.set(state.seconds);
        }
        self.at.set("settling staged records");
        records::settle(self.root, &self.id, state.next_segment)?;
        records::check_published(self.root, &self.id)?;
        let done: u64 = (0..state.next_segment.min(segments)).map(|s| p.segment_steps(s)).sum();
        match state.status {
            Status::Completed => {
                progress.inc((0..segments).map(|s| p.segment_steps(s)).sum());
                return Ok(RunEnd::Completed);
            }
            Status::Diverged => {
                progress.inc((0..segments).map(|s| p.segment_steps(s)).sum());
                return Ok(RunEnd::Diverged { step: state.diverged_step.unwrap_or(state.steps) });
            }
            Status::Running => progress.inc(done),
        }
        // A failed attempt's row goes; this attempt writes the run's row.
        records::remove_published(self.root, &schema::RUNS, &self.id)?;
        // Counters of the optimizer and backend count from here; the saved ones are added.
        let backend_base: BTreeMap<&str, f64> = b.counters().into_iter().collect();
        let saved_counters = state.counters.clone();
        let first = state.next_segment;
        for segment in first..segments {
            if stop_after.is_some_and(|n| segment - first >= n) {
                return Ok(RunEnd::Paused { segments_done: segment });
            }
            let started = Instant::now();
            let task = p.task_of(segment);
            progress.set_message(format!("{} {}", self.id, p.describe(segment)));
            let mut rec = Records::new(self.root, &self.id, segment)?;
            self.at.set("drawing the segment's batches");
            let batches = p.batches(self.seed, segment)?;
            for (k, (epoch, batch)) in batches.iter().enumerate() {
                let at = Position { run: &self.id, task, epoch: *epoch };
                self.at.step.set(trainer.steps() + 1);
                self.at.set("forward and backward");
                let loss = p.loss_and_gradients(b, &mut model, batch)?;
                self.at.set("optimizer step");
                if let Some(step) = trainer.step(b, P::store_mut(&mut model), loss, at, &mut rec)? {
                    state.seconds += started.elapsed().as_secs_f64();
                    self.finish(
                        &mut state,
                        &mut trainer,
                        (&saved_counters, &backend_base),
                        Status::Diverged,
                        Some(step),
                        segment,
                        rec,
                        &model,
                    )?;
                    return Ok(RunEnd::Diverged { step });
                }
                progress.inc(1);
                if batches.get(k + 1).is_some_and(|(next, _)| next != epoch) {
                    self.at.set("measurements at the epoch's end");
                    p.epoch_end(b, &mut model, Evaluation { run: &self.id, segment, step: trainer.steps() }, &mut rec)?;
                }
            }
            let step = trainer.steps();
            self.at.step.set(step);
            let at = Position { run: &self.id, task, epoch: 0 };
            self.at.set("spectra at the segment's end");
            trainer.segment_end_spectra(b, P::store(&model), at, &mut rec)?;
            self.at.set("evaluation");
            p.evaluate(b, &mut model, Evaluation { run: &self.id, segment, step }, &mut state.scores, &mut rec)?;
            state.seconds += started.elapsed().as_secs_f64();
            let last = segment + 1 == segments;
            let status = if last { Status::Completed } else { Status::Running };
            self.finish(&mut state, &mut trainer, (&saved_counters, &backend_base), status, None, segment, rec, &model)?;
            if last {
                return Ok(RunEnd::Completed);
            }
        }
        unreachable!("the last segment returns")
    }

    /// Ends a segment: counters and (for a finished run) the `runs` row into its
    /// records, the records staged, the checkpoint saved, the records published.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        state: &mut RunState,
        trainer: &mut Trainer<B>,
        bases: (&BTreeMap<String, f64>, &BTreeMap<&str, f64>),
        status: Status,
        diverged_step: Option<u64>,
        segment: usize,
        mut rec: Records,
        model: &P::Model,
    ) -> Result<()> {
        let b = self.backend;
        self.at.set("writing records");
        state.steps = trainer.steps();
        state.status = status;
        state.diverged_step = diverged_step;
        state.next_segment = if status == Status::Running { segment + 1 } else { self.protocol.segments() };
        let counters = self.counters(bases.0, trainer, bases.1);
        for (name, value) in &counters {
            rec.push(
                &schema::COUNTERS,
                vec![
                    ("run", self.id.as_str().into()),
                    ("step", state.steps.into()),
                    ("task", self.protocol.task_of(segment).into()),
                    ("name", name.as_str().into()),
                    ("value", (*value).into()),
                ],
            )?;
        }
        if status != Status::Running {
            let summary = if status == Status::Completed { self.protocol.summary(&state.scores) } else { Summary::default() };
            let name = if status == Status::Completed { "completed" } else { "diverged" };
            rec.push(&schema::RUNS, self.runs_row(name, diverged_step, None, None, state.steps, summary, state.seconds))?;
        }
        rec.finish()?;
        self.at.set("saving the checkpoint");
        let saved = RunState { counters, ..state.clone() };
        self.save(&saved, trainer, model, b)?;
        *state = saved;
        self.at.seconds.set(state.seconds);
        self.at.set("publishing records");
        records::settle(self.root, &self.id, state.next_segment)
    }

    /// Counters so far: those saved when this session started plus what it counted.
    fn counters(&self, saved: &BTreeMap<String, f64>, trainer: &Trainer<B>, backend_base: &BTreeMap<&str, f64>) -> BTreeMap<String, f64> {
        let at_resume = |name: &str| saved.get(name).copied().unwrap_or(0.0);
        let mut out = BTreeMap::new();
        // Update rules are rebuilt on resume and count from zero.
        let since_resume = trainer.optimizer.groups.iter().flat_map(|g| g.rule.diagnostics());
        let mut session: BTreeMap<&str, f64> = BTreeMap::new();
        for (name, value) in since_resume {
            *session.entry(name).or_default() += value;
        }
        for (name, value) in self.backend.counters() {
            *session.entry(name).or_default() += value - backend_base.get(name).copied().unwrap_or(0.0);
        }
        for (name, value) in session {
            out.insert(name.to_string(), at_resume(name) + value);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn runs_row(
        &self,
        status: &str,
        diverged_step: Option<u64>,
        failed_step: Option<u64>,
        error: Option<&str>,
        steps: u64,
        s: Summary,
        seconds: f64,
    ) -> Vec<(&'static str, Value)> {
        vec![
            ("run", self.id.as_str().into()),
            ("optimizer", self.named.label.as_str().into()),
            ("kind", self.named.config.name().into()),
            ("seed", self.seed.into()),
            ("status", status.into()),
            ("diverged_step", diverged_step.into()),
            ("failed_step", failed_step.into()),
            ("error", error.into()),
            ("steps", steps.into()),
            ("final_all_accuracy", s.final_all_accuracy.into()),
            ("average_accuracy", s.average_accuracy.into()),
            ("backward_transfer", s.backward_transfer.into()),
            ("forgetting", s.forgetting.into()),
            ("final_validation_accuracy", s.final_validation_accuracy.into()),
            ("final_validation_loss", s.final_validation_loss.into()),
            ("final_test_loss", s.final_test_loss.into()),
            ("seconds", seconds.into()),
            ("session", self.provenance.session.as_str().into()),
            ("git_commit", self.provenance.git_commit.as_str().into()),
        ]
    }

    fn save(&self, state: &RunState, trainer: &mut Trainer<B>, model: &P::Model, b: &B) -> Result<()> {
        let mut ck = Checkpoint::default();
        ck.tensors.push(("params".into(), b.download(B::all(&P::store(model).values))?));
        for g in &mut trainer.optimizer.groups {
            for (name, buf) in g.rule.state_mut() {
                ck.tensors.push((format!("optimizer.{}.{name}", g.name), b.download(B::all(buf))?));
            }
        }
        ck.metadata.insert(STATE_KEY.into(), toml::to_string(state)?);
        ck.save(&checkpoint_path(self.root, &self.id))
    }

    fn restore(&self, path: &Path, model: &mut P::Model, trainer: &mut Trainer<B>) -> Result<RunState> {
        let b = self.backend;
        let ck = Checkpoint::load(path)?;
        let state: RunState = toml::from_str(ck.meta(STATE_KEY)?).with_context(|| format!("{}: unreadable run state", path.display()))?;
        if state.run != self.id {
            bail!("{} belongs to run {:?}, not {:?}", path.display(), state.run, self.id);
        }
        let load = |dst: &mut B::Buf, name: &str| -> Result<()> {
            let src = ck.tensor(name).with_context(|| format!("{}", path.display()))?;
            if src.len() != B::len(dst) {
                return Err(anyhow!(
                    "{}: tensor {name} has {} values, the model/optimizer needs {} (was the configuration changed?)",
                    path.display(),
                    src.len(),
                    B::len(dst)
                ));
            }
            b.copy(B::all_mut(dst), B::all(&b.upload(src)));
            Ok(())
        };
        load(&mut P::store_mut(model).values, "params")?;
        for g in &mut trainer.optimizer.groups {
            for (name, buf) in g.rule.state_mut() {
                load(buf, &format!("optimizer.{}.{name}", g.name))?;
            }
        }
        trainer.optimizer.steps = state.steps;
        Ok(state)
    }
}
