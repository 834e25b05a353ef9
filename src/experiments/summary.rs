//! The study's closing table, computed from the Parquet files read back (so
//! `exp report DIR` on a finished or half-finished study prints the same thing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::folder::saved_config;
use super::study::{Status, run_id, saved_state};
use crate::metrics::Interval;
use crate::record::columns::{floats, ints, lists, strings};
use crate::record::{read_table, read_tables, schema};

/// The report of any study folder, finished or not: its summary table (from
/// the runs that finished) and the runs still missing, with how far each got.
pub fn report(dir: &Path) -> Result<String> {
    let (kind, config) = saved_config(dir)?;
    let labels: Vec<String> = config
        .get("optimizers")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let seeds: Vec<u64> = config
        .get("seeds")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_integer())
        .map(|s| s as u64)
        .collect();
    let has_runs = dir.join(schema::RUNS.name).read_dir().is_ok_and(|mut d| d.next().is_some());
    let mut out = if !has_runs {
        String::from("no run has finished yet\n")
    } else if kind == "gpt" {
        render_gpt(&[dir.to_path_buf()], &labels)?
    } else {
        render(&summarize(dir, &labels)?)
    };
    let finished: Vec<String> = if has_runs { strings(&read_table(dir, &schema::RUNS)?, "run")? } else { Vec::new() };
    let mut missing = Vec::new();
    for seed in &seeds {
        for label in &labels {
            let id = run_id(label, *seed);
            if finished.contains(&id) {
                continue;
            }
            missing.push(match saved_state(dir, &id) {
                Ok(Some(s)) if s.status == Status::Running => {
                    format!("{id} (checkpointed at step {}, {} segments done)", s.steps, s.next_segment)
                }
                Ok(_) => format!("{id} (not started)"),
                Err(e) => format!("{id} (checkpoint unreadable: {e:#})"),
            });
        }
    }
    if !missing.is_empty() {
        writeln!(out, "missing runs ({} of {}): {}", missing.len(), labels.len() * seeds.len(), missing.join(", "))?;
    }
    Ok(out)
}

/// Per optimizer label, aggregated over seeds (completed runs only).
#[derive(Clone, Debug)]
pub struct OptimizerSummary {
    pub label: String,
    pub runs: usize,
    pub diverged: usize,
    pub failed: usize,
    /// Final accuracy on all classes: mean and 95% interval over completed runs.
    pub final_all: Interval,
    /// Mean training loss over each run's last epoch (of its last task).
    pub train_loss: Interval,
    /// R[T−1][j] averaged over seeds: accuracy on each task after the last one.
    pub per_task: Vec<f64>,
    pub backward_transfer: Interval,
    pub forgetting: Interval,
    /// Effective rank of each weight matrix at the last probe, averaged over seeds.
    pub effective_rank: Vec<(String, f64)>,
    /// Each probed representation after the last task.
    pub representations: Vec<RepresentationSummary>,
    /// Each completed seed's final accuracy and forgetting (for paired differences).
    pub by_seed: BTreeMap<u64, (f64, f64)>,
}

/// One probed representation (`fc1`, `cls`, …) after the last task, over completed runs.
#[derive(Clone, Debug)]
pub struct RepresentationSummary {
    pub name: String,
    /// Effective rank of the centered representations (per-example layers only).
    pub effective_rank: Interval,
    /// Mean and standard deviation of the off-diagonal class-mean cosines:
    /// Pascanu et al. (2025, Figure 4) find them lower and more varied under Shampoo.
    pub cosine_mean: Interval,
    pub cosine_sd: Interval,
    pub dead_units: Interval,
    /// Fraction of activations that are off (`metrics::sparsity`).
    pub sparsity: Interval,
}

/// What one run's `activations` row says of a representation.
struct RepresentationRow {
    name: String,
    effective_rank: Option<f64>,
    /// Off-diagonal class-mean cosines: mean and standard deviation.
    cosine: (f64, f64),
    dead_units: Option<f64>,
    sparsity: f64,
}

/// Mean and standard deviation of the finite off-diagonal entries of a
/// row-major square matrix (NaN when there are none).
fn off_diagonal_mean_sd(m: &[f64]) -> (f64, f64) {
    let n = (m.len() as f64).sqrt() as usize;
    let xs: Vec<f64> = (0..n * n).filter(|&k| k / n != k % n).map(|k| m[k]).filter(|v| v.is_finite()).collect();
    let mu = mean(&xs);
    (mu, (xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / xs.len() as f64).sqrt())
}

/// Per run, the items recorded at its largest key (a step, a task): later keys
/// replace earlier ones.
struct Latest<'a, T>(BTreeMap<&'a str, (i64, Vec<T>)>);

impl<T> Default for Latest<'_, T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<'a, T> Latest<'a, T> {
    fn add(&mut self, run: &'a str, key: i64, item: T) {
        let entry = self.0.entry(run).or_insert((key, Vec::new()));
        if key > entry.0 {
            *entry = (key, Vec::new());
        }
        if key == entry.0 {
            entry.1.push(item);
        }
    }

    fn get(&self, run: &str) -> &[T] {
        self.0.get(run).map_or(&[], |(_, items)| items.as_slice())
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// `mean ± half-width` of a 95% interval; the mean alone for one value; — for none.
fn interval(i: Interval, digits: usize) -> String {
    match i.n {
        0 => "—".into(),
        1 => format!("{:.digits$}", i.mean),
        _ => format!("{:.digits$} ± {:.digits$}", i.mean, i.half_width),
    }
}

/// For every pair of labels with at least two seeds in common, the paired
/// difference `a − b` over those seeds with its 95% interval; `*` marks an
/// interval that excludes 0.
fn paired_differences(metric: &str, values: &[(String, BTreeMap<u64, f64>)]) -> String {
    let mut out = String::new();
    for (i, (a, va)) in values.iter().enumerate() {
        for (b, vb) in &values[i + 1..] {
            let common: Vec<u64> = va.keys().filter(|s| vb.contains_key(s)).copied().collect();
            if common.len() < 2 {
                continue;
            }
            let d = Interval::paired(&common.iter().map(|s| va[s]).collect::<Vec<_>>(), &common.iter().map(|s| vb[s]).collect::<Vec<_>>());
            let mark = if d.sign() != 0 { "*" } else { "" };
            let pair = format!("{a} − {b}");
            writeln!(
                out,
                "  {pair:<24} {:+.4} [{:+.4}, {:+.4}] over {} seeds{mark}",
                d.mean,
                d.mean - d.half_width,
                d.mean + d.half_width,
                d.n
            )
            .unwrap();
        }
    }
    if out.is_empty() { out } else { format!("{metric}, paired by seed (row − column, 95% interval; * excludes 0):\n{out}") }
}

/// Summaries in the order labels appear in `order` (then any others, sorted).
pub fn summarize(dir: &Path, order: &[String]) -> Result<Vec<OptimizerSummary>> {
    let runs = read_table(dir, &schema::RUNS)?;
    let (run_ids, labels, status) = (strings(&runs, "run")?, strings(&runs, "optimizer")?, strings(&runs, "status")?);
    let seeds = ints(&runs, "seed")?;
    let (final_all, bwt, forgetting) =
        (floats(&runs, "final_all_accuracy")?, floats(&runs, "backward_transfer")?, floats(&runs, "forgetting")?);

    // Last row of R and last weight spectra, per run.
    let acc = read_table(dir, &schema::ACCURACY)?;
    let (a_run, a_after, a_eval, a_acc) =
        (strings(&acc, "run")?, ints(&acc, "after_task")?, ints(&acc, "eval_task")?, floats(&acc, "accuracy")?);
    // Folders written before the column existed hold test rows only.
    let a_split = if acc.column("split").is_ok() { strings(&acc, "split")? } else { vec!["test".into(); acc.height()] };
    let mut last_row = Latest::default();
    for k in (0..a_run.len()).filter(|&k| a_split[k] == "test") {
        if let (Some(after), Some(eval), Some(a)) = (a_after[k], a_eval[k], a_acc[k]) {
            last_row.add(&a_run[k], after, (eval, a));
        }
    }
    let spectra = read_table(dir, &schema::SPECTRA)?;
    let (s_run, s_step, s_param, s_tensor, s_rank) = (
        strings(&spectra, "run")?,
        ints(&spectra, "step")?,
        strings(&spectra, "param")?,
        strings(&spectra, "tensor")?,
        floats(&spectra, "effective_rank")?,
    );
    let mut last_ranks = Latest::default();
    for k in (0..s_run.len()).filter(|&k| s_tensor[k] == "weight") {
        if let (Some(step), Some(rank)) = (s_step[k], s_rank[k]) {
            last_ranks.add(&s_run[k], step, (s_param[k].clone(), rank));
        }
    }
    let steps = read_table(dir, &schema::STEPS)?;
    let (t_run, t_task, t_epoch, t_loss) =
        (strings(&steps, "run")?, ints(&steps, "task")?, ints(&steps, "epoch")?, floats(&steps, "loss")?);
    let mut last_epoch = Latest::default();
    for k in 0..t_run.len() {
        if let (Some(task), Some(epoch), Some(loss)) = (t_task[k], t_epoch[k], t_loss[k]) {
            last_epoch.add(&t_run[k], (task << 32) + epoch, loss);
        }
    }
    let acts = read_table(dir, &schema::ACTIVATIONS)?;
    let (r_run, r_after, r_name) = (strings(&acts, "run")?, ints(&acts, "after_task")?, strings(&acts, "name")?);
    let (r_cosine, r_dead) = (lists(&acts, "class_cosine")?, floats(&acts, "dead_unit_fraction")?);
    let (r_zero, r_near) = (floats(&acts, "zero_fraction")?, floats(&acts, "near_zero_fraction")?);
    // Null in folders written before the columns existed (one row per layer
    // and task then, so the task orders them).
    let (r_rank, r_step) = (floats(&acts, "effective_rank")?, ints(&acts, "step")?);
    let mut last_reps: Latest<RepresentationRow> = Latest::default();
    for k in 0..r_run.len() {
        if let Some(when) = r_step[k].or(r_after[k]) {
            let sparsity = crate::metrics::sparsity(r_zero[k].unwrap_or(f64::NAN), r_near[k].unwrap_or(f64::NAN));
            let row = RepresentationRow {
                name: r_name[k].clone(),
                effective_rank: r_rank[k],
                cosine: off_diagonal_mean_sd(&r_cosine[k]),
                dead_units: r_dead[k],
                sparsity,
            };
            last_reps.add(&r_run[k], when, row);
        }
    }

    let mut ordered: Vec<String> = order.iter().filter(|l| labels.contains(l)).cloned().collect();
    let mut rest: Vec<String> = labels.iter().filter(|l| !ordered.contains(l)).cloned().collect();
    rest.sort();
    rest.dedup();
    ordered.extend(rest);

    Ok(ordered
        .into_iter()
        .map(|label| {
            let rows: Vec<usize> = (0..labels.len()).filter(|&k| labels[k] == label).collect();
            let done: Vec<usize> = rows.iter().copied().filter(|&k| status[k] == "completed").collect();
            let collect = |col: &[Option<f64>]| Interval::of(&done.iter().filter_map(|&k| col[k]).collect::<Vec<_>>());
            let tasks = done.iter().map(|&k| last_row.get(&run_ids[k]).len()).max().unwrap_or(0);
            let accuracy_on = |k: usize, j: usize| last_row.get(&run_ids[k]).iter().find(|(eval, _)| *eval == j as i64).map(|(_, a)| *a);
            let per_task = (0..tasks).map(|j| mean(&done.iter().filter_map(|&k| accuracy_on(k, j)).collect::<Vec<_>>())).collect();
            let mut ranks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for &k in &done {
                for (param, r) in last_ranks.get(&run_ids[k]) {
                    ranks.entry(param.clone()).or_default().push(*r);
                }
            }
            // In the order the layers were probed.
            let mut reps: Vec<(String, Vec<&RepresentationRow>)> = Vec::new();
            for row in done.iter().flat_map(|&k| last_reps.get(&run_ids[k])) {
                match reps.iter_mut().find(|(name, _)| *name == row.name) {
                    Some((_, rows)) => rows.push(row),
                    None => reps.push((row.name.clone(), vec![row])),
                }
            }
            let over = |rows: &[&RepresentationRow], pick: fn(&RepresentationRow) -> Option<f64>| {
                Interval::of(&rows.iter().filter_map(|r| pick(r)).filter(|v| v.is_finite()).collect::<Vec<_>>())
            };
            let representations = reps
                .into_iter()
                .map(|(name, rows)| RepresentationSummary {
                    name,
                    effective_rank: over(&rows, |r| r.effective_rank),
                    cosine_mean: over(&rows, |r| Some(r.cosine.0)),
                    cosine_sd: over(&rows, |r| Some(r.cosine.1)),
                    dead_units: over(&rows, |r| r.dead_units),
                    sparsity: over(&rows, |r| Some(r.sparsity)),
                })
                .collect();
            let by_seed = done.iter().filter_map(|&k| Some((seeds[k]? as u64, (final_all[k]?, forgetting[k]?)))).collect();
            OptimizerSummary {
                label,
                runs: rows.len(),
                diverged: rows.iter().filter(|&&k| status[k] == "diverged").count(),
                failed: rows.iter().filter(|&&k| status[k] == "failed").count(),
                final_all: collect(&final_all),
                train_loss: Interval::of(
                    &done.iter().map(|&k| mean(last_epoch.get(&run_ids[k]))).filter(|l| l.is_finite()).collect::<Vec<_>>(),
                ),
                per_task,
                backward_transfer: collect(&bwt),
                forgetting: collect(&forgetting),
                effective_rank: ranks.into_iter().map(|(p, rs)| (p, mean(&rs))).collect(),
                representations,
                by_seed,
            }
        })
        .collect())
}

/// `5`, or `5(1d,1f)` with diverged and failed runs.
fn run_count(runs: usize, diverged: usize, failed: usize) -> String {
    match (diverged, failed) {
        (0, 0) => runs.to_string(),
        (d, 0) => format!("{runs}({d}d)"),
        (0, f) => format!("{runs}({f}f)"),
        (d, f) => format!("{runs}({d}d,{f}f)"),
    }
}

/// A plain-text table, one line per optimizer (± is a 95% interval over seeds),
/// then the paired differences between optimizers.
pub fn render(summaries: &[OptimizerSummary]) -> String {
    let tasks = summaries.iter().map(|s| s.per_task.len()).max().unwrap_or(0);
    let params: Vec<String> =
        summaries.first().map(|s| s.effective_rank.iter().map(|(p, _)| p.replace(".weight", "")).collect()).unwrap_or_default();
    // Long preset labels widen the first column rather than shift the rest.
    let w = summaries.iter().map(|s| s.label.len()).max().unwrap_or(0).max(12);
    // One task (joint training) has nothing to forget.
    let sequential = tasks > 1;
    let mut out = format!("{:<w$} {:>9} {:>17} {:>17}", "optimizer", "runs", "final acc (all)", "train loss");
    (0..tasks).for_each(|j| write!(out, " {:>6}", format!("T{j}")).unwrap());
    if sequential {
        write!(out, " {:>17} {:>17}", "BWT", "forgetting").unwrap();
    }
    params.iter().for_each(|p| write!(out, " {:>9}", format!("erank:{p}")).unwrap());
    out.push('\n');
    for s in summaries {
        let runs = run_count(s.runs, s.diverged, s.failed);
        write!(out, "{:<w$} {:>9} {:>17} {:>17}", s.label, runs, interval(s.final_all, 4), interval(s.train_loss, 4)).unwrap();
        (0..tasks).for_each(|j| write!(out, " {:>6}", s.per_task.get(j).map_or("—".into(), |a| format!("{a:.3}"))).unwrap());
        if sequential {
            write!(out, " {:>17} {:>17}", interval(s.backward_transfer, 4), interval(s.forgetting, 4)).unwrap();
        }
        s.effective_rank.iter().for_each(|(_, r)| write!(out, " {r:>9.1}").unwrap());
        out.push('\n');
    }
    out += &render_representations(summaries, w);
    let metric = |pick: fn(&(f64, f64)) -> f64| -> Vec<(String, BTreeMap<u64, f64>)> {
        summaries.iter().map(|s| (s.label.clone(), s.by_seed.iter().map(|(seed, v)| (*seed, pick(v))).collect())).collect()
    };
    out += &paired_differences("final accuracy (all)", &metric(|v| v.0));
    if sequential {
        out += &paired_differences("forgetting", &metric(|v| v.1));
    }
    out
}

/// Each optimizer's representations after the last task: effective rank,
/// class-mean cosine (mean and spread of the off-diagonal), dead units, and
/// the fraction of activations that are off.
fn render_representations(summaries: &[OptimizerSummary], w: usize) -> String {
    if summaries.iter().all(|s| s.representations.is_empty()) {
        return String::new();
    }
    let lw = summaries.iter().flat_map(|s| &s.representations).map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let mut out = format!("representations after the last task (± 95% interval over seeds):\n{:<w$} {:<lw$}", "optimizer", "layer");
    writeln!(out, " {:>15} {:>17} {:>17} {:>17} {:>17}", "effective rank", "class cos mean", "class cos sd", "dead units", "sparsity")
        .unwrap();
    for s in summaries {
        for r in &s.representations {
            write!(out, "{:<w$} {:<lw$} {:>15}", s.label, r.name, interval(r.effective_rank, 1)).unwrap();
            let (cos_mean, cos_sd) = (interval(r.cosine_mean, 4), interval(r.cosine_sd, 4));
            writeln!(out, " {cos_mean:>17} {cos_sd:>17} {:>17} {:>17}", interval(r.dead_units, 4), interval(r.sparsity, 4)).unwrap();
        }
    }
    out
}

/// The GPT study's table: per optimizer, held-out bits per byte (validation's,
/// and the test split's when the study has one) and the effective rank of
/// gradients and updates by matrix kind (each run's mean over layers), first
/// probe → last, with 95% intervals over seeds; then the paired differences of
/// bits per byte and of each last gradient rank. Several folders (a sweep's
/// reruns, one per optimizer) make one table.
pub fn render_gpt(dirs: &[PathBuf], order: &[String]) -> Result<String> {
    let roots: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let read = |table| read_tables(&roots, table);
    let runs = read(&schema::RUNS)?;
    let (run_ids, labels, seeds) = (strings(&runs, "run")?, strings(&runs, "optimizer")?, ints(&runs, "seed")?);
    let run_of = |id: &str| run_ids.iter().position(|r| r == id).and_then(|i| Some((labels[i].clone(), seeds[i]? as u64)));
    let val = read(&schema::VALIDATION)?;
    let (v_run, v_step) = (strings(&val, "run")?, ints(&val, "step")?);
    let v_test = floats(&val, "test_bits_per_byte")?;
    let mut splits = vec![("val bits/byte", floats(&val, "bits_per_byte")?)];
    if v_test.iter().any(Option::is_some) {
        splits.push(("test bits/byte", v_test));
    }
    let splits: Vec<(&str, Latest<f64>)> = splits
        .into_iter()
        .map(|(name, bpb)| {
            let mut last = Latest::default();
            for k in 0..v_run.len() {
                if let (Some(step), Some(b)) = (v_step[k], bpb[k]) {
                    last.add(v_run[k].as_str(), step, b);
                }
            }
            (name, last)
        })
        .collect();
    let sp = read(&schema::SPECTRA)?;
    let (s_run, s_step, s_param, s_tensor, s_rank) =
        (strings(&sp, "run")?, ints(&sp, "step")?, strings(&sp, "param")?, strings(&sp, "tensor")?, floats(&sp, "effective_rank")?);
    // Matrix kinds by name; `up` is SwiGLU's w3, shown only when present.
    const KINDS: [(&str, &str); 5] = [("attn.qkv", "qkv"), ("attn.proj", "proj"), ("mlp.fc.", "fc"), ("mlp.up.", "up"), ("mlp.fc2", "fc2")];
    // (label, tensor, kind index) → step → seed → ranks of its layers.
    type Ranks = BTreeMap<i64, BTreeMap<u64, Vec<f64>>>;
    let mut ranks: BTreeMap<(String, String, usize), Ranks> = BTreeMap::new();
    for k in 0..s_run.len() {
        let (Some(step), Some(rank)) = (s_step[k], s_rank[k]) else { continue };
        let Some(kind) = KINDS.iter().position(|(m, _)| s_param[k].contains(m)) else { continue };
        let Some((label, seed)) = run_of(&s_run[k]) else { continue };
        ranks.entry((label, s_tensor[k].clone(), kind)).or_default().entry(step).or_default().entry(seed).or_default().push(rank);
    }
    let by_seed = |layers: &BTreeMap<u64, Vec<f64>>| -> BTreeMap<u64, f64> { layers.iter().map(|(s, r)| (*s, mean(r))).collect() };
    // The last probe's per-seed ranks, and "first→last ± interval".
    let last_ranks = |label: &str, tensor: &str, kind: usize| -> Option<BTreeMap<u64, f64>> {
        ranks.get(&(label.to_string(), tensor.to_string(), kind)).and_then(|steps| steps.values().next_back()).map(by_seed)
    };
    let first_last = |label: &str, tensor: &str, kind: usize| -> String {
        ranks.get(&(label.to_string(), tensor.to_string(), kind)).map_or("—".into(), |steps| {
            let first: Vec<f64> = by_seed(steps.values().next().unwrap()).into_values().collect();
            let last = Interval::of(&by_seed(steps.values().next_back().unwrap()).into_values().collect::<Vec<_>>());
            let spread = if last.n > 1 { format!("±{:.0}", last.half_width) } else { String::new() };
            format!("{:.0}→{:.0}{spread}", mean(&first), last.mean)
        })
    };
    let mut ordered: Vec<String> = order.iter().filter(|l| labels.contains(l)).cloned().collect();
    ordered.extend(labels.iter().filter(|l| !order.contains(l)).cloned().collect::<std::collections::BTreeSet<_>>());
    let shown: Vec<usize> = (0..KINDS.len()).filter(|&k| ranks.keys().any(|(_, t, kind)| t == "gradient" && *kind == k)).collect();
    let w = ordered.iter().map(String::len).max().unwrap_or(0).max(10);
    let mut out = format!("{:<w$} {:>4}", "optimizer", "runs");
    for (name, _) in &splits {
        write!(out, " {name:>19}").unwrap();
    }
    for &k in &shown {
        write!(out, " {:>14}", format!("grad:{}", KINDS[k].1)).unwrap();
    }
    writeln!(out, " {:>14} {:>14}", "update:fc", "post-NS:fc").unwrap();
    let fc = KINDS.iter().position(|(_, short)| *short == "fc").expect("fc is a kind");
    let mut bpb_by_seed = vec![Vec::new(); splits.len()];
    for label in &ordered {
        let mine: Vec<(&String, u64)> =
            run_ids.iter().enumerate().filter(|(i, _)| labels[*i] == *label).filter_map(|(i, r)| Some((r, seeds[i]? as u64))).collect();
        write!(out, "{:<w$} {:>4}", label, mine.len()).unwrap();
        for ((_, last), by_seed) in splits.iter().zip(&mut bpb_by_seed) {
            let bpb: BTreeMap<u64, f64> = mine.iter().filter_map(|(r, seed)| last.get(r).first().map(|&b| (*seed, b))).collect();
            write!(out, " {:>19}", interval(Interval::of(&bpb.values().copied().collect::<Vec<_>>()), 3)).unwrap();
            by_seed.push((label.clone(), bpb));
        }
        for &k in &shown {
            write!(out, " {:>14}", first_last(label, "gradient", k)).unwrap();
        }
        writeln!(out, " {:>14} {:>14}", first_last(label, "update", fc), first_last(label, "muon_post_orthogonalization", fc)).unwrap();
    }
    for ((name, _), by_seed) in splits.iter().zip(&bpb_by_seed) {
        out += &paired_differences(name, by_seed);
    }
    for &k in &shown {
        let values: Vec<(String, BTreeMap<u64, f64>)> =
            ordered.iter().filter_map(|l| last_ranks(l, "gradient", k).map(|r| (l.clone(), r))).collect();
        out += &paired_differences(&format!("last gradient effective rank of {}", KINDS[k].1), &values);
    }
    Ok(out)
}
