//! `exp sweep --slurm` against a real one-node Slurm cluster that the test
//! starts (`tools/slurm-cluster.sh`, Debian's slurm-wlm and munge): the sweep
//! runs as job arrays, continues itself through a dependent job, resubmits
//! what failed when asked again, and ends with the same table as a local run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/slurm-cluster.sh");

/// A running cluster, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// The cluster, or why there is none (a failure when CI requires one).
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash").arg(SCRIPT).arg("start").arg(dir.path()).output().unwrap();
        if out.status.success() {
            let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            return Some(Self { dir, conf });
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(std::env::var_os("OPTLAB_REQUIRE_SLURM").is_none(), "a Slurm cluster is required but did not start: {why}");
        eprintln!("SKIPPED slurm tests: no Slurm cluster ({why}); `tools/slurm-cluster.sh install` (root) provides one");
        None
    }

    fn exp(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_exp")).args(args).env("SLURM_CONF", &self.conf).output().unwrap()
    }

    /// Waits until the queue is empty.
    fn drain(&self) {
        let start = Instant::now();
        loop {
            let q = Command::new("squeue").arg("-h").env("SLURM_CONF", &self.conf).output().unwrap();
            assert!(q.status.success(), "squeue: {}", String::from_utf8_lossy(&q.stderr));
            if q.stdout.trim_ascii().is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "the sweep's jobs are still queued: {}",
                String::from_utf8_lossy(&q.stdout)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(self.dir.path()).status();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("logs").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_tuned_sweep_runs_through_slurm_as_it_runs_locally() {
    if let Err(e) = optlab::data::load(optlab::data::DatasetName::Mnist, None) {
        assert!(std::env::var_os("OPTLAB_REQUIRE_REAL_DATA").is_none(), "real MNIST required but unavailable: {e:#}");
        eprintln!("SKIPPED a_tuned_sweep_runs_through_slurm...: real MNIST unavailable ({e:#}); run `exp fetch mnist`");
        return;
    }
    let Some(cluster) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tune.toml");
    // Cell 0004 cannot run (a negative lr): it fails alone, under Slurm as locally.
    std::fs::write(
        &spec,
        "study = \"split-mnist\"\nseeds = [0, 1]\n[set]\nhidden = [32]\nmax_train_per_task = 600\nprobe_every = 0\nvalidation_fraction = 0.1\n\
         [optimizers.sgd]\nlr = [0.001, 0.1, -1.0]\n[optimizers.adamw]\nlr = [1e-5, 1e-2]\n[select]\nseeds = [10, 11, 12, 13, 14]\n",
    )
    .unwrap();
    let out = dir.path().join("slurm");
    let args = ["sweep", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu", "--slurm"];

    let first = cluster.exp(&args);
    assert!(first.status.success() && text(&first).contains("submitted the grid phase, 5 studies"), "{}", text(&first));
    let again = cluster.exp(&args);
    assert!(again.status.success() && text(&again).contains("queued or running"), "nothing is submitted twice: {}", text(&again));
    cluster.drain();

    // The grid's array, then the job after it: selection and the reruns' array, then the report.
    for task in 0..5 {
        assert!(out.join("logs").join(format!("slurm-{}_{task}.out", jobs(&out)[0].0)).exists(), "grid task {task} ran under Slurm");
    }
    let after_final = log(&out, &format!("slurm-{}.out", jobs(&out)[1].1));
    assert!(after_final.contains("1 studies did not finish (0004)"), "{after_final}");
    let selection: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("selection.toml")).unwrap()).unwrap();
    assert_eq!(selection["sgd"]["chosen_cell"].as_str(), Some("0002"), "{selection:?}");
    for label in ["sgd", "adamw"] {
        let runs = optlab::record::read_table(&out.join("final").join(label), &optlab::record::schema::RUNS).unwrap();
        let seeds: Vec<i64> = runs.column("seed").unwrap().i64().unwrap().iter().flatten().collect();
        assert_eq!(seeds, [10, 11, 12, 13, 14], "{label}");
    }
    // The job after the last phase wrote the report.
    let written = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(out.join("report.html").exists() && after_final.contains("the report is in"), "{after_final}");
    let report = cluster.exp(&["report", out.to_str().unwrap()]);
    assert!(written.contains(String::from_utf8_lossy(&report.stdout).trim_end()), "{written}");

    // Asked again, it resubmits only the failed cell.
    let retry = cluster.exp(&args);
    assert!(text(&retry).contains("submitted the grid phase, 1 studies"), "{}", text(&retry));
    cluster.drain();
    assert_eq!(jobs(&out).len(), 3);

    // The same spec run locally gives the same table, number for number.
    let local = dir.path().join("local");
    let o = cluster.exp(&["sweep", spec.to_str().unwrap(), "--out", local.to_str().unwrap(), "--device", "cpu"]);
    assert!(text(&o).contains("1 of 7 cells failed (0004)"), "{}", text(&o));
    let local_report = cluster.exp(&["report", local.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&local_report.stdout),
        String::from_utf8_lossy(&cluster.exp(&["report", out.to_str().unwrap()]).stdout)
    );
}

/// The (array, continuing job) ids of every submission, from `slurm/jobs.toml`.
fn jobs(out: &Path) -> Vec<(String, String)> {
    let record: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("slurm").join("jobs.toml")).unwrap()).unwrap();
    record["submission"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["array"].as_str().unwrap().to_string(), s["then"].as_str().unwrap().to_string()))
        .collect()
}
