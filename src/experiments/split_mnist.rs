//! The continual-learning study of Pascanu et al. (2025): train a classifier (an
//! MLP, or a ViT) on a stream of tasks with each optimizer and seed, probe
//! spectra as it trains, and after every task evaluate all tasks (the accuracy
//! matrix) and the hidden representations. One task is one segment of the
//! study driver. Shared by `exp split-mnist`, `exp vit` and the tests.

use std::path::Path;

use anyhow::{Result, ensure};
use rand::seq::SliceRandom;

use super::config::{Protocol as TaskProtocol, SplitMnistConfig};
use super::probes;
use super::records::Records;
use super::study::{Evaluation, Protocol, Summary};
use super::trainer::{BatchLoss, Settings};
use crate::backend::Backend;
use crate::data::{self, Dataset, Task, shuffled_batches};
use crate::metrics::AccuracyMatrix;
use crate::models::{Classifier, ParamStore, Representation};
use crate::random::{self, Stream};
use crate::record::schema;

/// Builds the task stream of a config from a loaded (standardized) split.
pub fn make_tasks(config: &SplitMnistConfig, split: &data::Split) -> Result<Vec<Task>> {
    Ok(match config.protocol {
        TaskProtocol::ClassIncremental => data::tasks::class_incremental(split, &config.class_groups)?,
        TaskProtocol::Permuted => data::tasks::permuted(split, config.permuted_tasks, config.permutation_seed),
        TaskProtocol::Joint => data::tasks::class_incremental(split, &[(0..10).collect()])?,
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

/// A study over a task stream: one segment per task.
pub struct SplitStudy<'a> {
    config: &'a SplitMnistConfig,
    tasks: &'a [Task],
    /// Each task's training examples (less the held-out ones, capped by `max_train_per_task`).
    train: Vec<Dataset>,
    /// Every task's test set, concatenated in task order (one evaluation pass).
    union_test: Dataset,
    /// Per task, the positions in its training set held out for validation (sorted).
    held_out: Vec<Vec<usize>>,
    /// Every task's held-out examples, in task order (empty without a validation split).
    union_validation: Dataset,
}

impl<'a> SplitStudy<'a> {
    /// Holds out `validation_fraction` of each task's training examples (chosen
    /// by `validation_seed`); fails if a task is too small for that, or if the
    /// learning-rate schedule does not fit the run's steps.
    pub fn new(config: &'a SplitMnistConfig, tasks: &'a [Task]) -> Result<Self> {
        let mut train = Vec::new();
        let mut held_out = Vec::new();
        for (k, t) in tasks.iter().enumerate() {
            let n = t.train.len();
            let held = (n as f64 * config.validation_fraction).round() as usize;
            ensure!(
                config.validation_fraction == 0.0 || (held > 0 && held < n),
                "validation_fraction {} holds out {held} of task {k}'s {n} training examples; it must leave some on each side",
                config.validation_fraction
            );
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut random::rng(config.validation_seed, Stream::Validation, k as u64));
            let (mut val, mut rest) = (order[..held].to_vec(), order[held..].to_vec());
            val.sort_unstable();
            rest.sort_unstable();
            rest.truncate(config.max_train_per_task.unwrap_or(usize::MAX));
            train.push(if held == 0 && rest.len() == n { t.train.clone() } else { t.train.subset(&rest) });
            held_out.push(val);
        }
        let union_test = Dataset::concat(&tasks.iter().map(|t| &t.test).collect::<Vec<_>>());
        let validation: Vec<Dataset> = tasks.iter().zip(&held_out).map(|(t, v)| t.train.subset(v)).collect();
        let union_validation = Dataset::concat(&validation.iter().collect::<Vec<_>>());
        let study = Self { config, tasks, train, union_test, held_out, union_validation };
        let total = (0..tasks.len()).map(|s| <Self as Protocol<crate::backend::Cpu>>::segment_steps(&study, s)).sum();
        config.schedule.validate(Some(total))?;
        Ok(study)
    }
}

impl<B: Backend> Protocol<B> for SplitStudy<'_> {
    type Model = Box<dyn Classifier<B>>;
    /// A task and indices into its training examples.
    type Batch = (usize, Vec<usize>);

    fn segments(&self) -> usize {
        self.tasks.len()
    }

    fn segment_steps(&self, segment: usize) -> u64 {
        (self.train[segment].len().div_ceil(self.config.batch_size) * self.config.epochs_per_task) as u64
    }

    fn task_of(&self, segment: usize) -> usize {
        segment
    }

    fn describe(&self, segment: usize) -> String {
        format!("task {segment} {:?}", self.tasks[segment].classes)
    }

    fn build_model(&self, backend: &B, seed: u64) -> Result<Self::Model> {
        let first = &self.train[0];
        self.config.build_model(backend, first.pixels, first.channels, seed)
    }

    fn store(model: &Self::Model) -> &ParamStore<B> {
        model.store()
    }

    fn store_mut(model: &mut Self::Model) -> &mut ParamStore<B> {
        model.store_mut()
    }

    /// Shuffled per (seed, task, epoch): a resumed run sees the same data.
    fn batches(&self, seed: u64, segment: usize) -> Result<Vec<(usize, Self::Batch)>> {
        let n = self.train[segment].len();
        Ok((0..self.config.epochs_per_task)
            .flat_map(|epoch| {
                let mut rng = random::rng(seed, Stream::DataOrder, ((segment as u64) << 16) | epoch as u64);
                shuffled_batches(n, self.config.batch_size, &mut rng).into_iter().map(move |b| (epoch, (segment, b)))
            })
            .collect())
    }

    fn loss_and_gradients(&self, backend: &B, model: &mut Self::Model, (task, batch): &Self::Batch) -> Result<BatchLoss> {
        let (x, labels) = gather(&self.train[*task], batch);
        let out = model.loss_and_gradients(backend, &x, &labels)?;
        Ok(BatchLoss { loss: out.loss, correct: out.correct, predictions: labels.len() })
    }

    /// The accuracy-matrix row after the task, the all-task accuracy, and the
    /// representations: one pass over the union of the test sets gives all;
    /// then the same rows on the validation examples, when some are held out.
    /// `scores` holds the test matrix, then the validation one.
    fn evaluate(&self, backend: &B, model: &mut Self::Model, at: Evaluation, scores: &mut Vec<f64>, records: &mut Records) -> Result<()> {
        let t = self.tasks.len();
        if scores.is_empty() {
            *scores = AccuracyMatrix::new(t).entries().repeat(if self.held_out.iter().any(|v| !v.is_empty()) { 2 } else { 1 });
        }
        let (hits, representations) = probes::evaluate(model.as_mut(), backend, &self.union_test, self.config.eval_batch)?;
        let test_sizes: Vec<usize> = self.tasks.iter().map(|task| task.test.len()).collect();
        self.accuracy_rows(&hits, &test_sizes, "test", at, &mut scores[..t * t], records)?;
        self.representation_rows(&representations, at, records)?;
        if scores.len() > t * t {
            let (hits, _) = probes::evaluate(model.as_mut(), backend, &self.union_validation, self.config.eval_batch)?;
            let sizes: Vec<usize> = self.held_out.iter().map(Vec::len).collect();
            self.accuracy_rows(&hits, &sizes, "validation", at, &mut scores[t * t..], records)?;
        }
        Ok(())
    }

    /// The representations on the test sets, when configured every epoch.
    fn epoch_end(&self, backend: &B, model: &mut Self::Model, at: Evaluation, records: &mut Records) -> Result<()> {
        if !self.config.representations_every_epoch {
            return Ok(());
        }
        let (_, representations) = probes::evaluate(model.as_mut(), backend, &self.union_test, self.config.eval_batch)?;
        self.representation_rows(&representations, at, records)
    }

    fn summary(&self, scores: &[f64]) -> Summary {
        let t = self.tasks.len();
        let r = AccuracyMatrix::from_entries(t, scores[..t * t].to_vec());
        let test_sizes: Vec<usize> = self.tasks.iter().map(|task| task.test.len()).collect();
        let validation = (scores.len() > t * t).then(|| {
            let sizes: Vec<usize> = self.held_out.iter().map(Vec::len).collect();
            union_accuracy(&AccuracyMatrix::from_entries(t, scores[t * t..].to_vec()), &sizes)
        });
        Summary {
            final_all_accuracy: Some(union_accuracy(&r, &test_sizes)),
            final_validation_accuracy: validation,
            average_accuracy: Some(r.average_accuracy()),
            backward_transfer: Some(r.backward_transfer()),
            forgetting: Some(r.forgetting()),
            final_validation_loss: None,
            final_test_loss: None,
        }
    }

    fn settings(&self) -> Settings {
        Settings { grad_clip: 0.0, probe_every: self.config.probe_every, schedule: self.config.schedule, total_steps: 0 }
    }

    /// `validation.toml`: per task, the positions in its training set (after
    /// its classes are selected, in dataset order) held out for validation.
    fn study_files(&self) -> Vec<(&'static str, String)> {
        if self.held_out.iter().all(Vec::is_empty) {
            return Vec::new();
        }
        let mut table = toml::Table::new();
        table.insert("validation_fraction".into(), self.config.validation_fraction.into());
        table.insert("validation_seed".into(), (self.config.validation_seed as i64).into());
        let tasks: Vec<toml::Value> = self.held_out.iter().map(|v| v.iter().map(|&i| i as i64).collect::<Vec<_>>().into()).collect();
        table.insert("held_out".into(), tasks.into());
        vec![("validation.toml", toml::to_string(&table).expect("a table of numbers serialises"))]
    }
}

impl SplitStudy<'_> {
    fn representation_rows(&self, representations: &[Representation], at: Evaluation, records: &mut Records) -> Result<()> {
        for row in probes::activation_rows(at.run, at.segment, at.step, representations, &self.union_test.labels)? {
            records.push(&schema::ACTIVATIONS, row)?;
        }
        Ok(())
    }

    /// One task's rows of the accuracy matrix (and the all-classes row) from the
    /// hits of one pass over a union of per-task sets of `sizes`.
    fn accuracy_rows(
        &self,
        hits: &[bool],
        sizes: &[usize],
        split: &str,
        at: Evaluation,
        matrix: &mut [f64],
        records: &mut Records,
    ) -> Result<()> {
        let t = sizes.len();
        let mut start = 0;
        for (j, &n) in sizes.iter().enumerate() {
            let c = hits[start..start + n].iter().filter(|&&h| h).count();
            start += n;
            matrix[at.segment * t + j] = c as f64 / n as f64;
            records.push(&schema::ACCURACY, probes::accuracy_row(at.run, at.segment, Some(j), split, at.step, c, n))?;
        }
        let correct = hits.iter().filter(|&&h| h).count();
        records.push(&schema::ACCURACY, probes::accuracy_row(at.run, at.segment, None, split, at.step, correct, hits.len()))
    }
}

/// Accuracy on the union of every task's set: R's last row weighted by set size.
fn union_accuracy(r: &AccuracyMatrix, sizes: &[usize]) -> f64 {
    let last = sizes.len() - 1;
    let total: usize = sizes.iter().sum();
    sizes.iter().enumerate().map(|(j, &n)| n as f64 * r.get(last, j)).sum::<f64>() / total as f64
}

/// Copies a batch of images and labels out of a dataset.
fn gather(data: &Dataset, batch: &[usize]) -> (Vec<f32>, Vec<u8>) {
    let mut x = Vec::with_capacity(batch.len() * data.pixels);
    batch.iter().for_each(|&i| x.extend_from_slice(data.image(i)));
    (x, batch.iter().map(|&i| data.labels[i]).collect())
}
