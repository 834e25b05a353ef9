//! What the figures draw, read from the Parquet tables of one or more study
//! folders (runs of folders drawn together keep their own ids).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::DataFrame;

use crate::record::columns::{floats, ints, lists, strings};

use crate::record::{read_table, schema};

/// The optimizer label of a run id `<label>-s<seed>`.
pub(super) fn label_of(run: &str) -> &str {
    run.rsplit_once("-s").map_or(run, |(label, _)| label)
}

/// A table that not every study writes (no spectra without probes, no
/// accuracy for a language model): None when it has no parts, an error when a
/// part is unreadable, so a corrupt table is never drawn as an absent one.
fn optional_table(dir: &Path, table: &schema::Table) -> Result<Option<DataFrame>> {
    let parts = std::fs::read_dir(dir.join(table.name)).into_iter().flatten().flatten();
    let written = parts.map(|e| e.path()).any(|p| p.extension().is_some_and(|x| x == "parquet"));
    written.then(|| read_table(dir, table)).transpose()
}

/// A probed layer: its place in the model and its name.
pub(super) type Layer = (i64, String);
/// A value at each step (or task), one per seed.
pub(super) type BySeed<T> = BTreeMap<i64, Vec<T>>;
/// A stage of training: (step, task).
pub(super) type Stage = (i64, i64);
/// Singular values at each stage, one list per seed.
pub(super) type Spectra = BTreeMap<Stage, Vec<Vec<f64>>>;

/// Class-mean cosine matrices at the last evaluation, one per seed (row-major).
pub(super) struct Cosines {
    pub after: i64,
    /// The evaluation's step (its task, in folders from before steps were recorded).
    pub when: i64,
    pub seeds: Vec<Vec<f64>>,
}

/// One seed's covariance of a layer's units at the last evaluation (row-major).
pub(super) struct Covariance {
    pub after: i64,
    /// As `Cosines::when`.
    pub when: i64,
    pub seed: i64,
    pub width: usize,
    pub values: Vec<f64>,
}

#[derive(Default)]
pub(super) struct StudyData {
    /// Optimizer labels: as the studies list them, then any other run's.
    pub labels: Vec<String>,
    /// Per run: (step, loss).
    pub loss: BTreeMap<String, Vec<(i64, f64)>>,
    /// Steps at which a new task begins.
    pub boundaries: Vec<i64>,
    /// (param, label) → step → effective ranks of the weight, one per seed.
    pub ranks: BTreeMap<(String, String), BySeed<f64>>,
    /// The same for stable ranks ‖W‖_F²/‖W‖₂².
    pub stable_ranks: BTreeMap<(String, String), BySeed<f64>>,
    /// (param, label, tensor) → step → effective ranks of what moved the weight
    /// (gradient, update, Muon's direction before and after Newton-Schulz…).
    pub directions: BTreeMap<(String, String, String), BySeed<f64>>,
    /// (param, label) → (step, task) of a stage (before training, the end of
    /// each task) → the weight's singular values, one list per seed.
    pub spectra: BTreeMap<(String, String), Spectra>,
    /// label → (after, eval) → test accuracies, one per seed.
    pub accuracy: BTreeMap<String, BTreeMap<(i64, i64), Vec<f64>>>,
    /// (layer, label) → step of each evaluation → [dead units, sparsity
    /// (`metrics::sparsity`), effective rank (NaN for token layers)], one per seed.
    pub sparsity: BTreeMap<(Layer, String), BySeed<[f64; 3]>>,
    pub cosine: BTreeMap<(Layer, String), Cosines>,
    /// The lowest seed's: units of different seeds do not correspond.
    pub covariance: BTreeMap<(Layer, String), Covariance>,
}

impl StudyData {
    /// The runs of every folder in `dirs`, together.
    pub fn read(dirs: &[PathBuf]) -> Result<Self> {
        let mut data = Self::default();
        for dir in dirs {
            data.add(dir).with_context(|| format!("reading the tables of {}", dir.display()))?;
        }
        for run in data.loss.keys() {
            let label = label_of(run).to_string();
            if !data.labels.contains(&label) {
                data.labels.push(label);
            }
        }
        Ok(data)
    }

    fn add(&mut self, dir: &Path) -> Result<()> {
        // Labels in the order the study lists its optimizers.
        if let Ok((_, config)) = crate::experiments::folder::saved_config(dir) {
            let listed = config.get("optimizers").and_then(toml::Value::as_array).into_iter().flatten().filter_map(toml::Value::as_str);
            for label in listed {
                if !self.labels.iter().any(|l| l == label) {
                    self.labels.push(label.to_string());
                }
            }
        }
        let steps = read_table(dir, &schema::STEPS)?;
        let (run, step, task, loss) = (strings(&steps, "run")?, ints(&steps, "step")?, ints(&steps, "task")?, floats(&steps, "loss")?);
        let mut first_step_of_task: BTreeMap<i64, i64> = BTreeMap::new();
        for k in 0..run.len() {
            if let (Some(s), Some(t), Some(l)) = (step[k], task[k], loss[k]) {
                self.loss.entry(run[k].clone()).or_default().push((s, l));
                let e = first_step_of_task.entry(t).or_insert(s);
                *e = (*e).min(s);
            }
        }
        self.loss.values_mut().for_each(|v| v.sort_by_key(|p| p.0));
        // Studies drawn together share their protocol, so their boundaries agree.
        self.boundaries = first_step_of_task.into_iter().filter(|(t, _)| *t > 0).map(|(_, s)| s - 1).collect();
        if let Some(spectra) = optional_table(dir, &schema::SPECTRA)? {
            self.add_spectra(&spectra)?;
        }
        // (run, task) → the step of the evaluation at the task's end.
        let mut task_end: BTreeMap<(String, i64), i64> = BTreeMap::new();
        if let Some(acc) = optional_table(dir, &schema::ACCURACY)? {
            let (run, after, eval, a) =
                (strings(&acc, "run")?, ints(&acc, "after_task")?, ints(&acc, "eval_task")?, floats(&acc, "accuracy")?);
            let at = ints(&acc, "step")?;
            // Folders written before the column existed hold test rows only.
            let split = if acc.column("split").is_ok() { strings(&acc, "split")? } else { vec!["test".into(); acc.height()] };
            for k in (0..run.len()).filter(|&k| split[k] == "test") {
                if let (Some(i), Some(j), Some(v)) = (after[k], eval[k], a[k]) {
                    self.accuracy.entry(label_of(&run[k]).to_string()).or_default().entry((i, j)).or_default().push(v);
                    if let Some(s) = at[k] {
                        task_end.insert((run[k].clone(), i), s);
                    }
                }
            }
        }
        if let Some(act) = optional_table(dir, &schema::ACTIVATIONS)? {
            self.add_activations(&act, &task_end)?;
        }
        Ok(())
    }

    fn add_spectra(&mut self, sp: &DataFrame) -> Result<()> {
        let (run, step, task, param, tensor) =
            (strings(sp, "run")?, ints(sp, "step")?, ints(sp, "task")?, strings(sp, "param")?, strings(sp, "tensor")?);
        let (rank, sigma) = (floats(sp, "effective_rank")?, lists(sp, "singular_values")?);
        let stable = floats(sp, "stable_rank")?;
        // A stage ends where a run's task does: its last probe of each task.
        let mut last_of_task: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        for k in 0..run.len() {
            if let (Some(s), Some(t)) = (step[k], task[k]) {
                let e = last_of_task.entry((run[k].as_str(), t)).or_insert(s);
                *e = (*e).max(s);
            }
        }
        for k in 0..run.len() {
            let (Some(s), Some(t), Some(r)) = (step[k], task[k], rank[k]) else { continue };
            let label = label_of(&run[k]).to_string();
            if tensor[k] != "weight" {
                let key = (param[k].clone(), label, tensor[k].clone());
                self.directions.entry(key).or_default().entry(s).or_default().push(r);
                continue;
            }
            self.ranks.entry((param[k].clone(), label.clone())).or_default().entry(s).or_default().push(r);
            if let Some(sr) = stable[k] {
                self.stable_ranks.entry((param[k].clone(), label.clone())).or_default().entry(s).or_default().push(sr);
            }
            if s == 0 || last_of_task.get(&(run[k].as_str(), t)) == Some(&s) {
                self.spectra.entry((param[k].clone(), label)).or_default().entry((s, t)).or_default().push(sigma[k].clone());
            }
        }
        Ok(())
    }

    /// `task_end` gives the step of a row written before `step` was recorded.
    fn add_activations(&mut self, act: &DataFrame, task_end: &BTreeMap<(String, i64), i64>) -> Result<()> {
        let (run, after, layer, name) = (strings(act, "run")?, ints(act, "after_task")?, ints(act, "layer")?, strings(act, "name")?);
        let (zero, near, dead) = (floats(act, "zero_fraction")?, floats(act, "near_zero_fraction")?, floats(act, "dead_unit_fraction")?);
        let (cosine, width, rank) = (lists(act, "class_cosine")?, ints(act, "width")?, floats(act, "effective_rank")?);
        let (covariance, at) = (lists(act, "covariance")?, ints(act, "step")?);
        for k in 0..run.len() {
            let (Some(after), Some(layer)) = (after[k], layer[k]) else { continue };
            let Some(when) = at[k].or_else(|| task_end.get(&(run[k].clone(), after)).copied()) else { continue };
            let key = ((layer, name[k].clone()), label_of(&run[k]).to_string());
            let [zero, near, dead, rank] = [zero[k], near[k], dead[k], rank[k]].map(|v| v.unwrap_or(f64::NAN));
            let measures = [dead, crate::metrics::sparsity(zero, near), rank];
            self.sparsity.entry(key.clone()).or_default().entry(when).or_default().push(measures);
            let n = (cosine[k].len() as f64).sqrt() as usize;
            if n > 0 && n * n == cosine[k].len() {
                let entry = self.cosine.entry(key.clone()).or_insert(Cosines { after, when, seeds: Vec::new() });
                if when > entry.when {
                    *entry = Cosines { after, when, seeds: Vec::new() };
                }
                if when == entry.when {
                    entry.seeds.push(cosine[k].clone());
                }
            }
            let width = width[k].unwrap_or(0) as usize;
            if width > 0 && covariance[k].len() == width * width {
                let seed = run[k].rsplit_once("-s").and_then(|(_, s)| s.parse().ok()).unwrap_or(0);
                let values = covariance[k].clone();
                match self.covariance.get(&key) {
                    Some(c) if (c.when, -c.seed) > (when, -seed) => {}
                    _ => {
                        self.covariance.insert(key, Covariance { after, when, seed, width, values });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_give_their_label() {
        assert_eq!(super::label_of("muon-all-s12"), "muon-all");
        assert_eq!(super::label_of("sgd-s0"), "sgd");
    }
}
