//! The split-MNIST protocol end to end on small synthetic data: what it writes,
//! what it must show, divergence, and stop/resume.

use std::path::Path;

use indicatif::ProgressBar;
use optlab::backend::Cpu;
use optlab::data::{Dataset, Split, tasks};
use optlab::experiments::split_mnist::run_study;
use optlab::experiments::{SplitMnistConfig, summary};
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

fn run(config: &SplitMnistConfig, out: &Path, resume: bool, stop_after: Option<usize>) {
    let split = Split { train: blobs(120, 1), test: blobs(20, 2) };
    let tasks = tasks::class_incremental(&split, &config.class_groups).unwrap();
    run_study(&Cpu, config, &tasks, out, resume, stop_after, &ProgressBar::hidden()).unwrap();
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
    run(&c, dir.path(), false, None);

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
    assert!(sgd.forgetting.0 > 0.5, "SGD forgetting {:?}", sgd.forgetting);
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
    assert!(table.contains("muon") && table.contains("erank:fc1"), "{table}");
    // A second study into the same directory is refused rather than mixed in.
    let split = Split { train: blobs(4, 1), test: blobs(2, 2) };
    let t = tasks::class_incremental(&split, &c.class_groups).unwrap();
    assert!(run_study(&Cpu, &c, &t, dir.path(), false, None, &ProgressBar::hidden()).is_err());
}

#[test]
fn divergence_is_recorded_and_other_runs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["optimizers=[\"boom\", \"adamw\"]", "optimizer.boom.kind=\"sgd\"", "optimizer.boom.lr=1e30"]);
    run(&c, dir.path(), false, None);
    let runs = read_table(dir.path(), &schema::RUNS).unwrap();
    let (status, runs_ids) = (column_strings(dir.path(), &schema::RUNS, "status"), column_strings(dir.path(), &schema::RUNS, "run"));
    let boom = runs_ids.iter().position(|r| *r == "boom-s0").unwrap();
    assert_eq!(status[boom], "diverged");
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
    run(&c, whole.path(), false, None);
    let pieces = tempfile::tempdir().unwrap();
    run(&c, pieces.path(), false, Some(2));
    // A stale part from an attempt killed after its last checkpoint is discarded.
    let stale = pieces.path().join("steps").join("part-muon-s0-t2-00000.parquet");
    std::fs::copy(pieces.path().join("steps").join("part-muon-s0-t0-00000.parquet"), &stale).unwrap();
    run(&c, pieces.path(), true, Some(2));
    run(&c, pieces.path(), true, None);
    for (table, col) in [(&schema::ACCURACY, "accuracy"), (&schema::STEPS, "loss"), (&schema::SPECTRA, "effective_rank")] {
        let (a, b) = (column_f64(whole.path(), table, col), column_f64(pieces.path(), table, col));
        assert_eq!(a.len(), b.len(), "{} rows", table.name);
        assert_eq!(a, b, "{}.{col} differs after stop/resume", table.name);
    }
}

#[test]
fn permuted_protocol_runs_all_classes_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&["protocol=\"permuted\"", "permuted_tasks=3", "optimizers=[\"adamw\"]"]);
    let split = Split { train: blobs(30, 1), test: blobs(10, 2) };
    let tasks = optlab::experiments::split_mnist::make_tasks(&c, &split).unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.classes.len() == 10 && t.test.len() == 100));
    run_study(&Cpu, &c, &tasks, dir.path(), false, None, &ProgressBar::hidden()).unwrap();
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
    let tasks = optlab::experiments::split_mnist::make_tasks(&c, &split).unwrap();
    assert_eq!(tasks.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    run_study(&Cpu, &c, &tasks, dir.path(), false, None, &ProgressBar::hidden()).unwrap();
    let s = summary::summarize(dir.path(), &c.optimizers).unwrap();
    for o in &s {
        assert!(o.final_all.0 > 0.5, "{}: ViT accuracy {:?}", o.label, o.final_all);
    }
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

#[test]
fn gpt_study_records_gradient_ranks_and_validation() {
    use optlab::data::text::Corpus;
    use optlab::experiments::gpt::{self, GptStudyConfig};
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<u8> = (0..4000).map(|i| b"the quick brown fox jumps over the lazy dog. "[i % 45]).collect();
    let path = dir.path().join("corpus.txt");
    std::fs::write(&path, &text).unwrap();
    let overrides = [
        "model={ dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }",
        "seq=16",
        "batch_size=4",
        "steps=30",
        "probe_every=10",
        "eval_every=10",
    ];
    let c = GptStudyConfig::resolve(None, &overrides.map(String::from)).unwrap();
    let corpus = Corpus::load(Some(&path), 0.2).unwrap();
    let out = dir.path().join("out");
    gpt::run_study(&Cpu, &c, &corpus, &out, &ProgressBar::hidden()).unwrap();
    // Held-out loss falls below the uniform 8 bits per byte on this repetitive text.
    let val = read_table(&out, &schema::VALIDATION).unwrap();
    let bpb: Vec<f64> = val.column("bits_per_byte").unwrap().f64().unwrap().iter().map(Option::unwrap).collect();
    assert_eq!(bpb.len(), 2 * 3, "2 optimizers × evaluations at steps 10, 20, 30");
    assert!(bpb.iter().all(|&b| b < 8.0), "{bpb:?}");
    let tensors = column_strings(&out, &schema::SPECTRA, "tensor");
    assert!(tensors.iter().any(|t| t == "gradient") && tensors.iter().any(|t| t == "muon_post_orthogonalization"));
    let table = optlab::experiments::summary::render_gpt(&out, &c.optimizers).unwrap();
    assert!(table.contains("adam") && table.contains("muon") && table.contains("grad:qkv"), "{table}");
}
