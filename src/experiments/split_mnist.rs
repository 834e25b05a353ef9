//! The continual-learning study of Pascanu et al. (2025): train a classifier (an
//! MLP, or a ViT) on a stream of tasks with each optimizer and seed, probe
//! spectra as it trains, and after every task evaluate all tasks (the accuracy
//! matrix) and the hidden representations. One task is one segment of the
//! study driver. Shared by `exp split-mnist`, `exp vit` and the tests.

use std::path::Path;

use anyhow::Result;

use super::config::{Protocol as TaskProtocol, SplitMnistConfig};
use super::probes;
use super::records::Records;
use super::study::{Evaluation, Protocol, Summary};
use super::trainer::{BatchLoss, Settings};
use crate::backend::Backend;
use crate::data::{self, Dataset, Task, shuffled_batches};
use crate::metrics::AccuracyMatrix;
use crate::models::{Classifier, ParamStore};
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
    /// Each task's training examples (capped by `max_train_per_task`).
    train: Vec<Dataset>,
    /// Every task's test set, concatenated in task order (one evaluation pass).
    union_test: Dataset,
}

impl<'a> SplitStudy<'a> {
    /// Fails if the learning-rate schedule does not fit the run's steps.
    pub fn new(config: &'a SplitMnistConfig, tasks: &'a [Task]) -> Result<Self> {
        let train = tasks
            .iter()
            .map(|t| match config.max_train_per_task {
                Some(m) if m < t.train.len() => t.train.subset(&(0..m).collect::<Vec<_>>()),
                _ => t.train.clone(),
            })
            .collect();
        let union_test = Dataset::concat(&tasks.iter().map(|t| &t.test).collect::<Vec<_>>());
        let study = Self { config, tasks, train, union_test };
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
        let out = model.loss_and_gradients(backend, &x, &labels);
        Ok(BatchLoss { loss: out.loss, correct: out.correct, predictions: labels.len() })
    }

    /// The accuracy-matrix row after the task, the all-task accuracy, and the
    /// representations: one pass over the union of the test sets gives all.
    fn evaluate(&self, backend: &B, model: &mut Self::Model, at: Evaluation, scores: &mut Vec<f64>, records: &mut Records) -> Result<()> {
        let t = self.tasks.len();
        if scores.is_empty() {
            *scores = AccuracyMatrix::new(t).entries().to_vec();
        }
        let (hits, representations) = probes::evaluate(model.as_mut(), backend, &self.union_test, self.config.eval_batch);
        let mut start = 0;
        for (j, task) in self.tasks.iter().enumerate() {
            let n = task.test.len();
            let c = hits[start..start + n].iter().filter(|&&h| h).count();
            start += n;
            scores[at.segment * t + j] = c as f64 / n as f64;
            records.push(&schema::ACCURACY, probes::accuracy_row(at.run, at.segment, Some(j), at.step, c, n))?;
        }
        let correct = hits.iter().filter(|&&h| h).count();
        records.push(&schema::ACCURACY, probes::accuracy_row(at.run, at.segment, None, at.step, correct, hits.len()))?;
        for row in probes::activation_rows(at.run, at.segment, &representations, &self.union_test.labels) {
            records.push(&schema::ACTIVATIONS, row)?;
        }
        Ok(())
    }

    fn summary(&self, scores: &[f64]) -> Summary {
        let t = self.tasks.len();
        let r = AccuracyMatrix::from_entries(t, scores.to_vec());
        // Accuracy on the union of all test sets: R's last row weighted by test-set size.
        let sizes: Vec<f64> = self.tasks.iter().map(|task| task.test.len() as f64).collect();
        let all = sizes.iter().enumerate().map(|(j, n)| n * r.get(t - 1, j)).sum::<f64>() / sizes.iter().sum::<f64>();
        Summary {
            final_all_accuracy: Some(all),
            average_accuracy: Some(r.average_accuracy()),
            backward_transfer: Some(r.backward_transfer()),
            forgetting: Some(r.forgetting()),
            final_validation_loss: None,
        }
    }

    fn settings(&self) -> Settings {
        Settings { grad_clip: 0.0, probe_every: self.config.probe_every, schedule: self.config.schedule, total_steps: 0 }
    }
}

/// Copies a batch of images and labels out of a dataset.
fn gather(data: &Dataset, batch: &[usize]) -> (Vec<f32>, Vec<u8>) {
    let mut x = Vec::with_capacity(batch.len() * data.pixels);
    batch.iter().for_each(|&i| x.extend_from_slice(data.image(i)));
    (x, batch.iter().map(|&i| data.labels[i]).collect())
}
