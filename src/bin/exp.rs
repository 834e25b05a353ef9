//! `exp`: the command line of optlab. Parses, resolves the config, calls
//! `optlab::experiments`; no study logic lives here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use optlab::backend::cuda::Cuda;
use optlab::backend::{Backend, Cpu, Precision, kernels};
use optlab::data::text::Corpus;
use optlab::data::{self, DatasetName};
use optlab::experiments::config::{VIT_DEFAULTS, read_preset};
use optlab::experiments::gpt::{GptStudy, GptStudyConfig};
use optlab::experiments::provenance::{self, Provenance};
use optlab::experiments::slurm::{self, Cluster, Progress};
use optlab::experiments::split_mnist::{self, SplitStudy};
use optlab::experiments::study::{self, Report};
use optlab::experiments::sweep::{self, CellEnd, Phase, SweepSpec, Workers};
use optlab::experiments::{SplitMnistConfig, StudyConfig, summary};
use optlab::experiments::{figures, folder, report};
use optlab::record::schema;

#[derive(Parser)]
#[command(name = "exp", version, about = "optlab studies: how optimizers change the solutions networks converge to")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Class-incremental split-MNIST (or permuted MNIST): every optimizer × seed,
    /// spectra and forgetting to Parquet, a summary table at the end.
    SplitMnist(Box<SplitMnistArgs>),
    /// The same study with a small Vision Transformer, trained on all classes
    /// at once by default (`--protocol class-incremental` for the split tasks).
    Vit(Box<SplitMnistArgs>),
    /// The gradient-rank study of a small GPT (Adam vs Muon by default) on
    /// Shakespeare or any text file, as bytes or GPT-2 BPE tokens.
    Gpt(Box<GptArgs>),
    /// Run a grid of studies from a spec (see `src/experiments/sweep.rs`): each
    /// cell an ordinary study folder, run by worker processes; run the same
    /// command again to resume a killed sweep (finished cells are not rerun).
    Sweep(SweepArgs),
    /// One study of a sweep's phase, in the sweep's folder: what a Slurm array
    /// task runs (`exp sweep --slurm` writes the scripts).
    #[command(hide = true)]
    SweepTask {
        dir: PathBuf,
        #[arg(value_enum)]
        phase: Phase,
        index: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[command(flatten)]
        compute: Compute,
    },
    /// Print the summary table of a study folder of any kind, or of a sweep's
    /// folder, finished or not, and what is still missing; write it with the
    /// figures, configuration and provenance to DIR/report.html (self-contained)
    /// and DIR/report.md.
    Report { dir: PathBuf },
    /// Draw a study's or a sweep's figures (PNG and SVG) into DIR/figures/.
    Plot { dir: PathBuf },
    /// Fetch and verify a dataset into the cache (or --data-dir).
    Fetch {
        #[arg(default_value = "mnist")]
        dataset: DatasetName,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print every Parquet table and column with its meaning (Markdown).
    Schema,
    /// Print the devices optlab can use and where its CUDA kernels come from.
    Info,
}

/// Where a study runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    /// CUDA when a usable GPU is present, else the CPU (says which).
    Auto,
    Cpu,
    Cuda,
}

/// Where and how a study computes: the flags every study, sweep and sweep task takes.
#[derive(clap::Args, Clone, Copy, Debug)]
struct Compute {
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Operand precision of the model's GEMMs on CUDA (f32, tf32 or bf16;
    /// accumulation, weights and optimizer state stay f32). Default: tf32 on a
    /// GPU. The CPU is the f32 reference and refuses another.
    #[arg(long)]
    precision: Option<Precision>,
}

impl Compute {
    /// The same flags for a worker process.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--device".to_string(), format!("{:?}", self.device).to_lowercase()];
        if let Some(p) = self.precision {
            args.extend(["--precision".to_string(), p.to_string()]);
        }
        args
    }

    /// Refuses an explicit precision other than f32 with `--device cpu`.
    fn check(&self) -> Result<()> {
        match self.precision {
            Some(p) if p != Precision::F32 && self.device == Device::Cpu => {
                bail!(
                    "--precision {p} applies to CUDA; the CPU computes in f32 only (it is the reference): drop the flag or use --device cuda"
                )
            }
            _ => Ok(()),
        }
    }

    fn cuda(&self) -> Result<Cuda> {
        Ok(Cuda::new(0)?.with_precision(self.precision.unwrap_or(Precision::Tf32)))
    }
}

/// The flags every study takes.
#[derive(clap::Args)]
struct StudyArgs {
    /// TOML preset (see experiments/); flags override it.
    #[arg(long)]
    preset: Option<PathBuf>,
    /// Any config key, TOML-valued: `--set optimizer.muon.lr=0.01 --set hidden=[100]`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Optimizer labels, comma-separated: names from the README's optimizer table
    /// (sgd, adamw, muon…; an unknown one lists them all) or preset keys.
    #[arg(long, value_delimiter = ',')]
    optimizers: Vec<String>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Output folder (default: runs/<study>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the study in --out from its checkpoints and saved config.toml.
    /// Flags may add seeds and optimizers; any other change is refused.
    #[arg(long, requires = "out", conflicts_with = "preset")]
    resume: bool,
    #[command(flatten)]
    compute: Compute,
}

impl StudyArgs {
    /// `--set` assignments, then the list flags, as config overrides.
    fn overrides(&self) -> Vec<String> {
        let list = |xs: Vec<String>| format!("[{}]", xs.join(", "));
        let mut o = self.set.clone();
        if !self.optimizers.is_empty() {
            o.push(format!("optimizers={}", list(self.optimizers.iter().map(|x| format!("{x:?}")).collect())));
        }
        if !self.seeds.is_empty() {
            o.push(format!("seeds={}", list(self.seeds.iter().map(u64::to_string).collect())));
        }
        o
    }

    fn out(&self, study: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(format!("{study}-{}", provenance::utc(std::time::SystemTime::now(), false))))
    }

    /// The configuration: the study's defaults, then `defaults`, then the preset
    /// or (with --resume) the saved configuration, then the flags; validated.
    fn resolve<C: StudyConfig>(&self, kind: &str, defaults: &[&str], overrides: Vec<String>) -> Result<C> {
        let overrides: Vec<String> = defaults.iter().map(|d| d.to_string()).chain(overrides).collect();
        if self.resume {
            let out = self.out.as_deref().context("--resume needs --out")?;
            let saved = folder::saved_config_of(out, kind)?;
            // The saved values come first: the study's own defaults are already in them.
            C::resolve(Some(&saved), &overrides[defaults.len()..])
        } else {
            let preset = self.preset.as_deref().map(read_preset).transpose()?;
            C::resolve(preset.as_ref(), &overrides)
        }
    }
}

#[derive(clap::Args)]
struct SweepArgs {
    /// The sweep spec (TOML).
    spec: PathBuf,
    /// The sweep's folder (default: runs/sweep-<spec name>, so the same command resumes it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cells run at once (default: the cores divided by --threads; with
    /// --slurm, array tasks at once, default unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// CPU threads of each cell's process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    threads: u64,
    #[command(flatten)]
    compute: Compute,
    /// Submit the sweep to Slurm as job arrays (one task per study, --threads
    /// CPUs each) and return; run the same command to see where it stands or
    /// to resubmit what did not finish.
    #[arg(long)]
    slurm: bool,
    /// An extra sbatch flag for every job, e.g. `--sbatch-arg=--partition=gpu`.
    #[arg(long, value_name = "FLAG", requires = "slurm", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// The phase whose array just ended (the continuing job's call).
    #[arg(long, hide = true, requires = "slurm", value_enum)]
    after: Option<Phase>,
}

#[derive(clap::Args)]
struct SplitMnistArgs {
    #[command(flatten)]
    study: StudyArgs,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Hidden widths, comma-separated (e.g. 256,256).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// class-incremental, permuted or joint.
    #[arg(long)]
    protocol: Option<String>,
    /// mnist, fashion-mnist or cifar10.
    #[arg(long)]
    dataset: Option<String>,
    /// Where the data files are, in DIR/<dataset>/ (else $OPTLAB_DATA_DIR, else the cache; fetched if absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pause every run after this many tasks (checkpointed; --resume continues).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_after_tasks: Option<u64>,
}

#[derive(clap::Args)]
struct GptArgs {
    #[command(flatten)]
    study: StudyArgs,
    #[arg(long)]
    steps: Option<u64>,
    /// A text file to train on (default: the Shakespeare corpus, fetched once).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where the default corpus is, in DIR/shakespeare/ (else $OPTLAB_DATA_DIR, else the cache; fetched if absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pause every run once it has trained at least this many steps in this
    /// invocation, at the next evaluation (runs are checkpointed there; --resume continues).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_after_steps: Option<u64>,
}

impl SplitMnistArgs {
    /// The convenience flags as `--set` overrides, after the explicit ones.
    fn overrides(&self) -> Vec<String> {
        let mut o = self.study.overrides();
        if !self.hidden.is_empty() {
            o.push(format!("hidden=[{}]", self.hidden.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")));
        }
        let mut scalar = |key: &str, v: Option<String>| o.extend(v.map(|v| format!("{key}={v}")));
        scalar("epochs_per_task", self.epochs.map(|e| e.to_string()));
        scalar("batch_size", self.batch_size.map(|b| b.to_string()));
        scalar("protocol", self.protocol.as_ref().map(|p| format!("{p:?}")));
        scalar("dataset", self.dataset.as_ref().map(|d| format!("{d:?}")));
        o
    }
}

fn main() {
    optlab::backend::cpu::join_thread_pool();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::SplitMnist(args) => split_mnist_study(&args, "split-mnist", &[]),
        Command::Vit(args) => split_mnist_study(&args, "vit", &VIT_DEFAULTS),
        Command::Gpt(args) => gpt_study(&args),
        Command::Sweep(args) if args.slurm => sweep_on_slurm(&args),
        Command::Sweep(args) => sweep(&args),
        Command::SweepTask { dir, phase, index, threads, compute } => {
            let exe = own_binary()?;
            let extra = compute.args();
            let workers = Workers { exe: &exe, extra_args: &extra, jobs: 1, threads };
            match sweep::run_task(&dir, phase, index, &workers)? {
                CellEnd::Failed(why) => bail!("the study failed: {why}"),
                _ => Ok(()),
            }
        }
        Command::Report { dir } => {
            let written = report::write(&dir)?;
            print!("{}", written.table);
            eprintln!("report: {} and {}", written.html.display(), written.markdown.display());
            Ok(())
        }
        Command::Plot { dir } => {
            let drawn = if sweep::is_sweep(&dir) {
                let (spec, state) = sweep::state(&dir)?;
                sweep::plot(&dir, &spec, &state)?.into_iter().flat_map(|(_, figures)| figures).collect()
            } else {
                folder::saved_config(&dir)?;
                figures::plot_study(&dir)?
            };
            for f in drawn {
                println!("{}\n{}", f.png.display(), f.svg.display());
            }
            Ok(())
        }
        Command::Fetch { dataset, data_dir } => {
            let split = data::load(dataset, data_dir.as_deref())?;
            println!("{}: {} train, {} test examples, verified", dataset.as_str(), split.train.len(), split.test.len());
            Ok(())
        }
        Command::Schema => {
            print!("{}", schema::markdown());
            Ok(())
        }
        Command::Info => {
            println!("optlab {}", env!("CARGO_PKG_VERSION"));
            println!("cpu: {} threads (rayon)", rayon::current_num_threads());
            let embedded = if kernels::KERNELS.iter().all(|k| k.ptx.is_some()) { "PTX" } else { "CUDA C++ for NVRTC" };
            println!("kernels embedded as: {embedded} (nvcc {})", kernels::nvcc_version());
            match Cuda::new(0) {
                Ok(c) => println!("cuda: {} (driver CUDA {})", c.describe(), Cuda::driver_version().unwrap_or_default()),
                Err(e) => println!("cuda: unavailable: {e:#}"),
            }
            Ok(())
        }
    }
}

/// Runs `$body` with `$b` bound to the backend `$compute` chooses.
macro_rules! on_device {
    ($compute:expr, |$b:ident| $body:expr) => {
        match $compute.device {
            Device::Cpu => {
                let $b = &Cpu;
                $body
            }
            Device::Cuda => {
                let $b = &$compute.cuda()?;
                $body
            }
            Device::Auto => match $compute.cuda() {
                Ok(gpu) => {
                    let $b = &gpu;
                    $body
                }
                Err(e) => {
                    let precision =
                        $compute.precision.map_or(String::new(), |p| format!("; --precision {p} does not apply, the CPU computes in f32"));
                    eprintln!("device: cpu (CUDA unavailable: {e:#}){precision}");
                    let $b = &Cpu;
                    $body
                }
            },
        }
    };
}

/// A config enum as the user writes it (`class-incremental`).
fn kebab(value: impl serde::Serialize) -> String {
    toml::Value::try_from(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn progress_bar() -> Result<ProgressBar> {
    Ok(ProgressBar::new(0).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}")?))
}

/// `exp split-mnist` and `exp vit`: `defaults` are overrides applied before the user's flags.
fn split_mnist_study(args: &SplitMnistArgs, kind: &str, defaults: &[&str]) -> Result<()> {
    let s = &args.study;
    s.compute.check()?;
    let config: SplitMnistConfig = s.resolve(kind, defaults, args.overrides())?;
    let out = s.out(kind);
    let tasks = split_mnist::load_tasks(&config, args.data_dir.as_deref())?;
    let protocol = SplitStudy::new(&config, &tasks)?;
    let runs = config.optimizers.len() * config.seeds.len();
    let (model, tasks_of) = (kebab(config.model), kebab(config.protocol));
    let stop_after = args.stop_after_tasks.map(|n| n as usize);
    let report = on_device!(s.compute, |b| {
        eprintln!(
            "{model}, {tasks_of}: {} tasks, {runs} runs ({} × seeds {:?}) on {} → {}",
            tasks.len(),
            config.optimizers.join(", "),
            config.seeds,
            b.name(),
            out.display()
        );
        let mut provenance = Provenance::now(b, data::file_hashes(config.dataset));
        study::run_study(b, kind, &config, &protocol, &out, s.resume, stop_after, &mut provenance, &progress_bar()?)?
    });
    finish(kind, &out, &report)
}

fn gpt_study(args: &GptArgs) -> Result<()> {
    let s = &args.study;
    s.compute.check()?;
    let mut overrides = s.overrides();
    overrides.extend(args.steps.map(|n| format!("steps={n}")));
    overrides.extend(args.corpus.as_ref().map(|c| format!("corpus={:?}", c.display().to_string())));
    let config: GptStudyConfig = s.resolve("gpt", &[], overrides)?;
    let corpus = Corpus::load(
        config.corpus.as_deref(),
        config.validation_fraction,
        config.test_fraction,
        config.tokenizer,
        args.data_dir.as_deref(),
    )?;
    let protocol = GptStudy::new(&config, &corpus)?;
    let out = s.out("gpt");
    let stop_after = args.stop_after_steps.map(|n| n.div_ceil(config.eval_every) as usize);
    let m = &config.model;
    let report = on_device!(s.compute, |b| {
        eprintln!(
            "gpt: {} parameters, {} layers, dim {}, {} heads, {:?} feed-forward, seq {}, batch {}, {} steps; {} training tokens ({:?}) on {} → {}",
            config.parameter_count(),
            m.depth,
            m.dim,
            m.heads,
            m.feed_forward,
            config.seq,
            config.batch_size,
            config.steps,
            corpus.train.len(),
            config.tokenizer,
            b.name(),
            out.display()
        );
        let mut provenance = Provenance::now(b, [(corpus.source.clone(), corpus.sha256.clone())].into());
        study::run_study(b, "gpt", &config, &protocol, &out, s.resume, stop_after, &mut provenance, &progress_bar()?)?
    });
    finish("gpt", &out, &report)
}

/// A sweep's folder: --out, else runs/sweep-<spec name>, so the same command resumes it.
fn sweep_folder(args: &SweepArgs) -> PathBuf {
    let stem = args.spec.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    args.out.clone().unwrap_or_else(|| Path::new("runs").join(format!("sweep-{stem}")))
}

fn sweep_on_slurm(args: &SweepArgs) -> Result<()> {
    args.compute.check()?;
    let spec = SweepSpec::read(&args.spec)?;
    let out = sweep_folder(args);
    let exe = std::env::current_exe().context("locating the exp binary")?;
    let exp_args = args.compute.args();
    let cluster = Cluster {
        exe: &exe,
        exp_args: &exp_args,
        sbatch_args: &args.sbatch_arg,
        threads: args.threads as usize,
        throttle: args.jobs.map(|n| n as usize),
    };
    let progress = slurm::advance(&spec, &out, &cluster, args.after);
    print!("{}", sweep::report(&out)?);
    match progress? {
        Progress::InQueue(jobs) => {
            println!("slurm: jobs {} of this sweep are queued or running; run the same command again later", jobs.join(", "))
        }
        Progress::Submitted { phase, studies, array, then } => println!(
            "slurm: submitted the {} phase, {studies} studies, as job array {array} (output in {}); job {then} continues when it ends",
            format!("{phase:?}").to_lowercase(),
            out.join("logs").join(format!("slurm-{array}_*.out")).display()
        ),
        Progress::Done => {
            let written = report::write(&out)?;
            println!("slurm: nothing left to submit; the report is in {} and {}", written.html.display(), written.markdown.display());
            let (_, state) = sweep::state(&out)?;
            let unfinished = state.unfinished();
            if !unfinished.is_empty() {
                bail!(
                    "{} studies did not finish ({}); their logs are in {}; run the same command without --after to resubmit them",
                    unfinished.len(),
                    unfinished.join(", "),
                    out.join("logs").display()
                );
            }
        }
    }
    Ok(())
}

fn sweep(args: &SweepArgs) -> Result<()> {
    args.compute.check()?;
    let spec = SweepSpec::read(&args.spec)?;
    let out = sweep_folder(args);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let jobs = args.jobs.unwrap_or((cores / args.threads).max(1));
    let exe = own_binary()?;
    let extra = args.compute.args();
    eprintln!(
        "sweep: {} cells of exp {}, {jobs} at a time × {} threads → {}",
        spec.cells()?.len(),
        spec.study,
        args.threads,
        out.display()
    );
    let workers = Workers { exe: &exe, extra_args: &extra, jobs: jobs as usize, threads: args.threads as usize };
    let result = sweep::run(&spec, &out, &workers)?;
    print!("{}", sweep::render(&spec, &result, &out)?);
    let failed = result.unfinished();
    let total = result.cells.len() + result.selected.len();
    if !failed.is_empty() {
        let logs = out.join("logs");
        bail!(
            "{} of {total} cells failed ({}); their logs are in {}; rerun the same command to retry them",
            failed.len(),
            failed.join(", "),
            logs.display()
        );
    }
    Ok(())
}

/// The binary this process runs, for the sweep's cells: on Linux the running
/// file itself (`/proc/self/exe`), so that rebuilding `exp` while a sweep runs
/// neither breaks it (the old path is gone) nor mixes two builds in one sweep.
fn own_binary() -> Result<PathBuf> {
    let running = Path::new("/proc/self/exe");
    if running.exists() { Ok(running.to_path_buf()) } else { std::env::current_exe().context("locating the exp binary") }
}

/// The summary table (when any run finished), where the results are, and an
/// error exit when a run failed.
fn finish(kind: &str, out: &Path, report: &Report) -> Result<()> {
    print!("{}", summary::report(out)?);
    if report.paused() {
        println!("paused; continue with: exp {kind} --out {} --resume", out.display());
    }
    println!("results: {} (Parquet tables; `exp schema` explains every column)", out.display());
    let failed = report.failed();
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed ({}); their errors are in the runs table and above; `exp {kind} --out {} --resume` retries them",
            failed.len(),
            report.runs.len(),
            failed.join(", "),
            out.display()
        );
    }
    Ok(())
}
