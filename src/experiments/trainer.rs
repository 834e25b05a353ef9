//! One optimizer step as every study takes it, and what it records.
//!
//! The model has already left the gradients of a batch in its store; the
//! trainer checks them, clips them, steps the optimizer, checks the result, and
//! writes the `steps` and `param_steps` rows and, on probe steps, the spectra.
//! Every study (split-MNIST, ViT, GPT) goes through this one function, so they
//! agree on what divergence is and on what a step records.

use anyhow::{Context, Result};

use super::probes::{self, Snapshot};
use super::records::Records;
use crate::backend::Backend;
use crate::models::ParamStore;
use crate::optim::{Capture, Optimizer, Schedule};
use crate::record::schema;

/// A batch's loss as the model computed it.
#[derive(Clone, Copy, Debug)]
pub struct BatchLoss {
    pub loss: f32,
    /// Predictions that matched their label (tokens for a language model).
    pub correct: usize,
    /// Predictions made.
    pub predictions: usize,
}

/// Where in its run a step is.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    pub run: &'a str,
    pub task: usize,
    pub epoch: usize,
}

/// How a study trains: the knobs the trainer applies at every step.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Gradients whose global L2 norm exceeds this are scaled down to it (0: never).
    pub grad_clip: f32,
    /// Spectra every this many steps and at step 1 (0: never).
    pub probe_every: u64,
    pub schedule: Schedule,
    /// Steps of the whole run.
    pub total_steps: u64,
}

pub struct Trainer<B: Backend> {
    pub optimizer: Optimizer<B>,
    /// Parameters before the current step (the applied update is the difference).
    previous: B::Buf,
    /// Gradients whose global L2 norm exceeds this are scaled down to it (0: never).
    grad_clip: f32,
    /// Spectra every this many steps and at step 1 (0: never).
    probe_every: u64,
    /// Whether the last step taken was probed (a segment end then needs no second probe).
    probed_last: bool,
    schedule: Schedule,
    /// Steps of the whole run (where the schedule's decay ends).
    total_steps: u64,
}

impl<B: Backend> Trainer<B> {
    pub fn new(backend: &B, optimizer: Optimizer<B>, store: &ParamStore<B>, settings: Settings) -> Self {
        let Settings { grad_clip, probe_every, schedule, total_steps } = settings;
        Self { optimizer, previous: backend.zeros(store.len()), grad_clip, probe_every, probed_last: false, schedule, total_steps }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps
    }

    /// Takes one step from the gradients in `store`. Returns `Some(step)` when the
    /// loss, the gradient or the new parameters are not finite (the run diverged).
    pub fn step(&mut self, b: &B, store: &mut ParamStore<B>, loss: BatchLoss, at: Position, records: &mut Records) -> Result<Option<u64>> {
        let step = self.optimizer.steps + 1;
        let grad_sq: Vec<f64> = (0..store.specs.len()).map(|i| b.sum_squares(store.grad(i))).collect::<Result<_>>()?;
        let grad_norm = grad_sq.iter().sum::<f64>().sqrt();
        if !loss.loss.is_finite() || !grad_norm.is_finite() {
            return Ok(Some(step));
        }
        if self.grad_clip > 0.0 && grad_norm > f64::from(self.grad_clip) {
            b.scale(B::all_mut(&mut store.grads), (f64::from(self.grad_clip) / grad_norm) as f32);
        }
        b.copy(B::all_mut(&mut self.previous), B::all(&store.values));
        let probe = self.probe_every > 0 && (step == 1 || step.is_multiple_of(self.probe_every));
        let mut captures: Option<Vec<Capture>> = probe.then(Vec::new);
        let factor = self.schedule.factor(step, self.total_steps) as f32;
        self.optimizer.step(b, store, factor, captures.as_mut())?;
        if !b.all_finite(B::all(&store.values))? {
            return Ok(Some(step));
        }
        let mut update_total = 0.0;
        for (i, spec) in store.specs.iter().enumerate() {
            let update_sq = b.sum_squared_difference(store.value(i), B::view(&self.previous, spec.range()))?;
            let param_norm = b.sum_squares(store.value(i))?.sqrt();
            update_total += update_sq;
            records.push(
                &schema::PARAM_STEPS,
                vec![
                    ("run", at.run.into()),
                    ("step", step.into()),
                    ("param", spec.name.as_str().into()),
                    ("group", self.optimizer.group_of(i).unwrap_or("none").into()),
                    ("grad_norm", grad_sq[i].sqrt().into()),
                    ("update_norm", update_sq.sqrt().into()),
                    ("param_norm", param_norm.into()),
                    ("update_ratio", (update_sq.sqrt() / param_norm).into()),
                ],
            )?;
        }
        for report in self.optimizer.groups.iter().flat_map(|g| g.rule.last_step()) {
            records.push(
                &schema::OPTIMIZER_STEPS,
                vec![
                    ("run", at.run.into()),
                    ("step", step.into()),
                    ("param", store.specs[report.param].name.as_str().into()),
                    ("name", report.name.into()),
                    ("value", report.value.into()),
                ],
            )?;
        }
        records.push(
            &schema::STEPS,
            vec![
                ("run", at.run.into()),
                ("step", step.into()),
                ("task", at.task.into()),
                ("epoch", at.epoch.into()),
                ("loss", loss.loss.into()),
                ("batch_accuracy", (loss.correct as f64 / loss.predictions.max(1) as f64).into()),
                ("lr", self.optimizer.groups.first().map_or(0.0, |g| g.lr * factor).into()),
                ("grad_norm", grad_norm.into()),
                ("update_norm", update_total.sqrt().into()),
            ],
        )?;
        self.probed_last = probe;
        if let Some(captures) = captures {
            self.spectra(b, store, at, records, &captures).context("spectra probe")?;
        }
        Ok(None)
    }

    /// Spectra at the end of a segment (a task boundary, an evaluation), unless
    /// the last step was already probed.
    pub fn segment_end_spectra(&mut self, b: &B, store: &ParamStore<B>, at: Position, records: &mut Records) -> Result<()> {
        if self.probed_last {
            return Ok(());
        }
        self.probed_last = true;
        self.spectra(b, store, at, records, &[]).context("spectra probe at the segment's end")
    }

    fn spectra(&self, b: &B, store: &ParamStore<B>, at: Position, records: &mut Records, captures: &[Capture]) -> Result<()> {
        let snap = Snapshot::take(b, store, &self.previous)?;
        let rows = probes::spectra(&store.specs, at.run, self.optimizer.steps, at.task, &snap, captures)?;
        rows.into_iter().try_for_each(|row| records.push(&schema::SPECTRA, row))
    }
}
