//! A study's folder: its saved configuration, its lock, its identity.
//!
//! A folder is created for one study and only ever extended: `--resume` may add
//! seeds and optimizer labels, but every key that defines what was already
//! trained must equal the saved configuration, or the command stops listing the
//! differences before it writes anything. One process at a time holds a study:
//! an exclusive lock (`flock`, released by the kernel when the process dies, so a
//! killed study never leaves a stale lock behind).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The file names a study writes at its top level (tables are folders named in
/// `record::schema`).
const CONFIG: &str = "config.toml";
const LOCK: &str = ".lock";
const STUDY_KEY: &str = "study";

/// Keys that extend a study rather than redefine it.
const EXTENDING_KEYS: [&str; 2] = ["seeds", "optimizers"];

/// An open study folder, locked for this process.
pub struct StudyFolder {
    pub root: PathBuf,
    _lock: File,
}

impl StudyFolder {
    /// A new study of `kind` in `root`, which must hold no study files yet
    /// (other files are left alone). Writes `config.toml`.
    pub fn create(root: &Path, kind: &str, config: &toml::Table) -> Result<Self> {
        if root.exists() && !root.is_dir() {
            bail!("--out {} exists and is not a folder", root.display());
        }
        if root.join(CONFIG).exists() {
            bail!("{} already holds a study; pass --resume to continue it, or choose another --out", root.display());
        }
        refuse_study_files(root)?;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let folder = Self { root: root.to_path_buf(), _lock: lock(root, false)? };
        // Checked again under the lock: another process may have started in between.
        refuse_study_files(root)?;
        write_config(root, kind, config)?;
        Ok(folder)
    }

    /// The existing study in `root`, to be continued with `config`: refused
    /// (with every difference listed) unless `config` only extends the saved one.
    /// The saved configuration becomes the union of both.
    pub fn resume(root: &Path, kind: &str, config: &toml::Table) -> Result<Self> {
        saved_config(root)?;
        let folder = Self { root: root.to_path_buf(), _lock: lock(root, false)? };
        // Read again under the lock: the holder may have extended it meanwhile.
        let saved = saved_config_of(root, kind)?;
        let differences = identity_differences(&saved, config);
        if !differences.is_empty() {
            bail!(
                "--resume would change what {} already trained:\n  {}\nkeep these values (only seeds and optimizer labels may be added), or start a new study with another --out",
                root.display(),
                differences.join("\n  ")
            );
        }
        write_config(root, kind, &union(&saved, config))?;
        Ok(folder)
    }
}

/// The configuration saved in a study folder of `kind`; another kind is an error
/// saying which command resumes it.
pub fn saved_config_of(root: &Path, kind: &str) -> Result<toml::Table> {
    let (saved_kind, saved) = saved_config(root)?;
    if saved_kind != kind {
        bail!("{} holds a {saved_kind} study, not a {kind} study: resume it with `exp {saved_kind} --out … --resume`", root.display());
    }
    Ok(saved)
}

/// The kind and configuration saved in a study folder.
pub fn saved_config(root: &Path) -> Result<(String, toml::Table)> {
    let path = root.join(CONFIG);
    if !root.is_dir() {
        bail!("{} is not a study folder (it does not exist or is not a folder)", root.display());
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{} is not a study folder: it has no {CONFIG}", root.display()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let kind = match table.remove(STUDY_KEY) {
        Some(toml::Value::String(k)) => k,
        _ => bail!("{} does not say which study it is (no `{STUDY_KEY} = \"…\"`)", path.display()),
    };
    Ok((kind, table))
}

/// Holds `root`'s lock for as long as the file lives; `wait` blocks until
/// another process lets go, else that is an error.
pub fn lock(root: &Path, wait: bool) -> Result<File> {
    let path = root.join(LOCK);
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    if wait {
        file.lock().with_context(|| format!("locking {}", path.display()))?;
        return Ok(file);
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another exp process is working on {} (it holds {}); wait for it to finish or stop it first",
                root.display(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Refuses a folder that holds what a study writes but no saved configuration:
/// the remains of something we must not overwrite.
fn refuse_study_files(root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    let ours: Vec<String> = crate::record::schema::ALL
        .iter()
        .map(|t| t.name.to_string())
        .chain(["checkpoints", "provenance", ".staging", CONFIG].map(String::from))
        .collect();
    let found: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| ours.contains(n)).collect();
    if !found.is_empty() {
        bail!(
            "{} holds study files ({}) but no valid {CONFIG}; refusing to write over them: choose another --out",
            root.display(),
            found.join(", ")
        );
    }
    Ok(())
}

fn write_config(root: &Path, kind: &str, config: &toml::Table) -> Result<()> {
    let text = format!("{STUDY_KEY} = {}\n{}", toml::Value::from(kind), toml::to_string_pretty(config)?);
    write_atomically(&root.join(CONFIG), &text)
}

/// Writes `text` to `path` through a temporary file beside it, so a reader (or
/// a kill) never sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Every key of `saved` whose value `new` changes (dotted paths, with both
/// values), ignoring the keys that only extend a study and the hyperparameters
/// of optimizer labels the saved study does not have.
fn identity_differences(saved: &toml::Table, new: &toml::Table) -> Vec<String> {
    let saved_labels = labels(saved);
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(new.keys()).collect();
    for key in keys {
        if EXTENDING_KEYS.contains(&key.as_str()) {
            continue;
        }
        match (saved.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) if key == "optimizer" => {
                for label in &saved_labels {
                    diff_values(&format!("optimizer.{label}"), a.get(label), b.get(label), &mut out);
                }
            }
            (a, b) => diff_values(key, a, b, &mut out),
        }
    }
    out
}

fn diff_values(path: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
    match (a, b) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff_values(&format!("{path}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), toml::Value::to_string);
            out.push(format!("{path}: saved {}, now {}", show(a), show(b)));
        }
    }
}

fn labels(config: &toml::Table) -> Vec<String> {
    config
        .get("optimizers")
        .and_then(toml::Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
}

/// `saved` with the seeds, labels and label tables of `new` added.
fn union(saved: &toml::Table, new: &toml::Table) -> toml::Table {
    let mut out = saved.clone();
    for key in EXTENDING_KEYS {
        let mut values: Vec<toml::Value> = saved.get(key).and_then(toml::Value::as_array).cloned().unwrap_or_default();
        for v in new.get(key).and_then(toml::Value::as_array).into_iter().flatten() {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
        out.insert(key.into(), toml::Value::Array(values));
    }
    if let (Some(toml::Value::Table(theirs)), Some(toml::Value::Table(ours))) = (new.get("optimizer"), out.get_mut("optimizer")) {
        for (label, table) in theirs {
            ours.entry(label.clone()).or_insert_with(|| table.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn extending_is_allowed_redefining_is_listed() {
        let saved = t("seeds = [0]\noptimizers = [\"sgd\"]\nepochs = 1\n[optimizer.sgd]\nlr = 0.1\n");
        let more =
            t("seeds = [0, 1]\noptimizers = [\"sgd\", \"adamw\"]\nepochs = 1\n[optimizer.sgd]\nlr = 0.1\n[optimizer.adamw]\nlr = 1e-3\n");
        assert!(identity_differences(&saved, &more).is_empty());
        let u = union(&saved, &more);
        assert_eq!(u["seeds"].as_array().unwrap().len(), 2);
        assert!(u["optimizer"].as_table().unwrap().contains_key("adamw"));

        let changed = t("seeds = [0]\noptimizers = [\"sgd\"]\nepochs = 2\n[optimizer.sgd]\nlr = 0.2\n");
        let d = identity_differences(&saved, &changed);
        assert_eq!(d, ["epochs: saved 1, now 2", "optimizer.sgd.lr: saved 0.1, now 0.2"]);
        let dropped = t("seeds = [0]\noptimizers = [\"sgd\"]\n[optimizer.sgd]\nlr = 0.1\n");
        assert_eq!(identity_differences(&saved, &dropped), ["epochs: saved 1, now (unset)"]);
    }

    #[test]
    fn folders_are_locked_checked_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("study");
        let config = t("seeds = [0]\noptimizers = [\"sgd\"]\nepochs = 1\n");
        let held = StudyFolder::create(&root, "split-mnist", &config).unwrap();
        // A second process (here: a second open) is refused while the first holds it.
        let err = StudyFolder::resume(&root, "split-mnist", &config).err().unwrap().to_string();
        assert!(err.contains("another exp process"), "{err}");
        drop(held);
        // Once released: a wrong kind, a changed key are refused and leave config.toml as it was.
        let before = std::fs::read_to_string(root.join(CONFIG)).unwrap();
        let err = StudyFolder::resume(&root, "gpt", &config).err().unwrap().to_string();
        assert!(err.contains("holds a split-mnist study"), "{err}");
        let err = StudyFolder::resume(&root, "split-mnist", &t("seeds = [0]\noptimizers = [\"sgd\"]\nepochs = 3\n")).err().unwrap();
        assert!(format!("{err:#}").contains("epochs: saved 1, now 3"), "{err:#}");
        assert_eq!(std::fs::read_to_string(root.join(CONFIG)).unwrap(), before);
        // A new study over an existing one, or over study files with no config, is refused.
        assert!(StudyFolder::create(&root, "split-mnist", &config).is_err());
        std::fs::remove_file(root.join(CONFIG)).unwrap();
        std::fs::create_dir_all(root.join("steps")).unwrap();
        let err = StudyFolder::create(&root, "split-mnist", &config).err().unwrap().to_string();
        assert!(err.contains("holds study files (steps)"), "{err}");
        assert!(StudyFolder::resume(&root, "split-mnist", &config).err().unwrap().to_string().contains("no config.toml"));
    }
}
