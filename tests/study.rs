//! The studies end to end on small synthetic data: what they write, what they
//! must show, divergence, failures kept inside their run, and stop/resume.

use std::path::Path;

use indicatif::ProgressBar;
use optlab::backend::Cpu;
use optlab::data::text::Corpus;
use optlab::data::{Dataset, Split, Task, tasks};
use optlab::experiments::folder::StudyFolder;
use optlab::experiments::gpt::{GptStudy, GptStudyConfig};
use optlab::experiments::provenance::Provenance;
use optlab::experiments::records::Records;
use optlab::experiments::split_mnist::{SplitStudy, make_tasks};
use optlab::experiments::study::{self, Evaluation, Protocol, Report, RunEnd, Summary};
use optlab::experiments::trainer::{BatchLoss, Settings};
use optlab::experiments::{SplitMnistConfig, StudyConfig, summary};
use optlab::models::ParamStore;
use optlab::record::{read_table, schema};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Ten well-separated Gaussian classes in 24 "pixels".
fn blobs(per_class: usize, seed: u64) -> Dataset {
    let mut centers = StdRng::seed_from_u64(99);
    let centers: Vec<f32> = (0..240).map(|_| centers.random_range(-1.0..1.0)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Vec<u8> = (0..per_class * 10).map(|i| (i % 10) as u8).collect();
    let images = labels
        .iter()
        .flat_map(|&l| (0..24).map(|d| 2.0 * centers[l as usize * 24 + d] + 0.5 * rng.random_range(-1.0..1.0)).collect::<Vec<_>>())
        .collect();
    Dataset { images, labels, pixels: 24, channels: 1 }
}

fn config(overrides: &[&str]) -> SplitMnistConfig {
    let base = ["hidden=[32, 32]", "batch_size=16", "probe_every=4", "eval_batch=64", "standardize=false", "epochs_per_task=3"];
    let all: Vec<String> = base.iter().chain(overrides).map(|s| s.to_string()).collect();
    SplitMnistConfig::resolve(None, &all).unwrap()
}

fn blob_tasks(config: &SplitMnistConfig) -> Vec<Task> {
    let split = Split { train: blobs(120, 1), test: blobs(20, 2) };
    tasks::class_incremental(&split, &config.class_groups).unwrap()
}

/// Runs `protocol`'s study in `out` as `exp` does: a new folder, or the same one resumed.
fn run_protocol<P: Protocol<Cpu>, C: StudyConfig>(kind: &str, config: &C, protocol: &P, out: &Path, stop_after: Option<usize>) -> Report {
    let resume = out.join("config.toml").exists();
    let mut provenance = Provenance::now(&Cpu, Default::default());
    study::run_study(&Cpu, kind, config, protocol, out, resume, stop_after, &mut provenance, &ProgressBar::hidden()).unwrap()
}

fn run_tasks(config: &SplitMnistConfig, tasks: &[Task], out: &Path, stop_after: Option<usize>) -> Report {
    run_protocol("split-mnist", config, &SplitStudy::new(config, tasks).unwrap(), out, stop_after)
}

fn run(config: &SplitMnistConfig, out: &Path, stop_after: Option<usize>) -> Report {
    run_tasks(config, &blob_tasks(config), out, stop_after)
}

fn column_strings(dir: &Path, table: &schema::Table, col: &str) -> Vec<String> {
    read_table(dir, table).unwrap().column(col).unwrap().str().unwrap().iter().map(|s| s.unwrap().to_string()).collect()
}

fn column_f64(dir: &Path, table: &schema::Table, col: &str) -> Vec<Option<f64>> {
    read_table(dir, table).unwrap().column(col).unwrap().f64().unwrap().iter().collect()
}

#[test]
fn study_writes_every_table_and_shows_forgetting() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"sgd\", \"muon\", \"shampoo\"]"]);
    run(&c, dir.path(), None);

    // Every table but `validation`, which language-model studies write.
    for table in schema::ALL.into_iter().filter(|t| t.name != schema::VALIDATION.name) {
        let df = read_table(dir.path(), table).unwrap();
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        let want: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        assert_eq!(names, want, "table {}", table.name);
        assert!(df.height() > 0, "table {} is empty", table.name);
    }
    // 3 runs × 5 tasks × (5 tasks + the union) accuracy rows.
    assert_eq!(read_table(dir.path(), &schema::ACCURACY).unwrap().height(), 3 * 5 * 6);
    // The naive class-incremental protocol: a shared head, no replay — task 0 is
    // learned, then forgotten by SGD.
    let summaries = summary::summarize(dir.path(), &c.optimizers).unwrap();
    let sgd = &summaries[0];
    assert_eq!(sgd.label, "sgd");
    assert!(sgd.forgetting.mean > 0.5, "SGD forgetting {:?}", sgd.forgetting);
    assert!(sgd.per_task[4] > 0.9, "last task learned: {:?}", sgd.per_task);
    let acc = read_table(dir.path(), &schema::ACCURACY).unwrap();
    let sgd_first = (0..acc.height())
        .find(|&k| {
            acc.column("run").unwrap().str().unwrap().get(k) == Some("sgd-s0")
                && acc.column("eval_task").unwrap().i64().unwrap().get(k) == Some(0)
        })
        .map(|k| acc.column("accuracy").unwrap().f64().unwrap().get(k).unwrap())
        .unwrap();
    assert!(sgd_first > 0.95, "SGD on task 0 right after task 0: {sgd_first}");
    // Muon's probes include its direction before and after orthogonalization.
    let tensors = column_strings(dir.path(), &schema::SPECTRA, "tensor");
    for kind in ["weight", "gradient", "update", "muon_pre_orthogonalization", "muon_post_orthogonalization", "shampoo_preconditioned"] {
        assert!(tensors.iter().any(|t| t == kind), "no {kind} spectra");
    }
    let table = summary::render(&summaries);
    assert!(table.contains("muon") && table.contains("erank:fc1") && table.contains("BWT"), "{table}");
    // Each hidden layer's representations, with a rank no larger than its width
    // and cosines that are cosines.
    for s in &summaries {
        let names: Vec<&str> = s.representations.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, c.hidden.iter().enumerate().map(|(i, _)| format!("fc{}", i + 1)).collect::<Vec<_>>(), "{}", s.label);
        for (r, &width) in s.representations.iter().zip(&c.hidden) {
            assert!(r.effective_rank.mean >= 1.0 && r.effective_rank.mean <= width as f64, "{}: {r:?}", s.label);
            assert!(r.cosine_mean.mean.abs() <= 1.0 && r.cosine_sd.mean >= 0.0, "{}: {r:?}", s.label);
        }
    }
    assert!(table.contains("representations after the last task"), "{table}");
    // The summary's numbers are the accuracy table's, in f64: the final
    // all-class accuracy equals the all-class row after the last task, exactly.
    let runs = read_table(dir.path(), &schema::RUNS).unwrap();
    let ids = column_strings(dir.path(), &schema::RUNS, "run");
    let finals = column_f64(dir.path(), &schema::RUNS, "final_all_accuracy");
    for (id, fin) in ids.iter().zip(finals) {
        let (run, after, eval, a) = (
            acc.column("run").unwrap().str().unwrap(),
            acc.column("after_task").unwrap().i64().unwrap(),
            acc.column("eval_task").unwrap().i64().unwrap(),
            acc.column("accuracy").unwrap().f64().unwrap(),
        );
        let row = (0..acc.height()).find(|&k| run.get(k) == Some(id) && after.get(k) == Some(4) && eval.get(k).is_none()).unwrap();
        assert_eq!(fin, a.get(row), "{id}");
    }
    assert_eq!(runs.height(), 3);
    // Each row names the session that wrote it; its provenance file says what ran.
    let (sessions, commits) =
        (column_strings(dir.path(), &schema::RUNS, "session"), column_strings(dir.path(), &schema::RUNS, "git_commit"));
    let file = dir.path().join("provenance").join(format!("{}.toml", sessions[0]));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(text.contains(&format!("git_commit = \"{}\"", commits[0])) && text.contains("ended = ") && text.contains("cpu: "), "{text}");
    // No staging folder is left behind, and none is read as a table.
    assert!(!dir.path().join(".staging").exists());
    // A second study into the same folder is refused rather than mixed in.
    let table = c.resolved_table().unwrap();
    let err = StudyFolder::create(dir.path(), "split-mnist", &table).err().unwrap().to_string();
    assert!(err.contains("already holds a study"), "{err}");
}

#[test]
fn figures_are_drawn_from_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"sgd\", \"adamw\"]", "epochs_per_task=1", "seeds=[0, 1]"]);
    run(&c, dir.path(), None);
    let files = optlab::experiments::figures::plot_study(dir.path()).unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    let kinds =
        ["loss", "effective_rank", "stable_rank", "direction_rank", "spectra", "sparsity", "accuracy_matrix", "class_cosine", "covariance"];
    assert_eq!(names, kinds, "every kind of figure, for a study with everything");
    for name in kinds {
        let png = std::fs::read(dir.path().join("figures").join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}.png: {} bytes", png.len());
        let svg = std::fs::read_to_string(dir.path().join("figures").join(format!("{name}.svg"))).unwrap();
        // The SVG holds the labels as text: the optimizers and the matrices by name.
        assert!(svg.contains("<svg") && svg.contains("sgd") && svg.contains("adamw"), "{name}.svg");
        assert!(names.contains(&name));
    }
    let svg = |name: &str| std::fs::read_to_string(dir.path().join(format!("figures/{name}.svg"))).unwrap();
    assert!(svg("effective_rank").contains("fc1") && svg("effective_rank").contains("fc3"), "a panel per weight matrix");
    // Spectra at every stage: before training (if probed) and after each of the 5 tasks.
    assert!((0..5).all(|t| svg("spectra").contains(&format!("after task {t}"))), "{}", svg("spectra"));
    assert!(svg("direction_rank").contains("sgd: gradient") && svg("direction_rank").contains("adamw: update"));
    assert!(svg("sparsity").contains("fc1: dead units") && svg("class_cosine").contains("fc2 after task 4"));
    // Two seeds: the curves carry 95% bands (filled polygons) beside their lines.
    assert!(svg("effective_rank").contains("<polygon"), "no interval band");
    // A corrupt part is an error naming it, not a figure left out.
    let part = std::fs::read_dir(dir.path().join("activations")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&part, b"not parquet").unwrap();
    let Err(e) = optlab::experiments::figures::plot_study(dir.path()) else { panic!("a corrupt part was drawn around") };
    let e = format!("{e:#}");
    assert!(e.contains(&part.display().to_string()), "{e}");
}

#[test]
fn representations_every_epoch_record_each_epochs_end_and_summarise_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["protocol=\"joint\"", "optimizers=[\"adamw\"]", "representations_every_epoch=true"]);
    let split = Split { train: blobs(12, 1), test: blobs(20, 2) };
    run_tasks(&c, &make_tasks(&c, &split).unwrap(), dir.path(), None);
    // 120 examples in batches of 16: 8 steps an epoch, 3 epochs, one task.
    let acts = read_table(dir.path(), &schema::ACTIVATIONS).unwrap();
    let (name, step) = (acts.column("name").unwrap().str().unwrap(), acts.column("step").unwrap().i64().unwrap());
    let fc2: Vec<usize> = (0..acts.height()).filter(|&k| name.get(k) == Some("fc2")).collect();
    assert_eq!(fc2.iter().map(|&k| step.get(k).unwrap()).collect::<Vec<_>>(), [8, 16, 24], "one row per epoch's end");
    // The rank changes as training goes, and the summary takes the last one.
    let rank = acts.column("effective_rank").unwrap().f64().unwrap();
    let ranks: Vec<f64> = fc2.iter().map(|&k| rank.get(k).unwrap()).collect();
    assert!(ranks[0] != ranks[2], "{ranks:?}");
    let s = summary::summarize(dir.path(), &c.optimizers).unwrap();
    let fc2_summary = s[0].representations.iter().find(|r| r.name == "fc2").unwrap();
    assert_eq!((fc2_summary.effective_rank.n, fc2_summary.effective_rank.mean), (1, ranks[2]));
    // ReLU's sparsity is its exact zeros.
    let zeros = acts.column("zero_fraction").unwrap().f64().unwrap().get(fc2[2]).unwrap();
    assert!(zeros > 0.0 && fc2_summary.sparsity.mean == zeros, "{:?} against {zeros}", fc2_summary.sparsity);
    assert!(summary::render(&s).contains(&format!("{zeros:.4}")));
    // The sparsity figure draws every evaluation, rank included.
    optlab::experiments::figures::plot_study(dir.path()).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("figures/sparsity.svg")).unwrap();
    assert!(svg.contains("fc2: effective rank") && svg.matches("<circle").count() >= 3 * 3 * 2, "{svg}");

    // Off (the default): the task's end only, and training is the same.
    let every_epoch = dir;
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["protocol=\"joint\"", "optimizers=[\"adamw\"]"]);
    run_tasks(&c, &make_tasks(&c, &split).unwrap(), dir.path(), None);
    let steps: Vec<Option<i64>> =
        read_table(dir.path(), &schema::ACTIVATIONS).unwrap().column("step").unwrap().i64().unwrap().iter().collect();
    assert_eq!(steps, [Some(24), Some(24)], "fc1 and fc2 at the end");
    assert_eq!(column_f64(dir.path(), &schema::STEPS, "loss"), column_f64(every_epoch.path(), &schema::STEPS, "loss"));
}

#[test]
fn tables_show_intervals_over_seeds_and_paired_differences() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"sgd\", \"adamw\"]", "seeds=[0, 1, 2]", "epochs_per_task=1"]);
    run(&c, dir.path(), None);
    let summaries = summary::summarize(dir.path(), &c.optimizers).unwrap();
    let sgd = &summaries[0];
    // The interval is the Student-t one over the three seeds' own numbers.
    let finals: Vec<f64> = sgd.by_seed.values().map(|v| v.0).collect();
    let expected = optlab::metrics::Interval::of(&finals);
    assert_eq!((sgd.final_all.n, sgd.final_all.mean, sgd.final_all.half_width), (3, expected.mean, expected.half_width));
    let table = summary::render(&summaries);
    assert!(table.contains(&format!("{:.4} ± {:.4}", expected.mean, expected.half_width)), "{table}");
    assert!(
        table.contains("final accuracy (all), paired by seed") && table.contains("sgd − adamw") && table.contains("over 3 seeds"),
        "{table}"
    );
}

#[test]
fn a_validation_split_is_held_out_recorded_and_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"adamw\"]", "validation_fraction=0.25", "validation_seed=3", "epochs_per_task=1"]);
    run(&c, dir.path(), None);
    // 240 training examples per task: 60 held out, 180 trained on (12 batches of 16 → 12 steps).
    let saved: toml::Table = toml::from_str(&std::fs::read_to_string(dir.path().join("validation.toml")).unwrap()).unwrap();
    let held: Vec<Vec<i64>> = saved["held_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().iter().map(|i| i.as_integer().unwrap()).collect())
        .collect();
    assert_eq!(held.len(), 5);
    assert!(held.iter().all(|t| t.len() == 60 && t.windows(2).all(|w| w[0] < w[1]) && t[59] < 240), "sorted positions in each task");
    assert_eq!(read_table(dir.path(), &schema::STEPS).unwrap().height(), 5 * 12);
    // Test and validation rows side by side; the summary's validation accuracy is the last all-classes validation row.
    let splits = column_strings(dir.path(), &schema::ACCURACY, "split");
    assert_eq!(splits.iter().filter(|s| *s == "validation").count(), 5 * 6);
    assert_eq!(splits.iter().filter(|s| *s == "test").count(), 5 * 6);
    let acc = read_table(dir.path(), &schema::ACCURACY).unwrap();
    let (after, eval, a) = (
        acc.column("after_task").unwrap().i64().unwrap(),
        acc.column("eval_task").unwrap().i64().unwrap(),
        acc.column("accuracy").unwrap().f64().unwrap(),
    );
    let last_validation =
        (0..acc.height()).find(|&k| splits[k] == "validation" && after.get(k) == Some(4) && eval.get(k).is_none()).unwrap();
    assert_eq!(column_f64(dir.path(), &schema::RUNS, "final_validation_accuracy"), [a.get(last_validation)]);
    // Too small a task for the fraction is a clear error.
    let tiny = config(&["validation_fraction=0.001"]);
    let err = SplitStudy::new(&tiny, &blob_tasks(&tiny)).err().unwrap().to_string();
    assert!(err.contains("holds out 0 of task 0's 240 training examples"), "{err}");
}

#[test]
fn divergence_is_recorded_and_other_runs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"boom\", \"adamw\"]", "optimizer.boom.kind=\"sgd\"", "optimizer.boom.lr=1e30"]);
    run(&c, dir.path(), None);
    let runs = read_table(dir.path(), &schema::RUNS).unwrap();
    let (status, runs_ids) = (column_strings(dir.path(), &schema::RUNS, "status"), column_strings(dir.path(), &schema::RUNS, "run"));
    let boom = runs_ids.iter().position(|r| *r == "boom-s0").unwrap();
    let errors = runs.column("error").unwrap().str().unwrap().get(boom).map(String::from);
    assert_eq!(status[boom], "diverged", "{errors:?}");
    let step = runs.column("diverged_step").unwrap().i64().unwrap().get(boom).unwrap();
    assert!(step >= 1);
    assert_eq!(status[1 - boom], "completed");
    // Steps written before the divergence stay on record.
    let boom_steps = column_strings(dir.path(), &schema::STEPS, "run").iter().filter(|r| *r == "boom-s0").count();
    assert_eq!(boom_steps as i64, step - 1);
}

#[test]
fn stop_and_resume_reproduce_an_uninterrupted_study() {
    let c = config(&["optimizers=[\"shampoo\", \"muon\", \"soap\"]"]);
    let whole = tempfile::tempdir().unwrap();
    run(&c, whole.path(), None);
    let pieces = tempfile::tempdir().unwrap();
    let report = run(&c, pieces.path(), Some(2));
    assert!(report.runs.iter().all(|(_, e)| *e == RunEnd::Paused { segments_done: 2 }), "{report:?}");
    // Paused: the report lists every run as missing, with how far it got.
    let text = summary::report(pieces.path()).unwrap();
    assert!(
        text.contains("no run has finished yet") && text.contains("shampoo-s0 (checkpointed at step") && text.contains("2 segments done"),
        "{text}"
    );
    let paused_seconds = study::saved_state(pieces.path(), "shampoo-s0").unwrap().unwrap().seconds;
    // A part left in staging by an attempt killed before its checkpoint is discarded.
    let staged = pieces.path().join(".staging/muon-s0/00002/steps");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::copy(pieces.path().join("steps").join("part-muon-s0-00000-00000.parquet"), staged.join("part-muon-s0-00002-00000.parquet"))
        .unwrap();
    run(&c, pieces.path(), Some(2));
    run(&c, pieces.path(), None);
    for (table, col) in
        [(&schema::ACCURACY, "accuracy"), (&schema::STEPS, "loss"), (&schema::SPECTRA, "effective_rank"), (&schema::COUNTERS, "value")]
    {
        let (a, b) = (column_f64(whole.path(), table, col), column_f64(pieces.path(), table, col));
        assert_eq!(a.len(), b.len(), "{} rows", table.name);
        assert_eq!(a, b, "{}.{col} differs after stop/resume", table.name);
    }
    // The record stays true: counters continue (Shampoo computed roots in every
    // session), summary numbers are identical, and seconds accumulate.
    for col in ["final_all_accuracy", "average_accuracy", "backward_transfer", "forgetting"] {
        assert_eq!(column_f64(whole.path(), &schema::RUNS, col), column_f64(pieces.path(), &schema::RUNS, col), "{col}");
    }
    let names = column_strings(pieces.path(), &schema::COUNTERS, "name");
    let values = column_f64(pieces.path(), &schema::COUNTERS, "value");
    let roots: Vec<f64> = names.iter().zip(&values).filter(|(n, _)| *n == "shampoo_roots_computed").map(|(_, v)| v.unwrap()).collect();
    assert!(roots.windows(2).all(|w| w[1] > w[0]), "roots computed must keep growing across sessions: {roots:?}");
    let ids = column_strings(pieces.path(), &schema::RUNS, "run");
    let seconds = column_f64(pieces.path(), &schema::RUNS, "seconds");
    let shampoo = ids.iter().position(|r| r == "shampoo-s0").unwrap();
    assert!(
        seconds[shampoo].unwrap() > paused_seconds,
        "seconds {:?} must add to the {paused_seconds} s before the pause",
        seconds[shampoo]
    );
}

#[test]
fn a_corrupt_checkpoint_fails_its_run_and_is_kept() {
    let c = config(&["optimizers=[\"sgd\", \"adamw\"]"]);
    let dir = tempfile::tempdir().unwrap();
    run(&c, dir.path(), Some(1));
    let ck = study::checkpoint_path(dir.path(), "sgd-s0");
    let mut bytes = std::fs::read(&ck).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&ck, &bytes).unwrap();
    let report = run(&c, dir.path(), None);
    let RunEnd::Failed { error, .. } = &report.runs[0].1 else { panic!("{report:?}") };
    assert!(error.contains("corrupt") && error.contains("sgd-s0.safetensors"), "{error}");
    assert_eq!(report.runs[1].1, RunEnd::Completed);
    assert_eq!(std::fs::read(&ck).unwrap(), bytes, "the damaged checkpoint is left for the user");
    let status = column_strings(dir.path(), &schema::RUNS, "status");
    let ids = column_strings(dir.path(), &schema::RUNS, "run");
    assert_eq!(status[ids.iter().position(|r| r == "sgd-s0").unwrap()], "failed");
}

/// The blob study, with one run that errors and one that panics mid-way.
struct Faulty<'a> {
    inner: SplitStudy<'a>,
}

impl Protocol<Cpu> for Faulty<'_> {
    type Model = <SplitStudy<'static> as Protocol<Cpu>>::Model;
    type Batch = <SplitStudy<'static> as Protocol<Cpu>>::Batch;
    fn segments(&self) -> usize {
        Protocol::<Cpu>::segments(&self.inner)
    }
    fn segment_steps(&self, s: usize) -> u64 {
        Protocol::<Cpu>::segment_steps(&self.inner, s)
    }
    fn task_of(&self, s: usize) -> usize {
        Protocol::<Cpu>::task_of(&self.inner, s)
    }
    fn describe(&self, s: usize) -> String {
        Protocol::<Cpu>::describe(&self.inner, s)
    }
    fn build_model(&self, b: &Cpu, seed: u64) -> anyhow::Result<Self::Model> {
        self.inner.build_model(b, seed)
    }
    fn store(m: &Self::Model) -> &ParamStore<Cpu> {
        m.store()
    }
    fn store_mut(m: &mut Self::Model) -> &mut ParamStore<Cpu> {
        m.store_mut()
    }
    fn batches(&self, seed: u64, s: usize) -> anyhow::Result<Vec<(usize, Self::Batch)>> {
        anyhow::ensure!(!(seed == 1 && s == 2), "no batches for task 2 (injected)");
        Protocol::<Cpu>::batches(&self.inner, seed, s)
    }
    fn loss_and_gradients(&self, b: &Cpu, m: &mut Self::Model, batch: &Self::Batch) -> anyhow::Result<BatchLoss> {
        self.inner.loss_and_gradients(b, m, batch)
    }
    fn evaluate(&self, b: &Cpu, m: &mut Self::Model, at: Evaluation, scores: &mut Vec<f64>, r: &mut Records) -> anyhow::Result<()> {
        if at.run == "sgd-s2" && at.segment == 1 {
            panic!("probe exploded (injected)");
        }
        self.inner.evaluate(b, m, at, scores, r)
    }
    fn summary(&self, scores: &[f64]) -> Summary {
        Protocol::<Cpu>::summary(&self.inner, scores)
    }
    fn settings(&self) -> Settings {
        Protocol::<Cpu>::settings(&self.inner)
    }
}

#[test]
fn failures_stay_inside_their_run_and_resume_retries_them() {
    let c = config(&["optimizers=[\"sgd\"]", "seeds=[0, 1, 2]", "epochs_per_task=1"]);
    let tasks = blob_tasks(&c);
    let dir = tempfile::tempdir().unwrap();
    let faulty = Faulty { inner: SplitStudy::new(&c, &tasks).unwrap() };
    let report = run_protocol("split-mnist", &c, &faulty, dir.path(), None);
    assert_eq!(report.runs[0].1, RunEnd::Completed);
    let RunEnd::Failed { error, step } = &report.runs[1].1 else { panic!("{report:?}") };
    assert!(error.contains("drawing the segment's batches") && error.contains("injected"), "{error}");
    assert_eq!(*step, 2 * 15, "two tasks of 15 steps were trained");
    let RunEnd::Failed { error, .. } = &report.runs[2].1 else { panic!("{report:?}") };
    assert!(error.contains("evaluation: crashed: probe exploded"), "{error}");
    // The runs table says so, with the step and the message.
    let status = column_strings(dir.path(), &schema::RUNS, "status");
    assert_eq!(status.iter().filter(|s| *s == "failed").count(), 2, "{status:?}");
    let errors: Vec<Option<String>> = read_table(dir.path(), &schema::RUNS)
        .unwrap()
        .column("error")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.map(String::from))
        .collect();
    assert!(errors.iter().flatten().any(|e| e.contains("injected")), "{errors:?}");
    // The summary is written all the same; --resume retries the failed runs
    // from their checkpoints, and with the fault gone they complete.
    assert!(summary::report(dir.path()).unwrap().contains("sgd"));
    let report = run_tasks(&c, &tasks, dir.path(), None);
    assert!(report.runs.iter().all(|(_, e)| *e == RunEnd::Completed), "{report:?}");
    let status = column_strings(dir.path(), &schema::RUNS, "status");
    assert_eq!(status, ["completed"; 3], "one row per run, the failed rows replaced");
}

#[test]
fn a_study_whose_runs_all_fail_still_reports() {
    let c = config(&["optimizers=[\"sgd\"]", "seeds=[1]", "epochs_per_task=1"]);
    let tasks = blob_tasks(&c);
    let dir = tempfile::tempdir().unwrap();
    let report = run_protocol("split-mnist", &c, &Faulty { inner: SplitStudy::new(&c, &tasks).unwrap() }, dir.path(), None);
    assert_eq!(report.failed(), ["sgd-s1"]);
    let text = summary::report(dir.path()).unwrap();
    assert!(text.contains("sgd"), "{text}");
}

#[test]
fn permuted_protocol_runs_all_classes_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["protocol=\"permuted\"", "permuted_tasks=3", "optimizers=[\"adamw\"]"]);
    let split = Split { train: blobs(30, 1), test: blobs(10, 2) };
    let tasks = make_tasks(&c, &split).unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.classes.len() == 10 && t.test.len() == 100));
    run_tasks(&c, &tasks, dir.path(), None);
    // 3 tasks × (3 + the union) accuracy rows; every task's first evaluation learned something.
    let acc = read_table(dir.path(), &schema::ACCURACY).unwrap();
    assert_eq!(acc.height(), 3 * 4);
    let first = acc.column("accuracy").unwrap().f64().unwrap().get(0).unwrap();
    assert!(first > 0.5, "permuted task 0 after training it: {first}");
}

#[test]
fn vit_joint_study_learns_and_probes_its_class_token() {
    // 3-channel 4×4 "images": three overlapping 16-feature windows of the blobs.
    let square = |d: Dataset| Dataset {
        images: d.images.chunks(24).flat_map(|x| [&x[..16], &x[8..], &x[4..20]].concat()).collect(),
        labels: d.labels,
        pixels: 48,
        channels: 3,
    };
    let split = Split { train: square(blobs(60, 1)), test: square(blobs(10, 2)) };
    let c = config(&[
        "model=\"vit\"",
        "protocol=\"joint\"",
        "vit={ patch = 2, dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }",
        "optimizers=[\"adamw\", \"muon\", \"shampoo\"]",
        "epochs_per_task=4",
        "optimizer.adamw.lr=3e-3",
    ]);
    let tasks = make_tasks(&c, &split).unwrap();
    assert_eq!(tasks.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    run_tasks(&c, &tasks, dir.path(), None);
    let s = summary::summarize(dir.path(), &c.optimizers).unwrap();
    for o in &s {
        assert!(o.final_all.mean > 0.5, "{}: ViT accuracy {:?}", o.label, o.final_all);
    }
    // One task has nothing to forget: the table shows the training loss of the
    // last epoch, which is each run's mean over its epoch-3 steps, and no forgetting.
    let table = summary::render(&s);
    assert!(table.contains("train loss") && !table.contains("BWT") && !table.contains("forgetting"), "{table}");
    let steps = read_table(dir.path(), &schema::STEPS).unwrap();
    let (run, epoch, loss) = (
        steps.column("run").unwrap().str().unwrap(),
        steps.column("epoch").unwrap().i64().unwrap(),
        steps.column("loss").unwrap().f64().unwrap(),
    );
    let last_epoch: Vec<f64> =
        (0..steps.height()).filter(|&k| run.get(k) == Some("adamw-s0") && epoch.get(k) == Some(3)).map(|k| loss.get(k).unwrap()).collect();
    let want = last_epoch.iter().sum::<f64>() / last_epoch.len() as f64;
    assert!(!last_epoch.is_empty() && (s[0].train_loss.mean - want).abs() < 1e-12, "{:?} against {want}", s[0].train_loss);
    // Muon orthogonalized the attention and MLP matrices; the class token was probed.
    let params = column_strings(dir.path(), &schema::SPECTRA, "param");
    assert!(
        params.iter().any(|p| p == "blocks.0.attn.qkv.weight") && !params.iter().any(|p| p == "pos_embed"),
        "matrices only, embeddings excluded"
    );
    // The patch embedding reads all three channels of a 2×2 patch.
    let embed = params.iter().position(|p| p == "patch_embed.weight").expect("patch embedding probed");
    let spectra = read_table(dir.path(), &schema::SPECTRA).unwrap();
    assert_eq!(spectra.column("cols").unwrap().i64().unwrap().get(embed), Some(12));
    // Probed: each block's GELU outputs (sparsity at |a| < 0.01) and the class token (with its covariance).
    let acts = read_table(dir.path(), &schema::ACTIVATIONS).unwrap();
    let names = column_strings(dir.path(), &schema::ACTIVATIONS, "name");
    let cls = names.iter().position(|n| *n == "cls").expect("a cls row");
    let gelu = names.iter().position(|n| *n == "blocks.0.mlp.gelu").expect("a GELU row");
    assert_eq!(acts.column("width").unwrap().i64().unwrap().get(cls), Some(16));
    let near_zero = acts.column("near_zero_fraction").unwrap().f64().unwrap().get(gelu).unwrap();
    assert!((0.0..1.0).contains(&near_zero), "GELU near-zero fraction {near_zero}");
    let cov = acts.column("covariance").unwrap().list().unwrap().get_as_series(cls).unwrap();
    assert_eq!(cov.len(), 16 * 16);
    assert!(acts.column("covariance").unwrap().list().unwrap().get_as_series(gelu).is_none(), "token-level layers have no covariance");
}

fn gpt_setup(dir: &Path, extra: &[&str]) -> (GptStudyConfig, Corpus) {
    let text: Vec<u8> = (0..4000).map(|i| b"the quick brown fox jumps over the lazy dog. "[i % 45]).collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text).unwrap();
    let overrides = [
        "model={ dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }",
        "seq=16",
        "batch_size=4",
        "steps=30",
        "probe_every=10",
        "eval_every=10",
    ];
    let all: Vec<String> = overrides.iter().chain(extra).map(|s| s.to_string()).collect();
    let c = GptStudyConfig::resolve(None, &all).unwrap();
    let corpus = Corpus::load(Some(&path), 0.2, c.test_fraction, c.tokenizer, None).unwrap();
    (c, corpus)
}

#[test]
fn gpt_study_records_gradient_ranks_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let (c, corpus) = gpt_setup(dir.path(), &[]);
    let out = dir.path().join("out");
    run_protocol("gpt", &c, &GptStudy::new(&c, &corpus).unwrap(), &out, None);
    // Held-out loss falls below the uniform 8 bits per byte on this repetitive text.
    let val = read_table(&out, &schema::VALIDATION).unwrap();
    let bpb: Vec<f64> = val.column("bits_per_byte").unwrap().f64().unwrap().iter().map(Option::unwrap).collect();
    assert_eq!(bpb.len(), 2 * 3, "2 optimizers × evaluations at steps 10, 20, 30");
    assert!(bpb.iter().all(|&b| b < 8.0), "{bpb:?}");
    let tensors = column_strings(&out, &schema::SPECTRA, "tensor");
    assert!(tensors.iter().any(|t| t == "gradient") && tensors.iter().any(|t| t == "muon_post_orthogonalization"));
    // The shared trainer records every parameter's step, as in the other studies.
    assert_eq!(read_table(&out, &schema::PARAM_STEPS).unwrap().height(), 2 * 30 * GPT_PARAMS);
    let table = summary::report(&out).unwrap();
    assert!(table.contains("adam") && table.contains("muon") && table.contains("grad:qkv"), "{table}");
}

/// Parameters of the test GPT: embeddings, one block's 12 tensors, ln_f, head.
const GPT_PARAMS: usize = 2 + 12 + 2 + 2;

#[test]
fn gpt_study_trains_on_bpe_tokens_with_swiglu() {
    let dir = tempfile::tempdir().unwrap();
    let (c, corpus) =
        gpt_setup(dir.path(), &["tokenizer=\"gpt2\"", "model.feed_forward=\"swiglu\"", "optimizers=[\"adam\"]", "optimizer.adam.lr=0.01"]);
    assert!(corpus.train.iter().all(|&t| (t as usize) < c.tokenizer.vocab()) && corpus.validation.tokens_per_byte < 0.5);
    let out = dir.path().join("out");
    run_protocol("gpt", &c, &GptStudy::new(&c, &corpus).unwrap(), &out, None);
    // Below a uniform guess over the 50,257 tokens, in bits per held-out byte.
    let uniform = (50_257f64).log2() * corpus.validation.tokens_per_byte;
    let val = read_table(&out, &schema::VALIDATION).unwrap();
    let bpb: Vec<f64> = val.column("bits_per_byte").unwrap().f64().unwrap().iter().map(Option::unwrap).collect();
    assert!(bpb.last().is_some_and(|&b| b < 0.5 * uniform), "{bpb:?} against uniform {uniform}");
    // The up projection (w3) is a matrix of its own in the spectra.
    let params = column_strings(&out, &schema::SPECTRA, "param");
    assert!(params.iter().any(|p| p == "blocks.0.mlp.up.weight"), "{params:?}");
}

#[test]
fn gpt_pause_and_resume_reproduce_an_uninterrupted_study() {
    let dir = tempfile::tempdir().unwrap();
    // With a warmup-and-cosine schedule, which resumes from the step alone, and
    // a test split, whose loss is checkpointed beside validation's.
    let (c, corpus) =
        gpt_setup(dir.path(), &["schedule={ warmup_steps = 5, decay = \"cosine\", final_fraction = 0.1 }", "test_fraction=0.2"]);
    let study = GptStudy::new(&c, &corpus).unwrap();
    let (whole, pieces) = (dir.path().join("whole"), dir.path().join("pieces"));
    run_protocol("gpt", &c, &study, &whole, None);
    let report = run_protocol("gpt", &c, &study, &pieces, Some(1));
    assert!(report.paused());
    run_protocol("gpt", &c, &study, &pieces, Some(1));
    run_protocol("gpt", &c, &study, &pieces, None);
    for (table, col) in [
        (&schema::STEPS, "loss"),
        (&schema::VALIDATION, "loss"),
        (&schema::VALIDATION, "test_loss"),
        (&schema::SPECTRA, "effective_rank"),
        (&schema::PARAM_STEPS, "update_norm"),
    ] {
        assert_eq!(column_f64(&whole, table, col), column_f64(&pieces, table, col), "{}.{col} differs after pause/resume", table.name);
    }
    for col in ["final_validation_loss", "final_test_loss"] {
        assert_eq!(column_f64(&whole, &schema::RUNS, col), column_f64(&pieces, &schema::RUNS, col), "{col}");
    }
    let test = column_f64(&whole, &schema::RUNS, "final_test_loss");
    assert!(!test.is_empty() && test.iter().all(|l| l.is_some_and(f64::is_finite)), "{test:?}");
    // The lr column follows the schedule: Adam's 3e-4 warms up over 5 steps, then
    // falls along a cosine to a tenth of it at step 30.
    let steps = read_table(&whole, &schema::STEPS).unwrap();
    let (run, step, lr) = (
        steps.column("run").unwrap().str().unwrap(),
        steps.column("step").unwrap().i64().unwrap(),
        steps.column("lr").unwrap().f64().unwrap(),
    );
    let adam_lr =
        |s: i64| (0..steps.height()).find(|&k| run.get(k) == Some("adam-s0") && step.get(k) == Some(s)).and_then(|k| lr.get(k)).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(
        close(adam_lr(1), 3e-4 / 5.0) && close(adam_lr(5), 3e-4) && close(adam_lr(30), 3e-5),
        "{} {} {}",
        adam_lr(1),
        adam_lr(5),
        adam_lr(30)
    );
}

#[test]
fn gpt_overrides_merge_into_the_default_optimizer_tables() {
    let c = GptStudyConfig::resolve(None, &["optimizer.muon.lr=0.01".to_string()]).unwrap();
    let named = c.named_optimizers().unwrap();
    let table = c.resolved_table().unwrap();
    let muon = table["optimizer"]["muon"].as_table().unwrap();
    assert_eq!(muon["lr"].as_float().map(|x| x as f32), Some(0.01));
    // The default's other keys survive: Adam stays AdamW at 3e-4, Muon's auxiliary AdamW at 3e-4.
    assert_eq!(table["optimizer"]["adam"]["kind"].as_str(), Some("adamw"));
    assert_eq!(muon["aux_adamw"]["lr"].as_float().map(|x| x as f32), Some(3e-4));
    assert_eq!(named.len(), 2);
}

#[test]
fn optimizers_report_their_own_steps() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"muon\", \"anderson-gda\"]", "epochs_per_task=1"]);
    run(&c, dir.path(), None);
    let df = optlab::record::read_table(dir.path(), &optlab::record::schema::OPTIMIZER_STEPS).unwrap();
    let col = |n: &str| optlab::record::columns::strings(&df, n).unwrap();
    let (run_ids, params, names) = (col("run"), col("param"), col("name"));
    let (steps, values) = (optlab::record::columns::ints(&df, "step").unwrap(), optlab::record::columns::floats(&df, "value").unwrap());
    let rows = |run: &str, param: &str, name: &str| -> Vec<(i64, f64)> {
        (0..df.height())
            .filter(|&k| run_ids[k] == run && params[k] == param && names[k] == name)
            .map(|k| (steps[k].unwrap(), values[k].unwrap()))
            .collect()
    };
    // Muon's hidden 32×32 matrix: Keller's scale max(1, 32/32)^½ = 1 and 5 iterations, every step.
    let scale = rows("muon-s0", "fc2.weight", "muon_step_scale");
    let total = optlab::record::read_table(dir.path(), &optlab::record::schema::STEPS).unwrap().height() as i64 / 2;
    assert_eq!(scale.len() as i64, total, "one row per step");
    assert!(scale.iter().all(|&(_, v)| v == 1.0) && rows("muon-s0", "fc2.weight", "muon_ns_steps").iter().all(|&(_, v)| v == 5.0));
    assert!(rows("muon-s0", "fc1.weight", "muon_step_scale").is_empty(), "fc1 goes to the auxiliary AdamW");
    // AndersonGDA mixes 0, then 1, then 2 = memory differences.
    let memory: Vec<f64> = rows("anderson-gda-s0", "fc1.weight", "anderson_memory_used").into_iter().map(|(_, v)| v).take(4).collect();
    assert_eq!(memory, [0.0, 1.0, 2.0, 2.0]);
    assert!(rows("anderson-gda-s0", "fc1.weight", "anderson_mixing_norm").iter().skip(1).any(|&(_, v)| v > 0.0));
}

#[test]
fn every_new_optimizers_state_survives_a_stop() {
    // Checkpoints must hold all of each rule's state: Dion's right factors,
    // Anderson's history, NorMuon's second moments, AMSGrad's maximum, centered
    // RMSProp's three buffers, Muon's ns_tol iterates; Stiefel, L1-Stiefel, SL-Muon and Symplectic project only at step 1;
    // K-FAC's factors and inverses (recomputed every 3 steps here, so a stop falls between); GDA2's history and moments;
    // PSGD-Kron's factors (and its step-seeded draws).
    let c = config(&[
        "optimizers=[\"dion\", \"anderson-gda\", \"normuon\", \"amsgrad\", \"adadelta\", \"rms\", \"tol\", \"stiefel\", \"l1-stiefel\", \"sl-muon\", \"symplectic\", \"kfac\", \"gda2\", \"psgd-kron\"]",
        "optimizer.kfac.inverse_every=3",
        "optimizer.rms={ kind = \"rmsprop\", momentum = 0.9, centered = true }",
        "optimizer.tol={ kind = \"muon\", ns_tol = 0.05, coefficients = \"polar-express\", ns_steps = 8 }",
    ]);
    let whole = tempfile::tempdir().unwrap();
    run(&c, whole.path(), None);
    let pieces = tempfile::tempdir().unwrap();
    run(&c, pieces.path(), Some(2));
    run(&c, pieces.path(), None);
    for (table, col) in [(&schema::STEPS, "loss"), (&schema::OPTIMIZER_STEPS, "value"), (&schema::ACCURACY, "accuracy")] {
        let (a, b) = (column_f64(whole.path(), table, col), column_f64(pieces.path(), table, col));
        assert!(!a.is_empty(), "{} is empty", table.name);
        assert_eq!(a, b, "{}.{col} differs after stop/resume", table.name);
    }
}
