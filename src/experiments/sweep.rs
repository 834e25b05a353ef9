//! Sweeps: a grid of studies, each an ordinary study folder under the sweep's
//! folder, run by worker processes and resumed by running the same command.
//!
//! A spec (TOML) names the study kind, a base preset, fixed `--set` values, the
//! seeds, and the axes:
//!
//! ```toml
//! study = "split-mnist"
//! seeds = [0, 1, 2, 3, 4]
//! [set]                                  # every cell
//! epochs_per_task = 1
//! [grid]                                 # cartesian axes, over every optimizer
//! hidden = [[256], [256, 256]]
//! [[zip]]                                # axes that advance together
//! batch_size = [64, 128]
//! probe_every = [100, 50]
//! [optimizers.sgd]                       # per-optimizer axes (cartesian)
//! lr = [0.01, 0.05, 0.1]
//! [optimizers.adamw]
//! lr = [1e-4, 1e-3]
//! [select]                               # optional: tune on validation
//! seeds = [100, 101, 102, 103, 104]      # fresh seeds for the chosen cells
//! per_point = true                       # a choice at every shared point
//! ```
//!
//! Each cell trains one optimizer label at one point of its own axes and of the
//! shared ones, over all the seeds: `cells/<n>` with its overrides listed in the
//! sweep's `cells.toml`. A sweep's cells are fixed by its spec: running it
//! again in the same folder with another spec is refused, unless that spec
//! only adds cells (which then run beside the finished ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::figures::TuningCurves;
use super::folder::write_atomically;
use super::summary::summarize;
use crate::metrics::Interval;

/// A sweep as written by a person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The `exp` study: `split-mnist`, `vit` or `gpt`.
    pub study: String,
    /// A preset every cell starts from (relative to the spec's folder).
    #[serde(default)]
    pub preset: Option<PathBuf>,
    pub seeds: Vec<u64>,
    /// Keys every cell sets.
    #[serde(default)]
    pub set: toml::Table,
    /// Cartesian axes shared by every optimizer: key → values.
    #[serde(default)]
    pub grid: toml::Table,
    /// Groups of axes whose value lists advance together (equal lengths).
    #[serde(default)]
    pub zip: Vec<toml::Table>,
    /// Per optimizer label: its own cartesian axes over its hyperparameters.
    pub optimizers: BTreeMap<String, toml::Table>,
    /// Model selection: pick each optimizer's cell on validation, rerun it with fresh seeds.
    #[serde(default)]
    pub select: Option<Select>,
}

/// The honest way to tune: each optimizer's best cell by its mean validation
/// score over the tuning seeds (`final_validation_accuracy` on the examples
/// held out by `validation_fraction`, or for `gpt` the lowest
/// `final_validation_loss`; the test data play no part), rerun with `seeds` (at
/// least 5, none of the tuning seeds) and reported on the test data (for `gpt`
/// the split held out by `test_fraction`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    pub seeds: Vec<u64>,
    /// Choose each optimizer's cell separately at every point of the shared
    /// axes (`[grid]`, `[[zip]]`), e.g. a rate per width and dataset, rather
    /// than one cell across them: a rate tuned at one width need not suit
    /// another (Yang et al. 2021, "Tensor Programs V", arXiv 2203.03466).
    #[serde(default)]
    pub per_point: bool,
}

/// One study of the sweep: an optimizer label and the overrides of its point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub name: String,
    pub optimizer: String,
    /// `key = value` overrides, in the order they apply.
    pub overrides: Vec<String>,
}

pub const STUDIES: [&str; 3] = ["split-mnist", "vit", "gpt"];

/// The spec as the sweep's folder keeps it (what `exp report` reads back).
pub const SPEC: &str = "sweep.toml";

/// The selection rule's record: each optimizer's choice and its candidates.
const SELECTION: &str = "selection.toml";

/// A sweep runs in two phases: its grid, then (with `[select]`) each
/// optimizer's chosen cell again with fresh seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Grid,
    Final,
}

/// A study to run: its cell, and the folder it runs in.
pub struct Job {
    pub cell: Cell,
    pub dir: PathBuf,
}

/// Whether `dir` is a sweep's folder.
pub fn is_sweep(dir: &Path) -> bool {
    dir.join(SPEC).is_file()
}

/// A sweep's table from its folder, finished or not, without running anything.
pub fn report(root: &Path) -> Result<String> {
    let (spec, state) = state(root)?;
    render(&spec, &state, root)
}

/// Where every study of a sweep stands, read from its folder: each either
/// finished before or not finished.
pub fn state(root: &Path) -> Result<(SweepSpec, SweepResult)> {
    let spec = SweepSpec::read(&root.join(SPEC))?;
    let state = |jobs: Vec<Job>, seeds: &[u64]| -> Vec<(Cell, CellEnd)> {
        jobs.into_iter()
            .map(|j| {
                let end = if finished(&j.dir, &j.cell, seeds) { CellEnd::AlreadyDone } else { CellEnd::Unfinished };
                (j.cell, end)
            })
            .collect()
    };
    let cells = state(grid_jobs(root, &manifest(root)?), &spec.seeds);
    let selected = match &spec.select {
        Some(select) if root.join(SELECTION).exists() => {
            let choices = read_choices(root)?;
            let ends = state(final_jobs(root, &choices), &select.seeds);
            choices.into_iter().zip(ends).map(|(choice, (_, end))| Selection { choice, end }).collect()
        }
        _ => Vec::new(),
    };
    Ok((spec, SweepResult { cells, selected }))
}

impl SweepSpec {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading sweep spec {}", path.display()))?;
        let mut spec: Self = toml::from_str(&text).with_context(|| format!("parsing sweep spec {}", path.display()))?;
        if let Some(preset) = &spec.preset {
            let base = path.parent().unwrap_or(Path::new("."));
            // Absolute, so the copy in the sweep's folder names the same file.
            spec.preset = Some(std::path::absolute(base.join(preset))?);
        }
        Ok(spec)
    }

    /// With `[select]`, refuses before anything runs a spec whose cells do not
    /// hold out the data the selection needs. A cell whose configuration does
    /// not resolve is left to fail on its own when it runs, without taking the
    /// others down.
    pub fn check_held_out(&self, cells: &[Cell]) -> Result<()> {
        if self.select.is_none() {
            return Ok(());
        }
        let preset = self.preset.as_deref().map(super::config::read_preset).transpose()?;
        for cell in cells {
            if self.held_out_fraction(preset.as_ref(), cell).is_ok_and(|f| f <= 0.0) {
                let key = if self.study == "gpt" { "test_fraction" } else { "validation_fraction" };
                bail!("sweep cell {} ({}): [select] needs {key} > 0 (in [set] or the preset)", cell.name, cell.overrides.join(" "));
            }
        }
        Ok(())
    }

    /// A cell's share of data held out for what `[select]` needs (the
    /// validation examples, or for `gpt` the test text), from its configuration
    /// resolved as its `exp` process will resolve it.
    fn held_out_fraction(&self, preset: Option<&toml::Table>, cell: &Cell) -> Result<f64> {
        use super::{SplitMnistConfig, StudyConfig, config, gpt::GptStudyConfig};
        let defaults: &[&str] = if self.study == "vit" { &config::VIT_DEFAULTS } else { &[] };
        let overrides: Vec<String> = defaults.iter().map(|d| d.to_string()).chain(cell.overrides.iter().cloned()).collect();
        Ok(match self.study.as_str() {
            "gpt" => GptStudyConfig::resolve(preset, &overrides)?.test_fraction,
            _ => SplitMnistConfig::resolve(preset, &overrides)?.validation_fraction,
        })
    }

    /// The column `[select]` chooses on, and whether higher is better.
    fn selection_metric(&self) -> (&'static str, bool) {
        if self.study == "gpt" { ("final_validation_loss", false) } else { ("final_validation_accuracy", true) }
    }

    /// Every cell, in a fixed order: optimizers by name, then the grid's and
    /// zipped axes' points, then the optimizer's own axes.
    pub fn cells(&self) -> Result<Vec<Cell>> {
        ensure!(STUDIES.contains(&self.study.as_str()), "sweep study {:?} is not one of {}", self.study, STUDIES.join(", "));
        ensure!(!self.seeds.is_empty(), "a sweep needs at least one seed");
        ensure!(!self.optimizers.is_empty(), "a sweep needs at least one [optimizers.LABEL] table");
        if let Some(select) = &self.select {
            ensure!(select.seeds.len() >= 5, "[select] seeds: at least 5 fresh seeds, got {}", select.seeds.len());
            let reused: Vec<&u64> = select.seeds.iter().filter(|s| self.seeds.contains(s)).collect();
            ensure!(reused.is_empty(), "[select] seeds must be fresh, but {reused:?} also tuned");
        }
        let fixed: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut shared = cartesian(&self.grid, "")?;
        for (i, group) in self.zip.iter().enumerate() {
            shared = product(&shared, &zipped(group).with_context(|| format!("[[zip]] group {i}"))?);
        }
        let mut cells = Vec::new();
        for (label, axes) in &self.optimizers {
            for point in product(&shared, &cartesian(axes, &format!("optimizer.{label}."))?) {
                let mut overrides = fixed.clone();
                overrides.push(format!("optimizers=[{:?}]", label));
                overrides.push(format!("seeds={:?}", self.seeds));
                overrides.extend(point);
                cells.push(Cell { name: format!("{:04}", cells.len()), optimizer: label.clone(), overrides });
            }
        }
        Ok(cells)
    }
}

/// Every combination of the axes' values, each as `prefix+key=value` overrides.
fn cartesian(axes: &toml::Table, prefix: &str) -> Result<Vec<Vec<String>>> {
    let mut points = vec![Vec::new()];
    for (key, values) in axes {
        let values = values.as_array().with_context(|| format!("axis {prefix}{key} must be a list of values"))?;
        ensure!(!values.is_empty(), "axis {prefix}{key} has no values");
        points = points.iter().flat_map(|p| values.iter().map(move |v| [p.clone(), vec![format!("{prefix}{key}={v}")]].concat())).collect();
    }
    Ok(points)
}

/// The points of axes that advance together.
fn zipped(axes: &toml::Table) -> Result<Vec<Vec<String>>> {
    let lists: Vec<(&String, &Vec<toml::Value>)> = axes
        .iter()
        .map(|(k, v)| Ok((k, v.as_array().with_context(|| format!("axis {k} must be a list of values"))?)))
        .collect::<Result<_>>()?;
    let n = lists.first().map_or(0, |(_, v)| v.len());
    if let Some((k, v)) = lists.iter().find(|(_, v)| v.len() != n) {
        bail!("zipped axes must have equal lengths: {k} has {}, {} has {n}", v.len(), lists[0].0);
    }
    Ok((0..n).map(|i| lists.iter().map(|(k, v)| format!("{k}={}", v[i])).collect()).collect())
}

fn product(a: &[Vec<String>], b: &[Vec<String>]) -> Vec<Vec<String>> {
    a.iter().flat_map(|x| b.iter().map(move |y| [x.clone(), y.clone()].concat())).collect()
}

/// The sweep folder's record of its cells, `cells.toml`.
#[derive(Serialize, Deserialize)]
struct Manifest {
    cell: Vec<Cell>,
}

const MANIFEST: &str = "cells.toml";

/// The sweep folder's record of its cells: written on the first run, then the
/// identity any rerun must keep. A spec may add cells (e.g. rates past the edge
/// of a grid whose best cell sat on it): every saved cell keeps its name and
/// folder, and new ones are numbered after them. Returns `cells` under those
/// names, in the spec's order.
pub fn settle_manifest(root: &Path, cells: &[Cell]) -> Result<Vec<Cell>> {
    let path = root.join(MANIFEST);
    let saved = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<Manifest>(&text).with_context(|| format!("{} is not a sweep manifest", path.display()))?.cell,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let same = |a: &Cell, b: &Cell| a.optimizer == b.optimizer && a.overrides == b.overrides;
    let dropped = saved.iter().filter(|s| !cells.iter().any(|c| same(c, s))).count();
    if dropped > 0 {
        bail!(
            "{} holds a sweep of other cells ({dropped} of its {} are not in this spec, or have other values); \
             rerun it with its own spec or one that only adds cells, or choose another --out",
            root.display(),
            saved.len()
        );
    }
    let mut next = saved.iter().filter_map(|c| c.name.parse::<usize>().ok()).max().map_or(0, |n| n + 1);
    let mut named: Vec<Cell> = Vec::new();
    for cell in cells {
        ensure!(!named.iter().any(|c| same(c, cell)), "the spec lists one cell twice: {} {}", cell.optimizer, cell.overrides.join(" "));
        let name = saved.iter().find(|s| same(s, cell)).map_or_else(
            || {
                next += 1;
                format!("{:04}", next - 1)
            },
            |s| s.name.clone(),
        );
        named.push(Cell { name, ..cell.clone() });
    }
    if named != saved {
        write_atomically(&path, &toml::to_string_pretty(&Manifest { cell: named.clone() })?)?;
    }
    Ok(named)
}

/// The cells of a sweep's folder under their names (see [`settle_manifest`]).
fn manifest(root: &Path) -> Result<Vec<Cell>> {
    let path = root.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(toml::from_str::<Manifest>(&text).with_context(|| format!("{} is not a sweep manifest", path.display()))?.cell)
}

/// How a cell ended in this invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum CellEnd {
    /// Every run of its study had finished before: not started again.
    AlreadyDone,
    Finished,
    /// `exp` exited with an error: the last lines of its log.
    Failed(String),
    /// Not every run has finished (a report on a sweep in progress, or killed).
    Unfinished,
}

/// Where the sweep runs its cells: the `exp` binary, the flags every cell
/// gets (e.g. `--device cpu`), worker processes and threads per worker.
pub struct Workers<'a> {
    pub exe: &'a Path,
    pub extra_args: &'a [String],
    pub jobs: usize,
    pub threads: usize,
}

/// What a sweep did: every grid cell, and (with `[select]`) each optimizer's
/// choice and its rerun with fresh seeds.
pub struct SweepResult {
    pub cells: Vec<(Cell, CellEnd)>,
    pub selected: Vec<Selection>,
}

/// One optimizer's chosen cell (at one shared point with `per_point`) and its
/// rerun with fresh seeds.
pub struct Choice {
    pub optimizer: String,
    /// The shared point chosen at (see [`point_of`]); empty without `per_point`.
    pub point: String,
    pub chosen: String,
    /// Mean validation score (the spec's `selection_metric`) of every finished cell of this optimizer.
    pub candidates: Vec<(String, f64)>,
    pub rerun: Cell,
}

impl SweepResult {
    /// The studies that did not finish (failed, or not run to the end), by name.
    pub fn unfinished(&self) -> Vec<&str> {
        let ends = self.cells.iter().map(|(c, e)| (c, e)).chain(self.selected.iter().map(|s| (&s.choice.rerun, &s.end)));
        ends.filter(|(_, e)| matches!(e, CellEnd::Failed(_) | CellEnd::Unfinished)).map(|(c, _)| c.name.as_str()).collect()
    }
}

impl Choice {
    fn new(optimizer: &str, point: String, chosen: String, candidates: Vec<(String, f64)>, overrides: Vec<String>) -> Self {
        let mut choice = Choice { optimizer: optimizer.into(), point, chosen, candidates, rerun: Cell::default() };
        let name = format!("final-{}", choice.key().replace('/', "-"));
        choice.rerun = Cell { name, optimizer: optimizer.into(), overrides };
        choice
    }

    /// Its entry in `selection.toml`: the label, or with a point `<point>/<label>`.
    fn key(&self) -> String {
        if self.point.is_empty() { self.optimizer.clone() } else { format!("{}/{}", slug(&self.point), self.optimizer) }
    }

    /// The study folder of its rerun with fresh seeds.
    fn rerun_dir(&self, root: &Path) -> PathBuf {
        root.join("final").join(self.key())
    }
}

/// A choice and how its rerun ended.
pub struct Selection {
    pub choice: Choice,
    pub end: CellEnd,
}

impl Selection {
    /// Its rerun's study folder, once the rerun has finished.
    fn finished_dir(&self, root: &Path) -> Option<PathBuf> {
        (self.end == CellEnd::AlreadyDone).then(|| self.choice.rerun_dir(root))
    }
}

/// Settles the sweep's folder for `spec` (its cells' manifest and a copy of the
/// spec) and returns the cells, with the folder's lock: one process drives a
/// sweep at a time, since a second would rewrite its manifest and choices (and
/// move superseded reruns) under the first's running cells.
pub fn prepare(spec: &SweepSpec, root: &Path) -> Result<(Vec<Cell>, std::fs::File)> {
    let cells = spec.cells()?;
    spec.check_held_out(&cells)?;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let lock = super::folder::lock(root, false)?;
    let cells = settle_manifest(root, &cells)?;
    // Rewritten each time: the manifest has checked the cells, and what may
    // differ (e.g. `[select]`) is what this run will do.
    write_atomically(&root.join(SPEC), &toml::to_string_pretty(spec)?)?;
    Ok((cells, lock))
}

/// Runs every grid cell not finished yet, then (with `[select]`) each
/// optimizer's best cell again with fresh seeds; writes `selection.toml`.
pub fn run(spec: &SweepSpec, root: &Path, workers: &Workers) -> Result<SweepResult> {
    let (cells, _lock) = prepare(spec, root)?;
    let ends = run_cells(spec, root, &grid_jobs(root, &cells), &spec.seeds, workers)?;
    let cells: Vec<(Cell, CellEnd)> = cells.into_iter().zip(ends).collect();
    let Some(select) = &spec.select else { return Ok(SweepResult { cells, selected: Vec::new() }) };
    let failed: Vec<String> = cells
        .iter()
        .filter_map(|(c, end)| if let CellEnd::Failed(why) = end { Some(format!("{}: {why}", c.name)) } else { None })
        .collect();
    // Without this, cells that all failed left only "nothing to select".
    let choices = choose(spec, root).with_context(|| match failed.first() {
        Some(first) => format!("{} grid cells failed (logs in {}); the first, {first}", failed.len(), root.join("logs").display()),
        None => "choosing the cells to rerun".into(),
    })?;
    let ends = run_cells(spec, root, &final_jobs(root, &choices), &select.seeds, workers)?;
    let selected = choices.into_iter().zip(ends).map(|(choice, end)| Selection { choice, end }).collect();
    Ok(SweepResult { cells, selected })
}

/// Runs one study of a phase (the grid's cell `index`, or the rerun of the
/// `index`-th chosen optimizer): what a Slurm array task does.
pub fn run_task(root: &Path, phase: Phase, index: usize, workers: &Workers) -> Result<CellEnd> {
    let spec = SweepSpec::read(&root.join(SPEC))?;
    let (jobs, seeds) = match (phase, &spec.select) {
        (Phase::Grid, _) => (grid_jobs(root, &manifest(root)?), &spec.seeds),
        (Phase::Final, Some(select)) => (final_jobs(root, &read_choices(root)?), &select.seeds),
        (Phase::Final, None) => bail!("{} has no [select]: there is no final phase", root.join(SPEC).display()),
    };
    let job = jobs.into_iter().nth(index).with_context(|| format!("the {phase:?} phase has no study {index}"))?;
    Ok(run_cells(&spec, root, &[job], seeds, workers)?.remove(0))
}

/// The grid's studies, one per cell.
pub fn grid_jobs(root: &Path, cells: &[Cell]) -> Vec<Job> {
    cells.iter().map(|c| Job { cell: c.clone(), dir: cell_dir(root, &c.name) }).collect()
}

/// The reruns of the chosen cells, one per choice.
pub fn final_jobs(root: &Path, choices: &[Choice]) -> Vec<Job> {
    choices.iter().map(|c| Job { cell: c.rerun.clone(), dir: c.rerun_dir(root) }).collect()
}

/// Applies the selection rule to the finished grid cells and writes it down
/// (`selection.toml`): a choice per optimizer, or with `per_point` per
/// optimizer and shared point, in the order of their `selection.toml` keys.
pub fn choose(spec: &SweepSpec, root: &Path) -> Result<Vec<Choice>> {
    let select = spec.select.as_ref().context("the sweep has no [select]")?;
    let cells = manifest(root)?;
    let (metric, higher_is_better) = spec.selection_metric();
    let point = |cell: &Cell| if select.per_point { point_of(spec, cell) } else { String::new() };
    let mut choices = Vec::new();
    for ((label, at), group) in group_in_order(&cells, |c| (c.optimizer.clone(), point(c))) {
        let mut candidates = Vec::new();
        for cell in group {
            let values = column(&cell_dir(root, &cell.name), metric);
            if values.len() == spec.seeds.len() {
                candidates.push((cell.name.clone(), values.iter().sum::<f64>() / values.len() as f64));
            }
        }
        // The first of the best: ties go to the earlier cell.
        let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
        let Some((chosen, _)) = candidates.iter().fold(None::<&(String, f64)>, |best, c| match best {
            Some(b) if !better(c.1, b.1) => Some(b),
            _ => Some(c),
        }) else {
            let at = if at.is_empty() { String::new() } else { format!(" at {at}") };
            bail!("no cell of optimizer {label}{at} finished with every seed: nothing to select");
        };
        let base = cells.iter().find(|c| &c.name == chosen).expect("a candidate is a cell");
        let seeds = format!("seeds={:?}", select.seeds);
        let overrides = base.overrides.iter().map(|o| if o.starts_with("seeds=") { seeds.clone() } else { o.clone() }).collect();
        choices.push(Choice::new(&label, at, chosen.clone(), candidates, overrides));
    }
    choices.sort_by_key(Choice::key);
    set_aside_changed_reruns(root, &choices)?;
    write_selection(root, &choices, (metric, higher_is_better))?;
    Ok(choices)
}

/// Moves the rerun of every choice that `choices` change (cells added to the
/// grid beat the one chosen before) to `superseded/<key>-<old cell>/`, so its
/// runs are kept and the new choice reruns in a clean folder.
fn set_aside_changed_reruns(root: &Path, choices: &[Choice]) -> Result<()> {
    if !root.join(SELECTION).exists() {
        return Ok(());
    }
    for old in read_choices(root)? {
        let changed = choices.iter().any(|c| c.key() == old.key() && c.chosen != old.chosen);
        let dir = old.rerun_dir(root);
        if changed && dir.exists() {
            let aside = root.join("superseded").join(format!("{}-{}", old.key(), old.chosen));
            std::fs::create_dir_all(aside.parent().expect("under the root"))?;
            std::fs::rename(&dir, &aside).with_context(|| format!("moving {} to {}", dir.display(), aside.display()))?;
            eprintln!("sweep: {} now chooses another cell; its rerun of cell {} is kept in {}", old.key(), old.chosen, aside.display());
        }
    }
    Ok(())
}

/// The choices `selection.toml` records, in its order (that of [`choose`]).
pub fn read_choices(root: &Path) -> Result<Vec<Choice>> {
    let path = root.join(SELECTION);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let strings = |v: Option<&toml::Value>| -> Vec<String> {
        v.and_then(toml::Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
    };
    Ok(table
        .iter()
        .filter_map(|(label, v)| Some((label, v.as_table()?)))
        .map(|(key, t)| {
            let text = |name: &str| t.get(name).and_then(toml::Value::as_str).map(String::from);
            let optimizer = text("optimizer").unwrap_or_else(|| key.clone());
            let chosen = text("chosen_cell").unwrap_or_default();
            let candidates = [MEAN_OF_ACCURACY, MEAN_OF_LOSS]
                .into_iter()
                .find_map(|key| t.get(key))
                .and_then(toml::Value::as_table)
                .into_iter()
                .flatten()
                .filter_map(|(n, v)| Some((n.clone(), v.as_float()?)))
                .collect();
            Choice::new(&optimizer, text("point").unwrap_or_default(), chosen, candidates, strings(t.get("overrides")))
        })
        .collect())
}

/// `selection.toml`'s key of every candidate's mean, by the metric chosen on.
const MEAN_OF_ACCURACY: &str = "mean_validation_accuracy";
const MEAN_OF_LOSS: &str = "mean_validation_loss";

/// `selection.toml`: the rule, and per optimizer the chosen cell, its values and
/// every candidate's mean validation score.
fn write_selection(root: &Path, choices: &[Choice], (metric, higher_is_better): (&str, bool)) -> Result<()> {
    let (best, means_key) = if higher_is_better { ("highest", MEAN_OF_ACCURACY) } else { ("lowest", MEAN_OF_LOSS) };
    let mut table = toml::Table::new();
    table.insert(
        "rule".into(),
        format!(
            "each optimizer's cell with the {best} mean {metric} over the tuning seeds (ties: the earlier cell), \
             rerun with the fresh seeds of [select]; test numbers come from the reruns only"
        )
        .into(),
    );
    for c in choices {
        let mut t = toml::Table::new();
        if !c.point.is_empty() {
            t.insert("optimizer".into(), c.optimizer.clone().into());
            t.insert("point".into(), c.point.clone().into());
        }
        t.insert("chosen_cell".into(), c.chosen.clone().into());
        t.insert("overrides".into(), c.rerun.overrides.clone().into());
        let means: toml::Table = c.candidates.iter().map(|(n, v)| (n.clone(), toml::Value::from(*v))).collect();
        t.insert(means_key.into(), means.into());
        table.insert(c.key(), t.into());
    }
    write_atomically(&root.join(SELECTION), &toml::to_string_pretty(&table)?)
}

/// The study folders of the reruns that finished.
pub fn finished_reruns(root: &Path, state: &SweepResult) -> Vec<PathBuf> {
    state.selected.iter().filter_map(|s| s.finished_dir(root)).collect()
}

/// A sweep's figures in `<sweep>/figures/`: the tuning curves (when the grid
/// has them) and the finished reruns' figures, side by side (with `per_point`,
/// a group of them per shared point in `figures/<point>/`).
pub fn plot(root: &Path, spec: &SweepSpec, state: &SweepResult) -> Result<Vec<(Option<String>, Vec<super::figures::Figure>)>> {
    let out = root.join("figures");
    let mut drawn = Vec::new();
    let cells = manifest(root)?;
    let per_point = spec.select.as_ref().is_some_and(|s| s.per_point);
    let groups = if per_point { group_in_order(&cells, |c| point_of(spec, c)) } else { vec![(String::new(), cells.iter().collect())] };
    for (point, cells) in groups {
        let (at, out) = if point.is_empty() { (None, out.clone()) } else { (Some(point.clone()), out.join(slug(&point))) };
        let mut figures = Vec::new();
        let cells: Vec<Cell> = cells.into_iter().cloned().collect();
        if let Some((curves, representations)) = tuning_curves(spec, root, &cells)?.split_first() {
            figures.push(super::figures::plot_tuning(&out, curves)?);
            if !representations.is_empty() {
                figures.push(super::figures::plot_tuning_representations(&out, representations)?);
            }
        }
        let finals: Vec<PathBuf> = state.selected.iter().filter(|s| s.choice.point == point).filter_map(|s| s.finished_dir(root)).collect();
        if !finals.is_empty() {
            figures.extend(super::figures::plot(&finals, &out)?);
        }
        if !figures.is_empty() {
            drawn.push((at, figures));
        }
    }
    for (point, cells) in shared_points(spec, &finished_cells(state)).into_iter().flatten() {
        let dirs: Vec<PathBuf> = cells.iter().map(|c| cell_dir(root, &c.name)).collect();
        drawn.push((Some(point.clone()), super::figures::plot(&dirs, &out.join(slug(&point)))?));
    }
    Ok(drawn)
}

/// The grid cells that finished.
fn finished_cells(state: &SweepResult) -> Vec<Cell> {
    state.cells.iter().filter(|(_, end)| matches!(end, CellEnd::AlreadyDone | CellEnd::Finished)).map(|(c, _)| c.clone()).collect()
}

/// A sweep without `[select]` over shared axes (`[grid]`, `[[zip]]`), e.g.
/// widths or datasets with each optimizer at one fixed rate, compares the
/// optimizers at each point of those axes: `cells` grouped by that point (in
/// cell order), one cell per optimizer. None for any other sweep, or when an
/// optimizer's own axes give it several cells at one point.
fn shared_points<'a>(spec: &SweepSpec, cells: &'a [Cell]) -> Option<Vec<(String, Vec<&'a Cell>)>> {
    if spec.select.is_some() || (spec.grid.is_empty() && spec.zip.is_empty()) {
        return None;
    }
    let points = group_in_order(cells, |c| point_of(spec, c));
    let one_each = points.iter().all(|(_, group)| group_in_order(group, |c| c.optimizer.clone()).len() == group.len());
    one_each.then_some(points)
}

/// A cell's point of the shared axes (`[grid]`, `[[zip]]`), as its overrides,
/// e.g. `dataset="mnist" hidden=[8, 8]`; empty without shared axes.
fn point_of(spec: &SweepSpec, cell: &Cell) -> String {
    let fixed = spec.set.len() + 2;
    cell.overrides[fixed..].iter().filter(|o| !o.starts_with("optimizer.")).cloned().collect::<Vec<_>>().join(" ")
}

/// A folder name for a point such as `dataset="mnist" hidden=[8, 8]`.
fn slug(point: &str) -> String {
    let mapped: String = point.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    mapped.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-")
}

/// The tuning curves of `cells` (the grid's, or one shared point's with
/// `per_point`), when every optimizer's cells sweep one numeric value of the
/// same name (see [`tuning_axis`]), from each finished cell's seeds: first the
/// metric the selection uses (validation accuracy with `[select]`, else final
/// accuracy; held-out loss for `gpt`), then, where the study probes
/// representations, each probed layer's effective rank and sparsity after
/// training (so a difference between optimizers can be set beside what their
/// rates alone do). Empty without such an axis.
fn tuning_curves(spec: &SweepSpec, root: &Path, cells: &[Cell]) -> Result<Vec<TuningCurves>> {
    let metric = match (spec.study.as_str(), &spec.select) {
        ("gpt", _) => "final_validation_loss",
        (_, Some(_)) => "final_validation_accuracy",
        _ => "final_all_accuracy",
    };
    let Some((axis, swept)) = tuning_axis(spec, cells) else { return Ok(Vec::new()) };
    let panel = |metric: String| TuningCurves { axis: axis.clone(), metric, log_x: false, lines: BTreeMap::new() };
    // The selection's metric first, the representations' in the order met.
    let mut panels = vec![panel(metric.to_string())];
    let mut add = |metric: String, label: &str, value: f64, over_seeds: Interval| {
        if over_seeds.n == 0 {
            return;
        }
        let at = panels.iter().position(|p| p.metric == metric).unwrap_or_else(|| {
            panels.push(panel(metric));
            panels.len() - 1
        });
        panels[at].lines.entry(label.to_string()).or_default().push((value, over_seeds));
    };
    for (label, points) in &swept {
        for &(cell, value) in points {
            let dir = cell_dir(root, cell);
            let scores = column(&dir, metric);
            if scores.is_empty() {
                continue;
            }
            add(metric.to_string(), label, value, Interval::of(&scores));
            if spec.study != "gpt" {
                for layer in summarize(&dir, &[])?.into_iter().flat_map(|s| s.representations) {
                    add(format!("effective rank of {}", layer.name), label, value, layer.effective_rank);
                    add(format!("sparsity of {}", layer.name), label, value, layer.sparsity);
                }
            }
        }
    }
    let values: Vec<f64> = panels[0].lines.values().flatten().map(|p| p.0).collect();
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    for panel in &mut panels {
        panel.log_x = lo > 0.0 && hi / lo >= 10.0;
        panel.lines.values_mut().for_each(|line| line.sort_by(|a, b| a.0.total_cmp(&b.0)));
    }
    Ok(panels)
}

/// The axis every optimizer's cells sweep, when each sweeps exactly one numeric
/// key of the same name (each its own `lr`; a wrapper's `base.lr` counts as its
/// `lr`, since its base takes the steps), with each optimizer's (cell name,
/// value) points.
#[allow(clippy::type_complexity)]
fn tuning_axis<'a>(spec: &SweepSpec, cells: &'a [Cell]) -> Option<(String, BTreeMap<String, Vec<(&'a str, f64)>>)> {
    let fixed = spec.set.len() + 2;
    let mut axis: Option<&str> = None;
    let mut swept = BTreeMap::new();
    for label in spec.optimizers.keys() {
        let own: Vec<&Cell> = cells.iter().filter(|c| &c.optimizer == label).collect();
        let points: Vec<BTreeMap<&str, &str>> =
            own.iter().map(|c| c.overrides[fixed..].iter().filter_map(|o| o.split_once('=')).collect()).collect();
        let varying: Vec<&str> = points.first()?.keys().copied().filter(|k| points.iter().any(|p| p.get(k) != points[0].get(k))).collect();
        let [key] = varying[..] else { return None };
        let own_key = key.strip_prefix(&format!("optimizer.{label}.")).unwrap_or(key);
        let name = own_key.strip_prefix("base.").unwrap_or(own_key);
        if *axis.get_or_insert(name) != name {
            return None;
        }
        let values =
            own.iter().zip(&points).map(|(cell, point)| Some((cell.name.as_str(), point[key].parse().ok()?))).collect::<Option<_>>()?;
        swept.insert(label.clone(), values);
    }
    Some((axis?.to_string(), swept))
}

/// The values of a `runs` column in a cell's study (empty if none finished).
fn column(dir: &Path, name: &str) -> Vec<f64> {
    crate::record::read_table(dir, &crate::record::schema::RUNS)
        .ok()
        .and_then(|runs| Some(runs.column(name).ok()?.f64().ok()?.iter().flatten().collect()))
        .unwrap_or_default()
}

/// Runs every (cell, folder) not finished yet, `jobs` at a time, each in its own
/// `exp` process (so one failing or crashing cell cannot take the others down),
/// and reports how each ended. Logs go to `<root>/logs/<cell>.log`.
fn run_cells(spec: &SweepSpec, root: &Path, cells: &[Job], seeds: &[u64], workers: &Workers) -> Result<Vec<CellEnd>> {
    std::fs::create_dir_all(root.join("logs"))?;
    let mut ends: Vec<Option<CellEnd>> = vec![None; cells.len()];
    let mut running: Vec<(usize, std::process::Child)> = Vec::new();
    let mut next = 0;
    while next < cells.len() || !running.is_empty() {
        while running.len() < workers.jobs.max(1) && next < cells.len() {
            let (k, Job { cell, dir }) = (next, &cells[next]);
            next += 1;
            if finished(dir, cell, seeds) {
                ends[k] = Some(CellEnd::AlreadyDone);
                continue;
            }
            let log = std::fs::File::create(log_path(root, cell))?;
            let mut cmd = std::process::Command::new(workers.exe);
            // The name the sweep was started by, for the cells' provenance,
            // when `exe` is `/proc/self/exe`.
            #[cfg(unix)]
            if let Some(name) = std::env::args_os().next() {
                std::os::unix::process::CommandExt::arg0(&mut cmd, name);
            }
            cmd.arg(&spec.study).arg("--out").arg(dir);
            if dir.join("config.toml").exists() {
                cmd.arg("--resume");
            } else if let Some(preset) = &spec.preset {
                cmd.arg("--preset").arg(preset);
            }
            cell.overrides.iter().for_each(|o| {
                cmd.arg("--set").arg(o);
            });
            cmd.args(workers.extra_args).env("RAYON_NUM_THREADS", workers.threads.max(1).to_string());
            let child = cmd.stdout(log.try_clone()?).stderr(log).spawn().with_context(|| format!("starting {}", workers.exe.display()))?;
            running.push((k, child));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut still = Vec::new();
        for (k, mut child) in running {
            match child.try_wait()? {
                None => still.push((k, child)),
                Some(status) if status.success() => ends[k] = Some(CellEnd::Finished),
                Some(status) => {
                    let log = std::fs::read_to_string(log_path(root, &cells[k].cell)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().filter(|l| !l.trim().is_empty()).take(3).collect();
                    ends[k] = Some(CellEnd::Failed(format!("{status}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))));
                }
            }
        }
        running = still;
    }
    Ok(ends.into_iter().map(|e| e.expect("every cell ends")).collect())
}

/// One line per cell: its optimizer, its own values, how it ended and its
/// main number (final accuracy on all classes, or held-out loss for a language
/// model) as mean ± 95% interval over the seeds.
pub fn render(spec: &SweepSpec, result: &SweepResult, root: &Path) -> Result<String> {
    let results = &result.cells;
    use std::fmt::Write as _;
    let column = if spec.study == "gpt" { "final_validation_loss" } else { "final_all_accuracy" };
    let fixed = spec.set.len() + 2;
    // Long labels widen their column rather than shift the rest.
    let w = results.iter().map(|(c, _)| c.optimizer.len()).max().unwrap_or(0).max(10);
    let mut out = format!("{:<6} {:<w$} {:<20} {:<44} {}\n", "cell", "optimizer", column, "values", "status");
    for (cell, end) in results {
        let values = self::column(&cell_dir(root, &cell.name), column);
        let metric = match values.len() {
            0 => "—".to_string(),
            1 => format!("{:.4}", values[0]),
            _ => {
                let i = crate::metrics::Interval::of(&values);
                format!("{:.4} ± {:.4}", i.mean, i.half_width)
            }
        };
        let status = match end {
            CellEnd::AlreadyDone => "done before".to_string(),
            CellEnd::Unfinished => "not finished".to_string(),
            CellEnd::Finished => "finished".to_string(),
            CellEnd::Failed(why) => format!("FAILED ({why})"),
        };
        let own = cell.overrides[fixed..].join(" ");
        writeln!(out, "{:<6} {:<w$} {:<20} {:<44} {status}", cell.name, cell.optimizer, metric, own).unwrap();
    }
    for (point, cells) in shared_points(spec, &finished_cells(result)).into_iter().flatten() {
        let dirs: Vec<PathBuf> = cells.iter().map(|c| cell_dir(root, &c.name)).collect();
        let labels: Vec<String> = cells.iter().map(|c| c.optimizer.clone()).collect();
        writeln!(out, "\nat {point}, on {}:", if spec.study == "gpt" { "the held-out text" } else { "the test sets" }).unwrap();
        out += &table(spec, &dirs, &labels)?;
    }
    if result.selected.is_empty() {
        return Ok(out);
    }
    let test = if spec.study == "gpt" { "the test split" } else { "the test sets" };
    let points: Vec<String> = group_in_order(results, |(c, _)| point_of(spec, c)).into_iter().map(|(p, _)| p).collect();
    let mut selected = group_in_order(&result.selected, |s| s.choice.point.clone());
    selected.sort_by_key(|(p, _)| points.iter().position(|q| q == p));
    for (point, selected) in selected {
        let at = if point.is_empty() { String::new() } else { format!(" at {point}") };
        writeln!(out, "\nselected{at} on validation (selection.toml), rerun with fresh seeds, on {test}:").unwrap();
        let (mut dirs, mut labels) = (Vec::new(), Vec::new());
        for Selection { choice: c, end } in selected {
            writeln!(out, "  {}: cell {} ({})", c.optimizer, c.chosen, c.rerun.overrides[fixed..].join(" ")).unwrap();
            if let CellEnd::Failed(why) = end {
                writeln!(out, "    rerun FAILED ({why})").unwrap();
            } else if *end == CellEnd::Unfinished {
                writeln!(out, "    rerun not finished").unwrap();
            } else {
                dirs.push(c.rerun_dir(root));
                labels.push(c.optimizer.clone());
            }
        }
        out += &table(spec, &dirs, &labels)?;
    }
    Ok(out)
}

/// `items` grouped by `key`, groups and members in order of first appearance.
fn group_in_order<T, K: PartialEq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<(K, Vec<&T>)> {
    let mut groups: Vec<(K, Vec<&T>)> = Vec::new();
    for item in items {
        let k = key(item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, group)) => group.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

/// The study table of studies read together, one optimizer label per folder.
fn table(spec: &SweepSpec, dirs: &[PathBuf], labels: &[String]) -> Result<String> {
    if dirs.is_empty() {
        return Ok(String::new());
    }
    if spec.study == "gpt" {
        return super::summary::render_gpt(dirs, labels);
    }
    let mut summaries = Vec::new();
    for (dir, label) in dirs.iter().zip(labels) {
        summaries.extend(summarize(dir, std::slice::from_ref(label))?);
    }
    Ok(super::summary::render(&summaries))
}

/// A grid cell's study folder.
fn cell_dir(root: &Path, name: &str) -> PathBuf {
    root.join("cells").join(name)
}

fn log_path(root: &Path, cell: &Cell) -> PathBuf {
    root.join("logs").join(format!("{}.log", cell.name))
}

/// Whether every (optimizer, seed) run of the cell has a completed or diverged row.
pub fn finished(dir: &Path, cell: &Cell, seeds: &[u64]) -> bool {
    let Ok(runs) = crate::record::read_table(dir, &crate::record::schema::RUNS) else { return false };
    let (Ok(ids), Ok(status)) = (runs.column("run").and_then(|c| c.str().cloned()), runs.column("status").and_then(|c| c.str().cloned()))
    else {
        return false;
    };
    seeds.iter().all(|&seed| {
        let id = super::study::run_id(&cell.optimizer, seed);
        (0..runs.height()).any(|k| ids.get(k) == Some(id.as_str()) && matches!(status.get(k), Some("completed" | "diverged")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn cells_cross_shared_and_per_optimizer_axes() {
        let s = spec(
            "study = \"gpt\"\nseeds = [0, 1]\n[set]\nsteps = 10\n[grid]\nseq = [8, 16]\n[[zip]]\nbatch_size = [2, 4]\neval_every = [5, 10]\n\
             [optimizers.adam]\nlr = [1e-3, 1e-2, 1e-1]\n[optimizers.muon]\nlr = [0.02]\n",
        );
        let cells = s.cells().unwrap();
        // adam: 2 seq × 2 zipped × 3 lr; muon: 2 × 2 × 1.
        assert_eq!(cells.len(), 12 + 4);
        assert_eq!(cells[0].optimizer, "adam");
        assert_eq!(
            cells[0].overrides,
            ["steps=10", "optimizers=[\"adam\"]", "seeds=[0, 1]", "seq=8", "batch_size=2", "eval_every=5", "optimizer.adam.lr=0.001"]
        );
        assert!(cells[3].overrides.contains(&"batch_size=4".to_string()) && cells[3].overrides.contains(&"eval_every=10".to_string()));
        assert_eq!(cells.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()[..2], ["0000", "0001"]);
    }

    #[test]
    fn tuning_curves_share_an_axis_by_name_and_a_base_rate_is_a_rate() {
        let axis = |axes: &str| {
            let s = spec(&format!("study = \"split-mnist\"\nseeds = [0]\n[optimizers.sgd]\nlr = [0.01, 0.1]\n{axes}"));
            tuning_axis(&s, &s.cells().unwrap())
                .map(|(axis, swept)| (axis, swept.into_iter().map(|(l, v)| (l, v.len())).collect::<Vec<_>>()))
        };
        let shared = axis("[optimizers.oblique]\n\"base.lr\" = [1e-3, 1e-2, 0.1]\n");
        assert_eq!(shared, Some(("lr".to_string(), vec![("oblique".to_string(), 3), ("sgd".to_string(), 2)])));
        assert_eq!(axis("[optimizers.kfac]\ndamping = [1e-3, 1e-2]\n"), None, "lr and damping do not share an axis");
        assert_eq!(axis("[optimizers.muon]\nlr = [0.01]\n\"aux_adamw.lr\" = [1e-4, 1e-3]\n"), None, "an auxiliary rate is not the rate");
    }

    #[test]
    fn a_grid_without_selection_compares_the_optimizers_at_each_shared_point() {
        let text = "study = \"split-mnist\"\nseeds = [0]\n[grid]\nhidden = [[8], [64]]\n[optimizers.sgd]\nlr = [0.1]\n[optimizers.muon]\nlr = [0.02]\n";
        let s = spec(text);
        let cells = s.cells().unwrap();
        let points = shared_points(&s, &cells).expect("one cell per optimizer and point");
        let names: Vec<(&str, Vec<&str>)> = points.iter().map(|(p, c)| (p.as_str(), c.iter().map(|c| c.name.as_str()).collect())).collect();
        assert_eq!(names, [("hidden=[8]", vec!["0000", "0002"]), ("hidden=[64]", vec!["0001", "0003"])]);
        assert_eq!(slug("dataset=\"fashion-mnist\" hidden=[8, 8]"), "dataset-fashion-mnist-hidden-8-8");
        let two_rates = spec(&text.replace("lr = [0.1]", "lr = [0.1, 0.3]"));
        assert!(shared_points(&two_rates, &two_rates.cells().unwrap()).is_none(), "two sgd cells at one point");
        let no_axes = spec(&text.replace("[grid]\nhidden = [[8], [64]]\n", ""));
        assert!(shared_points(&no_axes, &no_axes.cells().unwrap()).is_none());
        let selected = spec(&format!("{text}[select]\nseeds = [1, 2, 3, 4, 5]\n"));
        assert!(shared_points(&selected, &selected.cells().unwrap()).is_none());
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        let e = spec("study = \"nope\"\nseeds = [0]\n[optimizers.sgd]\nlr = [1]\n").cells().unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not one of"), "{e}");
        let e = spec("study = \"gpt\"\nseeds = [0]\n[[zip]]\na = [1, 2]\nb = [1]\n[optimizers.sgd]\nlr = [1]\n").cells().unwrap_err();
        assert!(format!("{e:#}").contains("equal lengths"), "{e:#}");
        let e = spec("study = \"gpt\"\nseeds = [0]\n[optimizers.sgd]\nlr = 0.1\n").cells().unwrap_err().to_string();
        assert!(e.contains("must be a list"), "{e}");
    }

    #[test]
    fn every_sweep_in_experiments_resolves_every_cell() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/sweeps");
        let specs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(!specs.is_empty());
        for path in specs {
            let spec = SweepSpec::read(&path).unwrap();
            let preset = spec.preset.as_deref().map(|p| crate::experiments::config::read_preset(p).unwrap());
            for cell in spec.cells().unwrap() {
                let held_out = spec.held_out_fraction(preset.as_ref(), &cell);
                held_out.unwrap_or_else(|e| panic!("{} cell {}: {e:#}", path.display(), cell.name));
            }
            spec.check_held_out(&spec.cells().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_selection_needs_its_held_out_data_before_anything_runs() {
        let without = |study: &str| {
            spec(&format!("study = \"{study}\"\nseeds = [0]\n[optimizers.sgd]\nlr = [0.1]\n[select]\nseeds = [1, 2, 3, 4, 5]\n"))
        };
        for (study, key) in [("split-mnist", "validation_fraction"), ("vit", "validation_fraction"), ("gpt", "test_fraction")] {
            let s = without(study);
            let e = s.check_held_out(&s.cells().unwrap()).unwrap_err().to_string();
            assert!(e.contains(&format!("[select] needs {key} > 0")), "{study}: {e}");
            let mut held_out = s.clone();
            held_out.set.insert(key.into(), 0.1.into());
            held_out.check_held_out(&held_out.cells().unwrap()).unwrap();
            // A cell with a bad value is left to fail when it runs.
            held_out.optimizers.insert("adamw".into(), toml::from_str("lr = [-1.0]").unwrap());
            held_out.check_held_out(&held_out.cells().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_folder_keeps_its_cells_and_may_gain_more() {
        let dir = tempfile::tempdir().unwrap();
        let rates = |lr: &str| spec(&format!("study = \"gpt\"\nseeds = [0]\n[optimizers.sgd]\nlr = {lr}\n")).cells().unwrap();
        let names = |cells: Vec<Cell>| cells.into_iter().map(|c| (c.name, c.overrides.last().unwrap().clone())).collect::<Vec<_>>();
        let first = names(settle_manifest(dir.path(), &rates("[0.1, 0.2]")).unwrap());
        assert_eq!(first, [("0000".into(), "optimizer.sgd.lr=0.1".into()), ("0001".into(), "optimizer.sgd.lr=0.2".into())]);
        assert_eq!(names(settle_manifest(dir.path(), &rates("[0.1, 0.2]")).unwrap()), first);
        // Added cells are numbered after the saved ones, which keep their names.
        let more = names(settle_manifest(dir.path(), &rates("[0.05, 0.1, 0.2]")).unwrap());
        assert_eq!(more[0], ("0002".into(), "optimizer.sgd.lr=0.05".into()));
        assert_eq!(more[1..], first[..]);
        assert_eq!(names(manifest(dir.path()).unwrap()), more);
        let e = settle_manifest(dir.path(), &rates("[0.1, 0.3]")).unwrap_err().to_string();
        assert!(e.contains("holds a sweep of other cells (2 of its 3"), "{e}");
        let e = settle_manifest(tempfile::tempdir().unwrap().path(), &rates("[0.1, 0.1]")).unwrap_err().to_string();
        assert!(e.contains("lists one cell twice"), "{e}");
        // The same cells under another [select]: the folder's copy of the spec is the one run last.
        let dir = tempfile::tempdir().unwrap();
        let tuned = spec(
            "study = \"gpt\"\nseeds = [0]\n[set]\ntest_fraction = 0.1\n[optimizers.sgd]\nlr = [0.1]\n[select]\nseeds = [1, 2, 3, 4, 5]\n",
        );
        prepare(&tuned, dir.path()).unwrap();
        let mut per_point = tuned.clone();
        per_point.select.as_mut().unwrap().per_point = true;
        prepare(&per_point, dir.path()).unwrap();
        assert_eq!(SweepSpec::read(&dir.path().join(SPEC)).unwrap(), per_point);
    }
}
