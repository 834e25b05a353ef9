//! The `exp` binary as a hostile user meets it: a table of bad inputs, each a
//! clear error that writes nothing; two processes on one study; kills at random
//! moments followed by `--resume`; the schema listing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn exp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exp")).args(args).env_remove("OPTLAB_DATA_DIR").output().unwrap()
}

/// A tiny GPT study on a text file of its own: no dataset needed.
fn tiny_gpt(dir: &Path) -> Vec<String> {
    let corpus = dir.join("corpus.txt");
    if !corpus.exists() {
        let phrase = b"to be or not to be, that is the question. ";
        let text: Vec<u8> = (0..6000).map(|i| phrase[i % phrase.len()]).collect();
        std::fs::write(&corpus, text).unwrap();
    }
    let args = [
        "gpt",
        "--device",
        "cpu",
        "--corpus",
        corpus.to_str().unwrap(),
        "--set",
        "model={ dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }",
    ];
    let more = ["--set", "seq=16", "--set", "batch_size=2", "--set", "probe_every=0", "--set", "eval_batches=1"];
    args.iter().chain(&more).map(|s| s.to_string()).collect()
}

/// A sweep spec of tiny GPT studies on `tiny_gpt`'s corpus, seeds 0 and 1:
/// `rest` ends its `[set]` and adds the optimizers' axes.
fn tiny_gpt_sweep(dir: &Path, rest: &str) -> String {
    tiny_gpt(dir);
    format!(
        "study = \"gpt\"\nseeds = [0, 1]\n[set]\ncorpus = {:?}\nmodel = {{ dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }}\n\
         seq = 16\nbatch_size = 2\neval_batches = 1\nprobe_every = 0\n{rest}",
        dir.join("corpus.txt").display().to_string()
    )
}

/// `exp sweep SPEC --out OUT --device cpu`.
fn sweep_on_cpu(spec: &Path, out: &Path) -> Output {
    exp(&["sweep", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"])
}

/// Writes `tiny_gpt_sweep(dir, rest)` to a spec file: the spec's path, and the
/// sweep folder to give `--out`.
fn write_tiny_gpt_sweep(dir: &Path, rest: &str) -> (PathBuf, PathBuf) {
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, tiny_gpt_sweep(dir, rest)).unwrap();
    (spec, dir.join("sweep"))
}

fn with(base: &[String], extra: &[&str]) -> Vec<String> {
    base.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect()
}

fn exp_owned(args: &[String]) -> Output {
    exp(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every file under `dir` with its bytes, for "nothing was touched".
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name() != ".lock" {
                out.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn assert_clear_error(o: &Output, want: &str, what: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "{what}: succeeded");
    assert!(!e.contains("panicked") && o.status.code().is_some_and(|c| c == 1 || c == 2), "{what}: not a clean error exit: {e}");
    assert!(e.contains(want), "{what}: expected {want:?} in: {e}");
}

#[test]
fn bad_inputs_are_clear_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let gpt = tiny_gpt(dir.path());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&gpt, &["--steps", "0"]), "steps must be positive"),
        (with(&gpt, &["--precision", "bf16"]), "--precision bf16 applies to CUDA; the CPU computes in f32 only"),
        (with(&gpt, &["--precision", "fp8"]), "unknown precision \"fp8\": f32, tf32 or bf16"),
        (with(&gpt, &["--set", "seq=0"]), "seq must be positive"),
        (with(&gpt, &["--set", "batch_size=0"]), "batch_size must be positive"),
        (with(&gpt, &["--set", "eval_every=0"]), "eval_every must be positive"),
        (with(&gpt, &["--set", "validation_fraction=1.5"]), "validation_fraction must be in (0, 1)"),
        (with(&gpt, &["--set", "validation_fraction=0"]), "validation_fraction must be in (0, 1)"),
        (with(&gpt, &["--set", "test_fraction=-0.1"]), "test_fraction must be ≥ 0"),
        (with(&gpt, &["--set", "test_fraction=0.9"]), "leave text to train on beside validation_fraction 0.1, got 0.9"),
        (with(&gpt, &["--set", "test_fraction=0.0001"]), "the test text (test_fraction 0.0001): corpus part of"),
        (with(&gpt, &["--set", "grad_clip=-1"]), "grad_clip must be ≥ 0"),
        (with(&gpt, &["--set", "model.heads=3"]), "model.dim 16 must be a multiple of model.heads 3"),
        (with(&gpt, &["--set", "model.depth=0"]), "model.depth must be positive"),
        (with(&gpt, &["--set", "model.init_std=0"]), "model.init_std must be a finite number > 0"),
        (with(&gpt, &["--set", "model.dim=1000000"]), "GiB per run"),
        (with(&gpt, &["--set", "seq=100000"]), "too short for sequences"),
        (with(&gpt, &["--seeds", "3,3"]), "seed 3 is listed twice"),
        (with(&gpt, &["--set", "seeds=[]"]), "need at least one seed"),
        (with(&gpt, &["--optimizers", "muon,muon"]), "\"muon\" is listed twice"),
        (with(&gpt, &["--set", "optimizers=[]"]), "need at least one optimizer"),
        (with(&gpt, &["--optimizers", "a/b"]), "optimizer label \"a/b\""),
        (with(&gpt, &["--optimizers", "x-s1"]), "no `-s` before a digit"),
        (with(&gpt, &["--set", "optimizer.muon.lr=-0.1"]), "lr must be a finite number > 0, got -0.1"),
        (with(&gpt, &["--set", "optimizer.muon.lr=0"]), "lr must be a finite number > 0"),
        (with(&gpt, &["--set", "optimizer.muon.momentum=1"]), "momentum must be in [0, 1)"),
        (with(&gpt, &["--set", "optimizer.muon.ns_steps=0"]), "ns_steps must be at least 1"),
        (with(&gpt, &["--set", "optimizer.muon.aux_adamw.beta2=1.5"]), "aux_adamw.beta2 must be in [0, 1)"),
        (with(&gpt, &["--set", "optimizer.adam.eps=0"]), "eps must be a finite number > 0"),
        (with(&gpt, &["--set", "optimizer.adam.weight_decay=-1"]), "weight_decay must be a finite number ≥ 0"),
        (
            with(&gpt, &["--optimizers", "shampoo", "--set", "optimizer.shampoo.precondition_frequency=0"]),
            "precondition_frequency must be at least 1",
        ),
        (with(&gpt, &["--optimizers", "shampoo", "--set", "optimizer.shampoo.beta2=0"]), "beta2 must be in (0, 1]"),
        (
            with(&gpt, &["--optimizers", "soap", "--set", "optimizer.soap.max_preconditioner_dim=0"]),
            "max_preconditioner_dim must be at least 1",
        ),
        (with(&gpt, &["--optimizers", "sgd", "--set", "optimizer.sgd.nesterov=true", "--set", "optimizer.sgd.momentum=0"]), "nesterov"),
        (with(&gpt, &["--set", "optimizer.adam.lr=\"fast\""]), "invalid hyperparameters"),
        (with(&gpt, &["--set", "stepz=3"]), "stepz"),
        (with(&gpt, &["--set", "schedule.warmup_steps=5000"]), "schedule.warmup_steps (5000) must be fewer than the run's 200 steps"),
        (with(&gpt, &["--set", "schedule.decay=\"exponential\""]), "exponential"),
        (with(&gpt, &["--seeds", "-1"]), "unexpected argument '-1'"),
        (with(&gpt, &["--stop-after-steps", "0"]), "invalid value"),
        (vec!["gpt".into(), "--corpus".into(), "/nonexistent/corpus.txt".into()], "reading corpus /nonexistent/corpus.txt"),
        (with(&gpt, &["--resume"]), "is not a study folder"),
        (vec!["split-mnist".into(), "--epochs".into(), "0".into()], "epochs_per_task must be positive"),
        (vec!["split-mnist".into(), "--batch-size".into(), "0".into()], "batch_size must be positive"),
        (vec!["split-mnist".into(), "--hidden".into(), "256,0".into()], "hidden[1] must be positive"),
        (vec!["split-mnist".into(), "--set".into(), "hidden=[]".into()], "hidden must list at least one width"),
        (vec!["split-mnist".into(), "--hidden".into(), "200000,200000".into()], "GiB per run"),
        (vec!["split-mnist".into(), "--set".into(), "eval_batch=0".into()], "eval_batch must be positive"),
        (vec!["split-mnist".into(), "--set".into(), "schedule.final_fraction=2".into()], "schedule.final_fraction must be in [0, 1]"),
        (vec!["split-mnist".into(), "--set".into(), "max_train_per_task=0".into()], "max_train_per_task must be positive"),
        (vec!["split-mnist".into(), "--set".into(), "class_groups=[[0,1],[1,2]]".into()], "class 1 appears in more than one group"),
        (vec!["split-mnist".into(), "--set".into(), "class_groups=[[0,10]]".into()], "class 10 in group 0 is not in 0-9"),
        (vec!["split-mnist".into(), "--set".into(), "class_groups=[]".into()], "no class groups given"),
        (
            vec!["split-mnist".into(), "--protocol".into(), "permuted".into(), "--set".into(), "permuted_tasks=0".into()],
            "permuted_tasks must be positive",
        ),
        (vec!["split-mnist".into(), "--protocol".into(), "sideways".into()], "sideways"),
        (vec!["split-mnist".into(), "--dataset".into(), "imagenet".into()], "imagenet"),
        (vec!["split-mnist".into(), "--stop-after-tasks".into(), "0".into()], "invalid value"),
        (vec!["vit".into(), "--set".into(), "vit.patch=5".into()], "vit.patch 5 does not divide the 28×28 images of mnist"),
        (vec!["vit".into(), "--set".into(), "vit.patch=0".into()], "vit.patch must be positive"),
        (vec!["vit".into(), "--set".into(), "vit.heads=3".into()], "vit.dim 64 must be a multiple of vit.heads 3"),
        (vec!["vit".into(), "--set".into(), "vit.mlp_ratio=0".into()], "vit.mlp_ratio must be positive"),
        (vec!["vit".into(), "--dataset".into(), "cifar10".into()], "vit.patch 7 does not divide the 32×32 images of cifar10"),
        (vec!["report".into(), o.into()], "not a study folder"),
    ];
    for (args, want) in &cases {
        let mut args = args.clone();
        if args[0] != "report" {
            args.extend(["--out".to_string(), o.to_string()]);
        }
        assert_clear_error(&exp_owned(&args), want, &args.join(" "));
        assert!(!out.exists(), "{}: created {}", args.join(" "), out.display());
    }
}

#[test]
fn study_folders_are_protected() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = tiny_gpt(dir.path());
    let out = dir.path().join("study");
    let o = out.to_str().unwrap();
    // --out is a file, or holds study files without a configuration: refused, untouched.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"mine").unwrap();
    assert_clear_error(&exp_owned(&with(&gpt, &["--steps", "4", "--out", file.to_str().unwrap()])), "is not a folder", "out is a file");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    let debris = dir.path().join("debris");
    std::fs::create_dir_all(debris.join("steps")).unwrap();
    std::fs::write(debris.join("steps/part-x.parquet"), b"old").unwrap();
    let before = snapshot(&debris);
    assert_clear_error(
        &exp_owned(&with(&gpt, &["--steps", "4", "--out", debris.to_str().unwrap()])),
        "holds study files (steps)",
        "debris",
    );
    assert_eq!(snapshot(&debris), before);
    // --resume on something that is not a study.
    assert_clear_error(&exp_owned(&with(&gpt, &["--resume", "--out", debris.to_str().unwrap()])), "not a study folder", "resume debris");

    // A real study, then resumes that would change it: refused, nothing written.
    let first = exp_owned(&with(&gpt, &["--steps", "4", "--set", "eval_every=2", "--out", o]));
    assert!(first.status.success(), "{}", stderr(&first));
    let before = snapshot(&out);
    for (extra, want) in [
        (vec!["--steps", "8"], "steps: saved 4, now 8"),
        (vec!["--set", "optimizer.muon.lr=0.5"], "optimizer.muon.lr: saved"),
        (vec!["--set", "model.dim=32"], "model.dim: saved 16, now 32"),
    ] {
        let args: Vec<&str> = ["--resume", "--out", o].into_iter().chain(extra).collect();
        assert_clear_error(&exp_owned(&with(&gpt, &args)), want, &args.join(" "));
        assert_eq!(snapshot(&out), before, "{args:?} touched the study");
    }
    let o2 = exp(&["split-mnist", "--resume", "--out", o]);
    assert_clear_error(&o2, "holds a gpt study", "wrong kind");
    assert_eq!(snapshot(&out), before);
    // A new study over it is refused; extending it with a seed is allowed.
    assert_clear_error(
        &exp_owned(&with(&gpt, &["--steps", "4", "--set", "eval_every=2", "--out", o])),
        "already holds a study",
        "new over old",
    );
    let more = exp_owned(&with(&gpt, &["--resume", "--out", o, "--seeds", "0,1"]));
    assert!(more.status.success(), "{}", stderr(&more));
    let report = String::from_utf8_lossy(&exp(&["report", o]).stdout).into_owned();
    assert!(report.contains("muon") && !report.contains("missing runs"), "{report}");
}

#[test]
fn a_failed_run_is_recorded_and_the_exit_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = with(&tiny_gpt(dir.path()), &["--steps", "20", "--set", "eval_every=10"]);
    let out = dir.path().join("study");
    let o = out.to_str().unwrap();
    let paused = exp_owned(&with(&gpt, &["--out", o, "--stop-after-steps", "10"]));
    assert!(paused.status.success() && String::from_utf8_lossy(&paused.stdout).contains("paused"), "{}", stderr(&paused));
    // Damage one run's checkpoint: that run fails, naming the file; the other completes.
    let ck = out.join("checkpoints/muon-s0.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x10;
    std::fs::write(&ck, &bytes).unwrap();
    let resumed = exp_owned(&with(&gpt, &["--out", o, "--resume"]));
    assert_clear_error(&resumed, "1 of 2 runs failed (muon-s0)", "a failed run");
    assert!(stderr(&resumed).contains("muon-s0.safetensors is corrupt"), "{}", stderr(&resumed));
    let report = String::from_utf8_lossy(&exp(&["report", o]).stdout).into_owned();
    assert!(report.contains("adam") && report.contains("muon"), "the summary is still written: {report}");
}

#[test]
fn a_sweep_runs_its_cells_survives_a_kill_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, out) = write_tiny_gpt_sweep(
        dir.path(),
        "steps = 200\neval_every = 20\n[optimizers.adam]\nlr = [1e-3, 1e-2, 3e-2]\n[optimizers.muon]\nlr = [0.02, -1.0]\n",
    );
    let args = ["sweep", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu", "--jobs", "2"];
    // Killed mid-way (the cells it started go on or die; none is lost)...
    let mut first = Command::new(env!("CARGO_BIN_EXE_exp")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = first.kill();
    first.wait().unwrap();
    let complete = |cell: &str| {
        optlab::record::read_table(&out.join("cells").join(cell), &optlab::record::schema::RUNS).is_ok_and(|r| r.height() == 2)
    };
    let done_at_kill = ["0000", "0001", "0002", "0003"].into_iter().filter(|c| complete(c)).count();
    assert!(done_at_kill < 4, "the kill came after the sweep had finished; lengthen the cells");
    // ...then the same command finishes the sweep, until only the invalid cell is left.
    let mut last = exp(&args);
    for _ in 0..3 {
        if !stderr(&last).contains("another exp process") && !String::from_utf8_lossy(&last.stdout).contains("another exp process") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        last = exp(&args);
    }
    assert_clear_error(&last, "1 of 5 cells failed (0004)", "the sweep");
    let table = String::from_utf8_lossy(&last.stdout).into_owned();
    assert!(table.contains("lr must be a finite number > 0, got -1"), "{table}");
    for (cell, lr) in [("0000", "0.001"), ("0001", "0.01"), ("0002", "0.03"), ("0003", "0.02")] {
        let config = std::fs::read_to_string(out.join("cells").join(cell).join("config.toml")).unwrap();
        assert!(config.contains(&format!("lr = {lr}\n")), "cell {cell}: {config}");
        let runs = optlab::record::read_table(&out.join("cells").join(cell), &optlab::record::schema::RUNS).unwrap();
        assert_eq!(runs.height(), 2, "cell {cell}: both seeds");
    }
    // Once done, a cell is not run again.
    let again = exp(&args);
    assert_eq!(String::from_utf8_lossy(&again.stdout).matches("done before").count(), 4, "{}", String::from_utf8_lossy(&again.stdout));
    // exp report reads the sweep's folder: every cell, the invalid one not finished.
    let report = exp(&["report", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success() && text.matches("done before").count() == 4 && text.contains("0004") && text.contains("not finished"),
        "{text}"
    );
    // exp plot on the sweep's folder draws its figures.
    let plot = exp(&["plot", out.to_str().unwrap()]);
    assert!(plot.status.success() && String::from_utf8_lossy(&plot.stdout).contains("tuning.png"), "{}", stderr(&plot));
    // Each optimizer swept its lr: the report draws the tuning curves.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("alt=\"tuning\"") && out.join("figures/tuning.svg").exists(), "no tuning figure");
    assert!(std::fs::read_to_string(out.join("figures/tuning.svg")).unwrap().contains("final_validation_loss against lr"));
    assert!(!out.join("figures/tuning_representations.svg").exists(), "a GPT study probes no representations");
    // Another spec in the same folder is refused.
    std::fs::write(&spec, std::fs::read_to_string(&spec).unwrap().replace("3e-2", "5e-2")).unwrap();
    assert_clear_error(&exp(&args), "holds a sweep of other cells", "another spec");
}

#[test]
fn a_sweep_selects_on_validation_and_reports_fresh_seeds_on_test() {
    if let Err(e) = optlab::data::load(optlab::data::DatasetName::Mnist, None) {
        assert!(std::env::var_os("OPTLAB_REQUIRE_REAL_DATA").is_none(), "real MNIST required but unavailable: {e:#}");
        use std::io::Write;
        let _ =
            writeln!(std::io::stderr(), "SKIPPED a_sweep_selects_on_validation...: real MNIST unavailable ({e:#}); run `exp fetch mnist`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tune.toml");
    std::fs::write(
        &spec,
        "study = \"split-mnist\"\nseeds = [0, 1]\n[set]\nhidden = [32]\nmax_train_per_task = 600\nprobe_every = 0\nvalidation_fraction = 0.1\n\
         [optimizers.sgd]\nlr = [0.001, 0.1]\n[optimizers.adamw]\nlr = [1e-5, 1e-2]\n[select]\nseeds = [10, 11, 12, 13, 14]\n",
    )
    .unwrap();
    let out = dir.path().join("sweep");
    let o = sweep_on_cpu(&spec, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // The choice is each optimizer's best mean validation accuracy, written down with every candidate.
    let selection: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("selection.toml")).unwrap()).unwrap();
    for label in ["sgd", "adamw"] {
        let t = selection[label].as_table().unwrap();
        let means = t["mean_validation_accuracy"].as_table().unwrap();
        let best = means.iter().max_by(|a, b| a.1.as_float().partial_cmp(&b.1.as_float()).unwrap()).unwrap().0;
        assert_eq!(t["chosen_cell"].as_str(), Some(best.as_str()), "{label}: {t:?}");
        // The rerun used the fresh seeds, and its runs hold test numbers.
        let runs = optlab::record::read_table(&out.join("final").join(label), &optlab::record::schema::RUNS).unwrap();
        let seeds: Vec<i64> = runs.column("seed").unwrap().i64().unwrap().iter().flatten().collect();
        assert_eq!(seeds.len(), 5);
        assert!(seeds.iter().all(|s| (10..15).contains(s)), "{seeds:?}");
    }
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("selected on validation") && table.contains("over 5 seeds"), "{table}");
    // Run again, every cell is done; exp report on the folder prints the same table.
    let again = sweep_on_cpu(&spec, &out);
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).matches("done before").count() == 4);
    let report = exp(&["report", out.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&report.stdout), String::from_utf8_lossy(&again.stdout), "exp report reprints the sweep's table");
    // Beside the tuning curves, the hidden layer's representations against the swept rate.
    let svg = std::fs::read_to_string(out.join("figures/tuning_representations.svg")).unwrap();
    for panel in ["effective rank of fc1 against lr", "sparsity of fc1 against lr"] {
        assert!(svg.contains(panel), "no panel {panel}");
    }
    // Too few fresh seeds, or seeds that also tuned, are refused before anything runs.
    std::fs::write(&spec, std::fs::read_to_string(&spec).unwrap().replace("[10, 11, 12, 13, 14]", "[1, 11, 12, 13, 14]")).unwrap();
    let o = exp(&["sweep", spec.to_str().unwrap(), "--out", dir.path().join("other").to_str().unwrap()]);
    assert_clear_error(&o, "must be fresh", "reused seeds");
}

#[test]
fn a_gpt_sweep_selects_on_validation_loss_and_reports_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tune.toml");
    let text = tiny_gpt_sweep(
        dir.path(),
        "steps = 20\neval_every = 10\ntest_fraction = 0.1\n\
         [optimizers.adam]\nlr = [1e-5, 1e-2]\n[optimizers.muon]\nlr = [0.02]\n[select]\nseeds = [10, 11, 12, 13, 14]\n",
    );
    // Without a test split, the selection is refused before anything runs.
    std::fs::write(&spec, text.replace("test_fraction = 0.1\n", "")).unwrap();
    let out = dir.path().join("sweep");
    let args = ["sweep", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"];
    assert_clear_error(&exp(&args), "[select] needs test_fraction > 0", "a gpt selection without a test split");
    assert!(!out.exists(), "the refused sweep wrote its folder");
    std::fs::write(&spec, text).unwrap();
    let o = exp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // Adam's choice is its lower mean validation loss, written down with both candidates.
    let selection: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("selection.toml")).unwrap()).unwrap();
    let adam = selection["adam"].as_table().unwrap();
    let means = adam["mean_validation_loss"].as_table().unwrap();
    let best = means.iter().min_by(|a, b| a.1.as_float().partial_cmp(&b.1.as_float()).unwrap()).unwrap().0;
    assert_eq!((adam["chosen_cell"].as_str(), best.as_str()), (Some("0001"), "0001"), "{adam:?}");
    // The reruns hold test losses for the fresh seeds, and the table shows them.
    let runs = optlab::record::read_table(&out.join("final/muon"), &optlab::record::schema::RUNS).unwrap();
    let test: Vec<f64> = runs.column("final_test_loss").unwrap().f64().unwrap().iter().flatten().collect();
    assert!(test.len() == 5 && test.iter().all(|l| l.is_finite() && *l > 0.0), "{test:?}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("on the test split") && table.contains("test bits/byte") && table.contains("adam − muon"), "{table}");
}

#[test]
fn a_sweep_extended_past_its_edge_keeps_its_cells_and_sets_a_changed_rerun_aside() {
    let dir = tempfile::tempdir().unwrap();
    let rest = "steps = 20\neval_every = 10\ntest_fraction = 0.1\n[optimizers.adam]\nlr = [1e-5, 1e-4]\n[optimizers.muon]\nlr = [0.02]\n\
                [select]\nseeds = [10, 11, 12, 13, 14]\n";
    let (spec, out) = write_tiny_gpt_sweep(dir.path(), rest);
    let args = ["sweep", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"];
    assert!(exp(&args).status.success());
    let chosen = |key: &str| {
        let selection: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("selection.toml")).unwrap()).unwrap();
        selection[key]["chosen_cell"].as_str().unwrap().to_string()
    };
    let before = chosen("adam");
    // A rate past the edge: the three cells run are done before, the new one is 0003 and wins.
    std::fs::write(&spec, tiny_gpt_sweep(dir.path(), &rest.replace("[1e-5, 1e-4]", "[1e-5, 1e-4, 1e-2]"))).unwrap();
    let o = exp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("done before").count(), 3, "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(chosen("adam"), "0003");
    assert_eq!(chosen("muon"), "0002", "an unchanged choice keeps its rerun");
    // The old choice's rerun is kept aside; the new one ran with the new rate.
    let aside = out.join("superseded").join(format!("adam-{before}"));
    assert_eq!(optlab::record::read_table(&aside, &optlab::record::schema::RUNS).unwrap().height(), 5, "{}", aside.display());
    let config = std::fs::read_to_string(out.join("final/adam/config.toml")).unwrap();
    assert!(config.contains("lr = 0.01"), "{config}");
    // While another process drives the sweep, a second one is refused and changes nothing.
    let before = snapshot(&out);
    let held = optlab::experiments::folder::lock(&out, false).unwrap();
    assert_clear_error(&exp(&args), "another exp process is working on", "a second sweep on one folder");
    assert!(snapshot(&out) == before, "the refused sweep touched its folder");
    drop(held);
    // A spec that drops a cell is refused.
    std::fs::write(&spec, tiny_gpt_sweep(dir.path(), &rest.replace("[1e-5, 1e-4]", "[1e-5]"))).unwrap();
    assert_clear_error(&exp(&args), "holds a sweep of other cells", "a spec without a cell run before");
}

#[test]
fn a_selection_whose_cells_all_failed_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, out) = write_tiny_gpt_sweep(
        dir.path(),
        "steps = -5\ntest_fraction = 0.1\n[optimizers.adam]\nlr = [1e-3]\n[select]\nseeds = [10, 11, 12, 13, 14]\n",
    );
    let o = sweep_on_cpu(&spec, &out);
    assert_clear_error(&o, "1 grid cells failed", "a grid that all failed");
    assert!(stderr(&o).contains("`steps`") && stderr(&o).contains("nothing to select"), "{}", stderr(&o));
}

#[test]
fn a_selection_per_point_tunes_each_optimizer_at_every_shared_point() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, out) = write_tiny_gpt_sweep(
        dir.path(),
        "steps = 20\neval_every = 10\ntest_fraction = 0.1\n[grid]\nseq = [8, 16]\n\
         [optimizers.adam]\nlr = [1e-5, 1e-2]\n[optimizers.muon]\nlr = [0.002, 0.02]\n[select]\nseeds = [10, 11, 12, 13, 14]\nper_point = true\n",
    );
    let o = sweep_on_cpu(&spec, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // Cells run the sweep's own binary and record the name it was started by.
    let provenance = std::fs::read_dir(out.join("cells/0000/provenance")).unwrap().next().unwrap().unwrap().path();
    let provenance: toml::Table = toml::from_str(&std::fs::read_to_string(provenance).unwrap()).unwrap();
    assert_eq!(provenance["command_line"][0].as_str(), Some(env!("CARGO_BIN_EXE_exp")));
    // A choice per optimizer and point, each the best of that point's cells only.
    let selection: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("selection.toml")).unwrap()).unwrap();
    let cells: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("cells.toml")).unwrap()).unwrap();
    let overrides_of = |name: &str| {
        let cell = cells["cell"].as_array().unwrap().iter().find(|c| c["name"].as_str() == Some(name)).unwrap();
        cell["overrides"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    for (point, seq) in [("seq-8", "seq=8"), ("seq-16", "seq=16")] {
        for label in ["adam", "muon"] {
            let t = selection[&format!("{point}/{label}")].as_table().unwrap_or_else(|| panic!("{point}/{label}: {selection:?}"));
            assert_eq!((t["optimizer"].as_str(), t["point"].as_str()), (Some(label), Some(seq)));
            let means = t["mean_validation_loss"].as_table().unwrap();
            assert_eq!(means.len(), 2, "{point}/{label}: only its point's two cells compete: {means:?}");
            assert!(means.keys().all(|cell| overrides_of(cell).contains(&seq.to_string())), "{point}/{label}: {means:?}");
            let best = means.iter().min_by(|a, b| a.1.as_float().partial_cmp(&b.1.as_float()).unwrap()).unwrap().0;
            assert_eq!(t["chosen_cell"].as_str(), Some(best.as_str()), "{point}/{label}: {t:?}");
            let runs = optlab::record::read_table(&out.join("final").join(point).join(label), &optlab::record::schema::RUNS).unwrap();
            let seeds: Vec<i64> = runs.column("seed").unwrap().i64().unwrap().iter().flatten().collect();
            assert_eq!(seeds, [10, 11, 12, 13, 14], "{point}/{label}");
        }
    }
    // One test table per point, in the grid's order; exp report reprints the sweep's table.
    let table = String::from_utf8_lossy(&o.stdout);
    for point in ["selected at seq=8 on validation", "selected at seq=16 on validation"] {
        let part = table.split(point).nth(1).unwrap_or_else(|| panic!("no table {point}: {table}"));
        assert!(part.contains("adam − muon"), "{table}");
    }
    assert!(table.find("selected at seq=8").unwrap() < table.find("selected at seq=16").unwrap(), "in the grid's order: {table}");
    let again = sweep_on_cpu(&spec, &out);
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).matches("done before").count() == 8);
    let report = exp(&["report", out.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&report.stdout), String::from_utf8_lossy(&again.stdout), "exp report reprints the sweep's table");
    let written = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(written.contains("Provenance of final/seq-8/adam") && written.contains("Provenance of final/seq-16/adam"), "{written}");
    // Each point's tuning curves and reruns' figures in its own folder.
    let o = exp(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for point in ["seq-8", "seq-16"] {
        for figure in ["tuning.png", "loss.png"] {
            assert!(out.join("figures").join(point).join(figure).is_file(), "{point}/{figure}: {}", String::from_utf8_lossy(&o.stdout));
        }
    }
}

#[test]
fn a_grid_without_selection_compares_the_optimizers_at_each_point() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, out) = write_tiny_gpt_sweep(
        dir.path(),
        "steps = 6\neval_every = 3\n[grid]\nseq = [8, 16]\n[optimizers.adam]\nlr = [1e-3]\n[optimizers.muon]\nlr = [0.02]\n",
    );
    let o = sweep_on_cpu(&spec, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // One table per point, each comparing both optimizers on paired seeds.
    let table = String::from_utf8_lossy(&o.stdout);
    for point in ["at seq=8", "at seq=16"] {
        let part = table.split(point).nth(1).unwrap_or_else(|| panic!("no table {point}: {table}"));
        assert!(part.contains("adam − muon"), "{table}");
    }
    // ...and one folder of figures per point.
    let o = exp(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for point in ["seq-8", "seq-16"] {
        assert!(out.join("figures").join(point).join("loss.png").is_file(), "{}", String::from_utf8_lossy(&o.stdout));
    }
}

/// Every step's loss by (run, step): the record of a study, in a fixed order.
fn losses(dir: &Path) -> Vec<(String, i64, f64)> {
    let df = optlab::record::read_table(dir, &optlab::record::schema::STEPS).unwrap();
    let run = df.column("run").unwrap().str().unwrap().clone();
    let (step, loss) = (df.column("step").unwrap().i64().unwrap().clone(), df.column("loss").unwrap().f64().unwrap().clone());
    let mut rows: Vec<_> =
        (0..df.height()).map(|k| (run.get(k).unwrap().to_string(), step.get(k).unwrap(), loss.get(k).unwrap())).collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

#[test]
fn kills_at_random_moments_then_resume_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gpt = with(&tiny_gpt(dir.path()), &["--steps", "1000", "--set", "eval_every=10", "--set", "probe_every=25"]);
    let whole = dir.path().join("whole");
    let o = exp_owned(&with(&gpt, &["--out", whole.to_str().unwrap()]));
    assert!(o.status.success(), "{}", stderr(&o));
    let pieces = dir.path().join("pieces");
    let p = pieces.to_str().unwrap().to_string();
    // Kill -9 at several moments (fixed, spread over the run), resuming each time.
    let mut resumed = false;
    let mut mid_run = 0;
    for delay_ms in [150u64, 400, 50, 700, 250, 330] {
        let mut args = with(&gpt, &["--out", &p]);
        if resumed {
            args.push("--resume".into());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_exp")).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        child.wait().unwrap();
        resumed |= pieces.join("config.toml").exists();
        let finished = optlab::record::read_table(&pieces, &optlab::record::schema::RUNS).map_or(0, |r| r.height());
        mid_run += usize::from(killed && resumed && finished < 2);
    }
    assert!(mid_run >= 3, "only {mid_run} kills landed in the middle of the study; lengthen it");
    let last = exp_owned(&with(&gpt, &["--out", &p, "--resume"]));
    assert!(last.status.success(), "{}", stderr(&last));
    assert_eq!(losses(&whole), losses(&pieces), "the killed-and-resumed study must equal the uninterrupted one");
    assert!(!pieces.join(".staging").read_dir().is_ok_and(|mut d| d.next().is_some()), "staging left behind");

    // While one process works on a study, a second one is refused at once. A new
    // study writes config.toml only once it holds the lock.
    let busy = dir.path().join("busy");
    let b = busy.to_str().unwrap().to_string();
    let mut holder = Command::new(env!("CARGO_BIN_EXE_exp"))
        .args(with(&gpt, &["--out", &b]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !busy.join("config.toml").exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = exp_owned(&with(&gpt, &["--out", &b, "--resume"]));
    let holder_running = holder.try_wait().unwrap().is_none();
    assert!(holder_running, "the first process ended before the second started; make the study longer");
    assert_clear_error(&second, "another exp process", "second process");
    assert!(holder.wait().unwrap().success(), "the first process must finish its study");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_optimizer_is_a_clear_error() {
    let o = exp(&["split-mnist", "--optimizers", "sgd,adamm"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("adamm") && e.contains(&format!("known: {}", optlab::optim::OPTIMIZER_NAMES.join(", "))), "{e}");
}

#[test]
fn misspelled_config_key_is_a_clear_error() {
    let o = exp(&["split-mnist", "--set", "optimizer.muon.momentun=0.9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("momentun"), "{}", stderr(&o));
}

#[test]
fn corrupt_data_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(mnist.join(f), b"not an idx file").unwrap();
    }
    let o = exp(&["fetch", "mnist", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("-idx") && e.to_lowercase().contains("sha-256"), "{e}");
}

#[test]
fn a_cifar_archive_that_is_not_the_official_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar10");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("cifar-10-binary.tar.gz"), b"truncated download").unwrap();
    let o = exp(&["vit", "--dataset", "cifar10", "--set", "vit.patch=4", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cifar-10-binary.tar.gz") && e.contains("not the official"), "{e}");
}

#[test]
fn schema_lists_every_table() {
    let o = exp(&["schema"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for t in optlab::record::schema::ALL {
        assert!(out.contains(&format!("`{}/`", t.name)), "{out}");
    }
    assert!(out.contains("Roy & Vetterli"));
}

#[test]
fn readme_shows_the_current_schema() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(optlab::record::schema::markdown().trim()), "README's schema is stale: paste `exp schema` into it");
}

/// A browser to check reports with, or why there is none (a failure when CI
/// requires one).
fn browser() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()));
    if found.is_none() {
        assert!(std::env::var_os("OPTLAB_REQUIRE_BROWSER").is_none(), "a headless browser is required but none is installed");
        eprintln!("SKIPPED report rendering check: no chromium (CI installs Debian's chromium)");
    }
    found
}

/// How many of a page's images loaded and how many did not, as a real browser
/// counts them once the page has loaded.
fn images_in_browser(browser: &str, html: &Path) -> (usize, usize) {
    let probe = html.with_extension("probe.html");
    let script = "<script>window.addEventListener('load',()=>{const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length;\
                  document.body.setAttribute('data-images',ok+' '+(document.images.length-ok))})</script></body>";
    std::fs::write(&probe, std::fs::read_to_string(html).unwrap().replace("</body>", script)).unwrap();
    let dom = Command::new(browser).args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]).arg(&probe).output().unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let counts = dom.split("data-images=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or_else(|| panic!("no image count in {dom}"));
    let (ok, broken) = counts.split_once(' ').unwrap();
    (ok.parse().unwrap(), broken.parse().unwrap())
}

#[test]
fn the_report_is_one_html_file_that_renders_every_figure_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let args =
        with(&tiny_gpt(dir.path()), &["--optimizers", "adam,muon", "--steps", "40", "--set", "eval_every=20", "--set", "probe_every=10"]);
    let o = exp_owned(&with(&args, &["--out", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = exp(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html_path = out.join("report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    // Both say the same: the table, the configuration, the provenance, the figures.
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(markdown.contains(table.trim_end()), "{markdown}");
    assert!(html.contains("muon") && html.contains("Configuration") && html.contains("git_commit"));
    // Self-contained: every image is inlined, each figure once.
    let images = html.matches("<img ").count();
    assert_eq!(images, html.matches("<img alt=\"").count());
    assert_eq!(images, html.matches("src=\"data:image/png;base64,").count());
    for name in ["loss", "effective_rank"] {
        assert!(html.contains(&format!("alt=\"{name}\"")) && markdown.contains(&format!("![{name}](figures/{name}.png)")), "{name}");
    }
    let Some(browser) = browser() else { return };
    assert_eq!(images_in_browser(browser, &html_path), (images, 0), "every figure renders");
    // The check sees a broken image (so it can fail): one figure's data cut short.
    let broken = dir.path().join("broken.html");
    std::fs::write(&broken, html.replacen("base64,iVBOR", "base64,AAAA", 1)).unwrap();
    assert_eq!(images_in_browser(browser, &broken), (images - 1, 1));
    // A screenshot of the page shows the figures: far from blank.
    let shot = dir.path().join("shot.png");
    let o = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,2400"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut reader = png::Decoder::new(std::fs::File::open(&shot).unwrap()).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let inked = pixels[..info.buffer_size()].chunks(channels).filter(|p| p[..3].iter().any(|&c| c < 200)).count();
    let share = inked as f64 / (info.width * info.height) as f64;
    assert!((info.width, info.height) == (1300, 2400) && share > 0.02, "{}×{}, {:.3} of the pixels inked", info.width, info.height, share);
}
