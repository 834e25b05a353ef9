//! Sweeps on a Slurm cluster: each phase of a sweep becomes one `sbatch` job
//! array (a task per unfinished study, running `exp sweep-task`), followed by a
//! job that depends on it (`afterany`) and continues the sweep: it submits the
//! next phase (the reruns of `[select]`) or writes the report.
//!
//! The same command as the submission resumes: while the sweep's jobs are in
//! the queue it only reports; afterwards it resubmits whatever did not finish.
//! The scripts and job ids are kept in `<sweep>/slurm/`, the jobs' output in
//! `<sweep>/logs/slurm-*.out`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::sweep::{self, Job, Phase, SweepSpec};

/// How the sweep's jobs are submitted.
pub struct Cluster<'a> {
    /// The `exp` binary the jobs run (on a shared filesystem).
    pub exe: &'a Path,
    /// Flags for every `exp` the jobs run (`--device`).
    pub exp_args: &'a [String],
    /// Extra `sbatch` flags (`--partition`, `--time`, `--account`…).
    pub sbatch_args: &'a [String],
    /// CPUs per array task (`--cpus-per-task`), the threads of its study.
    pub threads: usize,
    /// Array tasks running at once (`%N`), if limited.
    pub throttle: Option<usize>,
}

/// Where a sweep stands after [`advance`].
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// Jobs of the last submission are still queued or running.
    InQueue(Vec<String>),
    /// A phase was submitted: its array, and the job that continues after it.
    Submitted { phase: Phase, studies: usize, array: String, then: String },
    /// Nothing left to submit.
    Done,
}

/// The record of one submission (`slurm/jobs.toml`).
#[derive(Serialize, Deserialize)]
struct Submission {
    phase: Phase,
    array: String,
    then: String,
    studies: Vec<String>,
    at: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Record {
    submission: Vec<Submission>,
}

/// Moves a sweep on by one submission. `after` is the phase whose array just
/// ended, when the continuing job calls: it submits only later phases, so a
/// study that failed is not retried behind the user's back. A person's call
/// (`after = None`) resubmits everything unfinished.
pub fn advance(spec: &SweepSpec, root: &Path, cluster: &Cluster, after: Option<Phase>) -> Result<Progress> {
    let root = std::path::absolute(root)?;
    let (cells, _lock) = sweep::prepare(spec, &root)?;
    let dir = root.join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = super::folder::lock(&dir, after.is_some())?;
    let record_path = dir.join("jobs.toml");
    let mut record: Record = match std::fs::read_to_string(&record_path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", record_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", record_path.display())),
    };
    if after.is_none() {
        let active: Vec<String> =
            record.submission.last().map_or(Vec::new(), |s| [&s.array, &s.then].into_iter().filter(|id| queued(id)).cloned().collect());
        if !active.is_empty() {
            return Ok(Progress::InQueue(active));
        }
    }
    let phases = if spec.select.is_some() { &[Phase::Grid, Phase::Final][..] } else { &[Phase::Grid] };
    for &phase in phases.iter().filter(|&&p| after.is_none_or(|done| p > done)) {
        let (jobs, seeds) = match (phase, &spec.select) {
            (Phase::Final, Some(select)) => (sweep::final_jobs(&root, &sweep::choose(spec, &root)?), &select.seeds),
            _ => (sweep::grid_jobs(&root, &cells), &spec.seeds),
        };
        let todo: Vec<(usize, &Job)> = jobs.iter().enumerate().filter(|(_, j)| !sweep::finished(&j.dir, &j.cell, seeds)).collect();
        if todo.is_empty() {
            continue;
        }
        let indices: Vec<String> = todo.iter().map(|(k, _)| k.to_string()).collect();
        let (array, then) = submit(&root, phase, &indices.join(","), cluster)?;
        record.submission.push(Submission {
            phase,
            array: array.clone(),
            then: then.clone(),
            studies: todo.iter().map(|(_, j)| j.cell.name.clone()).collect(),
            at: super::provenance::utc(std::time::SystemTime::now(), true),
        });
        super::folder::write_atomically(&record_path, &toml::to_string_pretty(&record)?)?;
        return Ok(Progress::Submitted { phase, studies: todo.len(), array, then });
    }
    Ok(Progress::Done)
}

/// Whether job `id` is queued or running, leaving out the job asking.
fn queued(id: &str) -> bool {
    if std::env::var("SLURM_JOB_ID").is_ok_and(|me| me == id) {
        return false;
    }
    // squeue fails on ids it has forgotten: those are not queued either.
    Command::new("squeue")
        .args(["-h", "-o", "%i", "-j", id])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Writes the phase's array script and the continuing job's script, submits
/// both, and returns their job ids.
fn submit(root: &Path, phase: Phase, indices: &str, cluster: &Cluster) -> Result<(String, String)> {
    let name = format!("{phase:?}").to_lowercase();
    let exe = quote(cluster.exe);
    let flags: Vec<String> = cluster.exp_args.iter().map(quote).collect();
    let array_script = script(
        root,
        &name,
        "slurm-%A_%a.out",
        cluster.threads,
        &format!("exec {exe} sweep-task {} {name} \"$SLURM_ARRAY_TASK_ID\" --threads {} {}", quote(root), cluster.threads, flags.join(" ")),
    )?;
    let throttle = cluster.throttle.map(|n| format!("%{n}")).unwrap_or_default();
    let array = sbatch(&[format!("--array={indices}{throttle}")], cluster.sbatch_args, &array_script)?;
    let mut again: Vec<String> = vec![
        "sweep".into(),
        quote(root.join(sweep::SPEC)),
        "--out".into(),
        quote(root),
        "--slurm".into(),
        "--after".into(),
        name.clone(),
        "--threads".into(),
        cluster.threads.to_string(),
    ];
    again.extend(cluster.throttle.map(|n| format!("--jobs {n}")));
    again.extend(cluster.sbatch_args.iter().map(|a| format!("--sbatch-arg={}", quote(a))));
    again.extend(flags);
    let then_script = script(root, &format!("after-{name}"), "slurm-%j.out", 1, &format!("exec {exe} {}", again.join(" ")))?;
    let then = sbatch(&[format!("--dependency=afterany:{array}")], cluster.sbatch_args, &then_script)?;
    Ok((array, then))
}

/// A batch script in `<sweep>/slurm/`.
fn script(root: &Path, name: &str, output: &str, cpus: usize, command: &str) -> Result<PathBuf> {
    let path = root.join("slurm").join(format!("{name}.sh"));
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let text = format!(
        "#!/bin/bash\n#SBATCH --job-name=optlab-{name}\n#SBATCH --output={}\n#SBATCH --cpus-per-task={cpus}\n{command}\n",
        logs.join(output).display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Submits a script; its job id.
fn sbatch(flags: &[String], extra: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(flags)
        .args(extra)
        .arg(script)
        .output()
        .context("running sbatch: --slurm needs a Slurm cluster's sbatch on PATH")?;
    if !out.status.success() {
        bail!("sbatch {} failed ({}): {}", script.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    // `--parsable` prints `id` or `id;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or_default();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sbatch {} printed no job id: {text:?}", script.display());
    }
    Ok(id.to_string())
}

/// A shell word.
fn quote(s: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", s.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_keeps_any_path_one_word() {
        assert_eq!(super::quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
