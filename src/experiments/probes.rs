//! Measurements taken beside the training loop, never inside it: spectra of
//! matrices, accuracy on test sets, statistics of hidden representations.

use anyhow::Result;
use rayon::prelude::*;

use crate::backend::Backend;
use crate::data::Dataset;
use crate::metrics::{self, Spectrum};
use crate::models::{Classifier, ParamSpec, ParamStore, Representation};
use crate::optim::Capture;
use crate::record::Value;

/// Host copies of what the spectra probe decomposes, taken right after a step.
pub struct Snapshot {
    pub values: Vec<f32>,
    /// The values before the step (`values − previous` is the applied update).
    pub previous: Vec<f32>,
    /// The gradient of the step's batch.
    pub gradients: Vec<f32>,
}

impl Snapshot {
    pub fn take<B: Backend>(backend: &B, store: &ParamStore<B>, previous: &B::Buf) -> Result<Self> {
        let host = |buf| backend.download(B::all(buf));
        Ok(Self { values: host(&store.values)?, previous: host(previous)?, gradients: host(&store.grads)? })
    }
}

/// A row of a table, as `(column, value)` pairs in schema order.
pub type Row = Vec<(&'static str, Value)>;

/// Spectra rows for every weight matrix, its gradient and its applied update,
/// plus whatever the optimizer captured, decomposed in parallel.
pub fn spectra(specs: &[ParamSpec], run: &str, step: u64, task: usize, snap: &Snapshot, captures: &[Capture]) -> Result<Vec<Row>> {
    let mut jobs: Vec<(usize, &str, Vec<f32>)> = Vec::new();
    for (i, s) in specs.iter().enumerate().filter(|(_, s)| s.role.is_matrix()) {
        let r = s.range();
        jobs.push((i, "weight", snap.values[r.clone()].to_vec()));
        jobs.push((i, "gradient", snap.gradients[r.clone()].to_vec()));
        jobs.push((i, "update", snap.values[r.clone()].iter().zip(&snap.previous[r]).map(|(a, b)| a - b).collect()));
    }
    jobs.extend(captures.iter().map(|c| (c.param, c.kind, c.values.clone())));
    let spectra: Vec<Result<Spectrum>> = jobs.par_iter().map(|(i, _, m)| metrics::spectrum(m, specs[*i].rows, specs[*i].cols)).collect();
    let mut rows = Vec::with_capacity(jobs.len());
    for ((i, kind, _), s) in jobs.iter().zip(spectra) {
        let spec = &specs[*i];
        let s = s.map_err(|e| e.context(format!("singular values of {} ({kind}, {}×{})", spec.name, spec.rows, spec.cols)))?;
        rows.push(vec![
            ("run", run.into()),
            ("step", step.into()),
            ("task", task.into()),
            ("param", spec.name.as_str().into()),
            ("tensor", (*kind).into()),
            ("rows", spec.rows.into()),
            ("cols", spec.cols.into()),
            ("singular_values", s.singular_values.into()),
            ("effective_rank", s.effective_rank.into()),
            ("stable_rank", s.stable_rank.into()),
            ("spectral_norm", s.spectral_norm.into()),
            ("frobenius_norm", s.frobenius_norm.into()),
        ]);
    }
    Ok(rows)
}

/// Whether each example of `data` is classified correctly (arg-max), and the
/// model's representations of all of it (examples × width, per probed layer).
pub fn evaluate<B: Backend>(
    model: &mut dyn Classifier<B>,
    backend: &B,
    data: &Dataset,
    batch: usize,
) -> Result<(Vec<bool>, Vec<Representation>)> {
    let classes = model.classes();
    let mut kept: Vec<Representation> = Vec::new();
    let mut hits = Vec::with_capacity(data.len());
    for start in (0..data.len()).step_by(batch) {
        let end = (start + batch).min(data.len());
        let x = &data.images[start * data.pixels..end * data.pixels];
        let logits = backend.download(B::all(model.forward(backend, x, end - start)))?;
        hits.extend(logits.chunks_exact(classes).zip(&data.labels[start..end]).map(|(row, &label)| argmax(row) == usize::from(label)));
        let reps = model.representations(backend)?;
        if kept.is_empty() {
            kept = reps.iter().map(|r| Representation { values: Vec::new(), name: r.name.clone(), ..*r }).collect();
        }
        kept.iter_mut().zip(reps).for_each(|(k, r)| k.values.extend(r.values));
    }
    Ok((hits, kept))
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

pub fn accuracy_row(
    run: &str,
    after_task: usize,
    eval_task: Option<usize>,
    split: &str,
    step: u64,
    correct: usize,
    examples: usize,
) -> Row {
    vec![
        ("run", run.into()),
        ("after_task", after_task.into()),
        ("eval_task", eval_task.into()),
        ("split", split.into()),
        ("step", step.into()),
        ("accuracy", (correct as f64 / examples.max(1) as f64).into()),
        ("examples", examples.into()),
    ]
}

pub fn activation_rows(run: &str, after_task: usize, step: u64, representations: &[Representation], labels: &[u8]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (layer, r) in representations.iter().enumerate() {
        let (acts, width) = (&r.values, r.width);
        // Token rows take their example's label.
        let row_labels: Vec<u8> = labels.iter().flat_map(|&l| std::iter::repeat_n(l, r.rows_per_example)).collect();
        let covariance = (r.rows_per_example == 1).then(|| metrics::covariance(acts, width));
        let rank = covariance.as_ref().map(|c| metrics::representation_effective_rank(c, width)).transpose()?;
        rows.push(vec![
            ("run", run.into()),
            ("after_task", after_task.into()),
            ("step", step.into()),
            ("layer", (layer + 1).into()),
            ("name", r.name.as_str().into()),
            ("width", width.into()),
            ("zero_fraction", metrics::zero_fraction(acts).into()),
            ("near_zero_fraction", metrics::near_zero_fraction(acts).into()),
            ("dead_unit_fraction", metrics::dead_unit_fraction(acts, width).into()),
            ("class_cosine", metrics::class_mean_cosine(acts, width, &row_labels, 10).into()),
            ("covariance", covariance.into()),
            ("effective_rank", rank.into()),
        ]);
    }
    Ok(rows)
}
