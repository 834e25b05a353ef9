//! `exp`: the command line of optlab. Parses, resolves the config, calls
//! `optlab::experiments`; no study logic lives here.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use optlab::backend::cuda::Cuda;
use optlab::backend::{Backend, Cpu, kernels};
use optlab::data::text::Corpus;
use optlab::data::{self, DatasetName};
use optlab::experiments::gpt::{self, GptStudyConfig};
use optlab::experiments::{SplitMnistConfig, split_mnist, summary};
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
    /// The gradient-rank study of a small byte-level GPT (Adam vs Muon by
    /// default) on Shakespeare or any text file.
    Gpt(Box<GptArgs>),
    /// Print the summary table of a study directory (finished or not).
    Report { dir: PathBuf },
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
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Device {
    /// CUDA when a usable GPU is present, else the CPU (says which).
    Auto,
    Cpu,
    Cuda,
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
    /// Optimizer labels, comma-separated (sgd, adamw, lion, muon, shampoo, soap, or preset keys).
    #[arg(long, value_delimiter = ',')]
    optimizers: Vec<String>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Output directory (default: runs/<study>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
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
        self.out.clone().unwrap_or_else(|| Path::new("runs").join(format!("{study}-{}", utc_stamp())))
    }
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
    /// class-incremental or permuted.
    #[arg(long)]
    protocol: Option<String>,
    /// mnist, fashion-mnist or cifar10.
    #[arg(long)]
    dataset: Option<String>,
    /// Where the data files are, in DIR/<dataset>/ (else $OPTLAB_DATA_DIR, else the cache; fetched if absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Continue the study in --out from its checkpoints and saved config.toml
    /// (flags still override it: e.g. more --seeds extend the study).
    #[arg(long, requires = "out", conflicts_with = "preset")]
    resume: bool,
    /// Pause every run after this many tasks (checkpointed; --resume continues).
    #[arg(long)]
    stop_after_tasks: Option<usize>,
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
        Command::Vit(args) => split_mnist_study(&args, "vit", &["model=\"vit\"", "protocol=\"joint\""]),
        Command::Gpt(args) => gpt_study(&args),
        Command::Report { dir } => {
            let order = SplitMnistConfig::resolve(Some(&dir.join("config.toml")), &[]).map(|c| c.optimizers).unwrap_or_default();
            print!("{}", summary::render(&summary::summarize(&dir, &order)?));
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

/// Runs a study: `defaults` are overrides applied before the user's flags.
fn split_mnist_study(args: &SplitMnistArgs, name: &str, defaults: &[&str]) -> Result<()> {
    let saved = args.study.out.as_ref().map(|o| o.join("config.toml")).filter(|p| args.resume && p.exists());
    let overrides: Vec<String> = defaults.iter().map(|d| d.to_string()).chain(args.overrides()).collect();
    let config = SplitMnistConfig::resolve(saved.as_deref().or(args.study.preset.as_deref()), &overrides)?;
    let out = args.study.out(name);
    let tasks = split_mnist::load_tasks(&config, args.data_dir.as_deref())?;
    match args.study.device {
        Device::Cpu => run_on(&Cpu, args, &config, &tasks, &out)?,
        Device::Cuda => run_on(&Cuda::new(0)?, args, &config, &tasks, &out)?,
        Device::Auto => match Cuda::new(0) {
            Ok(gpu) => run_on(&gpu, args, &config, &tasks, &out)?,
            Err(e) => {
                eprintln!("device: cpu (CUDA unavailable: {e:#})");
                run_on(&Cpu, args, &config, &tasks, &out)?
            }
        },
    }
    match summary::summarize(&out, &config.optimizers) {
        Ok(s) => print!("{}", summary::render(&s)),
        // Paused before any run finished: nothing to summarize yet.
        Err(_) if args.stop_after_tasks.is_some() => println!("paused; continue with: exp split-mnist --out {} --resume", out.display()),
        Err(e) => return Err(e),
    }
    println!(
        "results: {} (Parquet tables: steps, param_steps, spectra, accuracy, activations, counters, runs; `exp schema` explains every column)",
        out.display()
    );
    Ok(())
}

fn run_on<B: Backend>(
    backend: &B,
    args: &SplitMnistArgs,
    config: &SplitMnistConfig,
    tasks: &[optlab::data::Task],
    out: &Path,
) -> Result<()> {
    let runs = config.optimizers.len() * config.seeds.len();
    let (n, opts) = (tasks.len(), config.optimizers.join(", "));
    let (model, protocol) = (format!("{:?}", config.model).to_lowercase(), format!("{:?}", config.protocol).to_lowercase());
    eprintln!("{model}, {protocol}: {n} tasks, {runs} runs ({opts} × seeds {:?}) on {} → {}", config.seeds, backend.name(), out.display());
    let progress =
        ProgressBar::new(0).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}")?);
    split_mnist::run_study(backend, config, tasks, out, args.resume, args.stop_after_tasks, &progress)
}

fn gpt_study(args: &GptArgs) -> Result<()> {
    let mut overrides = args.study.overrides();
    overrides.extend(args.steps.map(|s| format!("steps={s}")));
    overrides.extend(args.corpus.as_ref().map(|c| format!("corpus={:?}", c.display().to_string())));
    let config = GptStudyConfig::resolve(args.study.preset.as_deref(), &overrides)?;
    let corpus = Corpus::load(config.corpus.as_deref(), config.validation_fraction)?;
    let out = args.study.out("gpt");
    let run = |backend: &dyn Fn(&ProgressBar) -> Result<()>| -> Result<()> {
        let progress =
            ProgressBar::new(0).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}")?);
        backend(&progress)
    };
    let m = &config.model;
    eprintln!(
        "gpt: {} layers, dim {}, {} heads, seq {}, batch {}, {} steps; {} bytes of training text → {}",
        m.depth,
        m.dim,
        m.heads,
        config.seq,
        config.batch_size,
        config.steps,
        corpus.train.len(),
        out.display()
    );
    match (args.study.device, Cuda::new(0)) {
        (Device::Cpu, _) | (Device::Auto, Err(_)) => run(&|p| gpt::run_study(&Cpu, &config, &corpus, &out, p))?,
        (_, Ok(gpu)) => run(&|p| gpt::run_study(&gpu, &config, &corpus, &out, p))?,
        (Device::Cuda, Err(e)) => return Err(e),
    }
    print!("{}", summary::render_gpt(&out, &config.optimizers)?);
    println!("results: {} (Parquet tables: steps, spectra, validation, runs; `exp schema` explains every column)", out.display());
    Ok(())
}

/// `YYYYmmdd-HHMMSS` in UTC, from the system clock (days-to-civil, Hinnant's algorithm).
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
