//! The continual-learning study of Pascanu et al. (2025): train an MLP on a
//! stream of tasks with each optimizer and seed, probe spectra as it trains,
//! and after every task evaluate all tasks (the accuracy matrix) and the
//! hidden representations. Shared by `exp split-mnist` and the tests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::{SeedableRng, rngs::StdRng};

use super::config::{NamedOptimizer, Protocol, SplitMnistConfig};
use super::probes::{self, Snapshot};
use crate::backend::Backend;
use crate::data::{self, Dataset, Task, shuffled_batches};
use crate::metrics::AccuracyMatrix;
use crate::models::Classifier;
use crate::optim::{Capture, Optimizer};
use crate::record::checkpoint::Checkpoint;
use crate::record::{TableWriter, schema};

/// Builds the task stream of a config from a loaded (standardized) split.
pub fn make_tasks(config: &SplitMnistConfig, split: &data::Split) -> Result<Vec<Task>> {
    Ok(match config.protocol {
        Protocol::ClassIncremental => data::tasks::class_incremental(split, &config.class_groups)?,
        Protocol::Permuted => data::tasks::permuted(split, config.permuted_tasks, config.seeds[0]),
        Protocol::Joint => data::tasks::class_incremental(split, &[(0..10).collect()])?,
    })
}

/// Loads the configured dataset (fetching and verifying it if needed) and
/// standardizes it as configured.
pub fn load_tasks(config: &SplitMnistConfig, data_dir: Option<&Path>) -> Result<Vec<Task>> {
    let mut split = data::load(config.dataset, data_dir)?;
    if config.standardize {
        let stats = config.dataset.mean_std();
        split.train.standardize(stats);
        split.test.standardize(stats);
    }
    make_tasks(config, &split)
}

/// How one run ended (or paused).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed,
    Diverged {
        step: u64,
    },
    /// Checkpointed after `stop_after` tasks; `--resume` continues it.
    Stopped,
}

/// Where a study writes: Parquet tables, checkpoints and the resolved config.
pub struct StudyDir {
    pub root: PathBuf,
}

impl StudyDir {
    fn checkpoint(&self, run: &str) -> PathBuf {
        self.root.join("checkpoints").join(format!("{run}.safetensors"))
    }
}

/// Runs every (optimizer, seed) of the study on `tasks`, writing under `out`.
/// With `resume`, runs with a checkpoint continue after their last finished task
/// and finished runs are skipped; without it, `out` must not hold a study yet.
/// `stop_after` pauses each run after that many tasks in this invocation
/// (checkpointed; for job schedulers with time limits).
#[allow(clippy::too_many_arguments)]
pub fn run_study<B: Backend>(
    backend: &B,
    config: &SplitMnistConfig,
    tasks: &[Task],
    out: &Path,
    resume: bool,
    stop_after: Option<usize>,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    let dir = StudyDir { root: out.to_path_buf() };
    let config_path = out.join("config.toml");
    if config_path.exists() && !resume {
        bail!("{} already holds a study; pass --resume to continue it or choose another --out", out.display());
    }
    std::fs::create_dir_all(out.join("checkpoints")).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(&config_path, config.to_resolved_toml()?)?;
    let optimizers = config.named_optimizers()?;
    let steps_per_run: u64 = tasks.iter().map(|t| steps_per_task(config, t)).sum();
    progress.set_length(steps_per_run * (optimizers.len() * config.seeds.len()) as u64);
    for &seed in &config.seeds {
        for named in &optimizers {
            let outcome = Run::start(backend, config, tasks, &dir, named, seed, resume)?.train(progress, stop_after)?;
            let id = format!("{}-s{seed}", named.label);
            progress.println(match outcome {
                Outcome::Completed => format!("{id}: completed"),
                Outcome::Diverged { step } => format!("{id}: diverged at step {step} (recorded; other runs go on)"),
                Outcome::Stopped => format!("{id}: stopped after {} tasks (checkpointed; --resume continues)", stop_after.unwrap_or(0)),
            });
        }
    }
    progress.finish_and_clear();
    Ok(())
}

fn steps_per_task(config: &SplitMnistConfig, task: &Task) -> u64 {
    let n = config.max_train_per_task.map_or(task.train.len(), |m| m.min(task.train.len()));
    (n.div_ceil(config.batch_size) * config.epochs_per_task) as u64
}

/// Batch order depends only on (seed, task, epoch): a resumed run sees the same data.
fn batch_rng(seed: u64, task: usize, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((task as u64) << 32 | epoch as u64))
}

/// One (optimizer, seed) run: its model, optimizer, and progress through the tasks.
struct Run<'a, B: Backend> {
    backend: &'a B,
    config: &'a SplitMnistConfig,
    tasks: &'a [Task],
    dir: &'a StudyDir,
    id: String,
    named: &'a NamedOptimizer,
    seed: u64,
    model: Box<dyn Classifier<B>>,
    optimizer: Optimizer<B>,
    accuracy: AccuracyMatrix,
    /// Every task's test set, concatenated in task order (one evaluation pass).
    union_test: Dataset,
    /// Tasks finished (and checkpointed) so far.
    next_task: usize,
    finished: Option<Outcome>,
    started: Instant,
}

impl<'a, B: Backend> Run<'a, B> {
    fn start(
        backend: &'a B,
        config: &'a SplitMnistConfig,
        tasks: &'a [Task],
        dir: &'a StudyDir,
        named: &'a NamedOptimizer,
        seed: u64,
        resume: bool,
    ) -> Result<Self> {
        let first = &tasks.first().context("no tasks")?.train;
        let model = config.build_model(backend, first.pixels, first.channels, seed)?;
        let optimizer = named.config.build(backend, model.store());
        let id = format!("{}-s{seed}", named.label);
        let mut run = Self {
            backend,
            config,
            tasks,
            dir,
            id,
            named,
            seed,
            model,
            optimizer,
            accuracy: AccuracyMatrix::new(tasks.len()),
            union_test: Dataset::concat(&tasks.iter().map(|t| &t.test).collect::<Vec<_>>()),
            next_task: 0,
            finished: None,
            started: Instant::now(),
        };
        let checkpoint = dir.checkpoint(&run.id);
        if resume && checkpoint.exists() {
            run.restore(&Checkpoint::load(&checkpoint)?).with_context(|| format!("resuming {} from {}", run.id, checkpoint.display()))?;
        }
        // Parts from an attempt that died after its last checkpoint would repeat rows.
        probes::remove_parts_from_task(&dir.root, &run.id, run.next_task, run.finished.is_some())?;
        Ok(run)
    }

    fn writers(&self, part: &str) -> Result<Writers> {
        let prefix = format!("{}-{part}", self.id);
        let w = |t| TableWriter::new(&self.dir.root, t, &prefix, usize::MAX);
        Ok(Writers {
            steps: w(&schema::STEPS)?,
            param_steps: w(&schema::PARAM_STEPS)?,
            spectra: w(&schema::SPECTRA)?,
            accuracy: w(&schema::ACCURACY)?,
            activations: w(&schema::ACTIVATIONS)?,
            counters: w(&schema::COUNTERS)?,
        })
    }

    fn train(mut self, progress: &indicatif::ProgressBar, stop_after: Option<usize>) -> Result<Outcome> {
        if let Some(outcome) = self.finished.clone() {
            progress.inc(self.tasks.iter().map(|t| steps_per_task(self.config, t)).sum());
            return Ok(outcome);
        }
        progress.inc(self.tasks[..self.next_task].iter().map(|t| steps_per_task(self.config, t)).sum());
        let b = self.backend;
        let mut previous = b.zeros(self.model.store().len());
        let first = self.next_task;
        for task_index in first..self.tasks.len() {
            if stop_after.is_some_and(|n| task_index - first >= n) {
                return Ok(Outcome::Stopped);
            }
            let task = &self.tasks[task_index];
            let mut w = self.writers(&format!("t{task_index}"))?;
            progress.set_message(format!("{} task {task_index} {:?}", self.id, task.classes));
            let train = match self.config.max_train_per_task {
                Some(m) if m < task.train.len() => task.train.subset(&(0..m).collect::<Vec<_>>()),
                _ => task.train.clone(),
            };
            for epoch in 0..self.config.epochs_per_task {
                for batch in shuffled_batches(train.len(), self.config.batch_size, &mut batch_rng(self.seed, task_index, epoch)) {
                    let step = self.optimizer.steps + 1;
                    let probe_now = self.config.probe_every > 0 && step % self.config.probe_every == 0;
                    if let Some(step) = self.step(&train, &batch, &mut previous, &mut w, task_index, epoch, probe_now)? {
                        return self.finish(w, Outcome::Diverged { step });
                    }
                    progress.inc(1);
                }
            }
            // Task boundary: spectra, the accuracy matrix row, representations.
            let step = self.optimizer.steps;
            let snap = Snapshot::take(b, self.model.store(), &previous);
            probes::spectra(&mut w.spectra, &self.model.store().specs, &self.id, step, task_index, &snap, &[])?;
            self.evaluate(&mut w, task_index)?;
            let counters = self.optimizer.groups.iter().flat_map(|g| g.rule.diagnostics()).chain(b.counters());
            for (name, value) in counters {
                w.counters.push(vec![
                    ("run", self.id.as_str().into()),
                    ("step", step.into()),
                    ("task", task_index.into()),
                    ("name", name.into()),
                    ("value", value.into()),
                ])?;
            }
            self.next_task = task_index + 1;
            let last = self.next_task == self.tasks.len();
            if last {
                return self.finish(w, Outcome::Completed);
            }
            w.flush()?;
            self.save_checkpoint(None)?;
        }
        unreachable!("the last task returns")
    }

    /// One optimizer step; returns the step number if it diverged.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        train: &Dataset,
        batch: &[usize],
        previous: &mut B::Buf,
        w: &mut Writers,
        task: usize,
        epoch: usize,
        probe_now: bool,
    ) -> Result<Option<u64>> {
        let b = self.backend;
        let (x, labels) = gather(train, batch);
        b.copy(B::all_mut(previous), B::all(&self.model.store().values));
        let out = self.model.loss_and_gradients(b, &x, &labels);
        let step = self.optimizer.steps + 1;
        let store = self.model.store();
        let grad_sq: Vec<f64> = (0..store.specs.len()).map(|i| b.sum_squares(store.grad(i))).collect();
        if !out.loss.is_finite() || !grad_sq.iter().all(|g| g.is_finite()) {
            return Ok(Some(step));
        }
        let mut captures: Option<Vec<Capture>> = probe_now.then(Vec::new);
        self.optimizer.step(b, self.model.store_mut(), 1.0, captures.as_mut());
        let store = self.model.store();
        if !b.all_finite(B::all(&store.values)) {
            return Ok(Some(step));
        }
        let mut update_total = 0.0;
        for (i, spec) in store.specs.iter().enumerate() {
            let update_sq = b.sum_squared_difference(store.value(i), B::view(previous, spec.range()));
            let param_norm = b.sum_squares(store.value(i)).sqrt();
            update_total += update_sq;
            w.param_steps.push(vec![
                ("run", self.id.as_str().into()),
                ("step", step.into()),
                ("param", spec.name.as_str().into()),
                ("group", self.optimizer.group_of(i).unwrap_or("none").into()),
                ("grad_norm", grad_sq[i].sqrt().into()),
                ("update_norm", update_sq.sqrt().into()),
                ("param_norm", param_norm.into()),
                ("update_ratio", (update_sq.sqrt() / param_norm).into()),
            ])?;
        }
        w.steps.push(vec![
            ("run", self.id.as_str().into()),
            ("step", step.into()),
            ("task", task.into()),
            ("epoch", epoch.into()),
            ("loss", out.loss.into()),
            ("batch_accuracy", (out.correct as f64 / labels.len() as f64).into()),
            ("lr", self.optimizer.groups.first().map_or(0.0, |g| g.lr).into()),
            ("grad_norm", grad_sq.iter().sum::<f64>().sqrt().into()),
            ("update_norm", update_total.sqrt().into()),
        ])?;
        if let Some(captures) = captures {
            let snap = Snapshot::take(b, store, previous);
            probes::spectra(&mut w.spectra, &self.model.store().specs, &self.id, step, task, &snap, &captures)?;
        }
        Ok(None)
    }

    /// The accuracy-matrix row after `task`, the all-task accuracy, and representations.
    /// One pass over the union of the test sets gives both.
    fn evaluate(&mut self, w: &mut Writers, task: usize) -> Result<()> {
        let step = self.optimizer.steps;
        let (hits, representations) = probes::evaluate(self.model.as_mut(), self.backend, &self.union_test, self.config.eval_batch);
        let mut start = 0;
        for (j, t) in self.tasks.iter().enumerate() {
            let n = t.test.len();
            let c = hits[start..start + n].iter().filter(|&&h| h).count();
            start += n;
            self.accuracy.set(task, j, c as f64 / n as f64);
            w.accuracy.push(probes::accuracy_row(&self.id, task, Some(j), step, c, n))?;
        }
        let correct = hits.iter().filter(|&&h| h).count();
        w.accuracy.push(probes::accuracy_row(&self.id, task, None, step, correct, hits.len()))?;
        probes::activation_rows(&mut w.activations, &self.id, task, &representations, &self.union_test.labels)
    }

    fn finish(mut self, mut w: Writers, outcome: Outcome) -> Result<Outcome> {
        let completed = outcome == Outcome::Completed;
        let summary = |v: f64| if completed { Some(v) } else { None };
        let last = self.tasks.len() - 1;
        // Accuracy on the union of all test sets: R's last row weighted by test-set size.
        let sizes: Vec<f64> = self.tasks.iter().map(|t| t.test.len() as f64).collect();
        let all_accuracy = sizes.iter().enumerate().map(|(j, n)| n * self.accuracy.get(last, j)).sum::<f64>() / sizes.iter().sum::<f64>();
        w.flush()?;
        let mut runs = TableWriter::new(&self.dir.root, &schema::RUNS, &format!("{}-final", self.id), 1)?;
        let diverged_step = match outcome {
            Outcome::Diverged { step } => Some(step),
            _ => None,
        };
        runs.push(vec![
            ("run", self.id.as_str().into()),
            ("optimizer", self.named.label.as_str().into()),
            ("kind", self.named.config.name().into()),
            ("seed", self.seed.into()),
            ("status", if completed { "completed" } else { "diverged" }.into()),
            ("diverged_step", diverged_step.into()),
            ("steps", self.optimizer.steps.into()),
            ("final_all_accuracy", summary(all_accuracy).into()),
            ("average_accuracy", summary(self.accuracy.average_accuracy()).into()),
            ("backward_transfer", summary(self.accuracy.backward_transfer()).into()),
            ("forgetting", summary(self.accuracy.forgetting()).into()),
            ("seconds", self.started.elapsed().as_secs_f64().into()),
        ])?;
        self.next_task = self.tasks.len();
        self.save_checkpoint(Some(&outcome))?;
        Ok(outcome)
    }
}

impl<B: Backend> Run<'_, B> {
    fn save_checkpoint(&mut self, outcome: Option<&Outcome>) -> Result<()> {
        let b = self.backend;
        let mut ck = Checkpoint::default();
        ck.tensors.push(("params".into(), b.download(B::all(&self.model.store().values))));
        for g in &mut self.optimizer.groups {
            for (name, buf) in g.rule.state_mut() {
                ck.tensors.push((format!("optimizer.{}.{name}", g.name), b.download(B::all(buf))));
            }
        }
        let t = self.tasks.len();
        ck.tensors.push(("accuracy".into(), (0..t * t).map(|k| self.accuracy.get(k / t, k % t) as f32).collect()));
        let status = match outcome {
            None => "running".to_string(),
            Some(Outcome::Completed) => "completed".to_string(),
            Some(Outcome::Diverged { step }) => format!("diverged@{step}"),
            Some(Outcome::Stopped) => unreachable!("a stopped run is saved as running"),
        };
        for (k, v) in [
            ("run", self.id.clone()),
            ("next_task", self.next_task.to_string()),
            ("steps", self.optimizer.steps.to_string()),
            ("status", status),
        ] {
            ck.metadata.insert(k.into(), v);
        }
        ck.save(&self.dir.checkpoint(&self.id))
    }

    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let b = self.backend;
        if ck.meta("run")? != self.id {
            bail!("checkpoint belongs to run {:?}", ck.meta("run")?);
        }
        let load = |dst: &mut B::Buf, src: &[f32], name: &str| -> Result<()> {
            if src.len() != B::len(dst) {
                bail!("tensor {name} has {} values, the model/optimizer needs {} (was the config changed?)", src.len(), B::len(dst));
            }
            b.copy(B::all_mut(dst), B::all(&b.upload(src)));
            Ok(())
        };
        load(&mut self.model.store_mut().values, ck.tensor("params")?, "params")?;
        for g in &mut self.optimizer.groups {
            for (name, buf) in g.rule.state_mut() {
                let key = format!("optimizer.{}.{name}", g.name);
                load(buf, ck.tensor(&key)?, &key)?;
            }
        }
        let t = self.tasks.len();
        let acc = ck.tensor("accuracy")?;
        if acc.len() != t * t {
            bail!("checkpoint has an accuracy matrix for {} tasks, the study has {t}", (acc.len() as f64).sqrt());
        }
        acc.iter().enumerate().for_each(|(k, &a)| self.accuracy.set(k / t, k % t, f64::from(a)));
        self.next_task = ck.meta("next_task")?.parse()?;
        self.optimizer.steps = ck.meta("steps")?.parse()?;
        self.finished = match ck.meta("status")? {
            "running" => None,
            "completed" => Some(Outcome::Completed),
            s => Some(Outcome::Diverged { step: s.trim_start_matches("diverged@").parse()? }),
        };
        Ok(())
    }
}

/// The rows of one task part, flushed together at the task boundary.
struct Writers {
    steps: TableWriter,
    param_steps: TableWriter,
    spectra: TableWriter,
    accuracy: TableWriter,
    activations: TableWriter,
    counters: TableWriter,
}

impl Writers {
    fn flush(&mut self) -> Result<()> {
        for w in [&mut self.steps, &mut self.param_steps, &mut self.spectra, &mut self.accuracy, &mut self.activations, &mut self.counters]
        {
            w.flush()?;
        }
        Ok(())
    }
}

/// Copies a batch of images and labels out of a dataset.
fn gather(data: &Dataset, batch: &[usize]) -> (Vec<f32>, Vec<u8>) {
    let mut x = Vec::with_capacity(batch.len() * data.pixels);
    batch.iter().for_each(|&i| x.extend_from_slice(data.image(i)));
    (x, batch.iter().map(|&i| data.labels[i]).collect())
}
