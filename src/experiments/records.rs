//! The rows a run writes between two checkpoints, staged where no reader looks.
//!
//! A segment's rows (a task, or the steps up to an evaluation) are written as
//! finished Parquet parts under `.staging/<run>/<segment>/`, a hidden folder that
//! the README's pandas/polars/duckdb recipes (`<table>/*.parquet`) never read.
//! Only after the checkpoint that ends the segment is saved are they moved into
//! the tables. A run killed before that checkpoint leaves staged parts that the
//! next `--resume` deletes (it retrains the segment); one killed after it leaves
//! parts that the next `--resume` checks and publishes. Either way the tables
//! hold each row exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::record::schema::Table;
use crate::record::{TableWriter, Value, check_part};

const STAGING: &str = ".staging";

/// One segment's writers, one per table, created on first use.
pub struct Records {
    dir: PathBuf,
    prefix: String,
    writers: BTreeMap<&'static str, TableWriter>,
}

impl Records {
    /// Rows of `run`'s segment `segment` under `root`'s staging folder; the
    /// segment's earlier staged parts (from a killed attempt) are discarded.
    pub fn new(root: &Path, run: &str, segment: usize) -> Result<Self> {
        let dir = segment_dir(root, run, segment);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        Ok(Self { dir, prefix: format!("{run}-{segment:05}"), writers: BTreeMap::new() })
    }

    pub fn push(&mut self, table: &'static Table, row: Vec<(&str, Value)>) -> Result<()> {
        let writer = match self.writers.entry(table.name) {
            std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(TableWriter::new(&self.dir, table, &self.prefix, usize::MAX)?),
        };
        writer.push(row)
    }

    /// Writes every table's rows as finished parts (still staged).
    pub fn finish(mut self) -> Result<()> {
        self.writers.values_mut().try_for_each(TableWriter::flush)
    }
}

fn run_dir(root: &Path, run: &str) -> PathBuf {
    root.join(STAGING).join(run)
}

fn segment_dir(root: &Path, run: &str, segment: usize) -> PathBuf {
    run_dir(root, run).join(format!("{segment:05}"))
}

/// Settles `run`'s staged parts against its checkpoint: segments before
/// `next_segment` were checkpointed, so their parts are checked and moved into
/// the tables; later ones were not, so they are deleted.
pub fn settle(root: &Path, run: &str, next_segment: usize) -> Result<()> {
    let dir = run_dir(root, run);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    let mut segments: Vec<(usize, PathBuf)> =
        entries.flatten().filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path()))).collect();
    segments.sort();
    for (segment, path) in segments {
        if segment < next_segment {
            publish(root, &path)?;
        } else {
            std::fs::remove_dir_all(&path).with_context(|| format!("discarding {}", path.display()))?;
        }
    }
    // Empty now (and so may be the staging folder); a failure to remove them
    // only leaves empty folders.
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(root.join(STAGING));
    Ok(())
}

/// Moves a staged segment's parts into `root/<table>/`, after checking each.
fn publish(root: &Path, segment: &Path) -> Result<()> {
    for table in std::fs::read_dir(segment).with_context(|| format!("reading {}", segment.display()))?.flatten() {
        let target = root.join(table.file_name());
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        for part in std::fs::read_dir(table.path())?.flatten() {
            let path = part.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                check_part(&path)?;
                std::fs::rename(&path, target.join(part.file_name())).with_context(|| format!("publishing {}", path.display()))?;
            } else {
                // A `.tmp` the writer never finished.
                std::fs::remove_file(&path)?;
            }
        }
    }
    std::fs::remove_dir_all(segment).with_context(|| format!("removing {}", segment.display()))
}

/// Deletes `run`'s published parts in `table` (e.g. a failed run's row before it is retried).
pub fn remove_published(root: &Path, table: &Table, run: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root.join(table.name)) else { return Ok(()) };
    let prefix = format!("part-{run}-");
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Checks that every published part of `run` is a readable Parquet file.
pub fn check_published(root: &Path, run: &str) -> Result<()> {
    let prefix = format!("part-{run}-");
    for table in crate::record::schema::ALL {
        let Ok(entries) = std::fs::read_dir(root.join(table.name)) else { continue };
        for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
            check_part(&e.path())?;
        }
    }
    Ok(())
}
