//! Where a study's numbers came from: one file per session that worked on a
//! study (`provenance/<session>.toml`, the session being the start time and
//! the process id), named in the `runs` table by the session that finished
//! each run.
//!
//! The code (optlab version, git commit with `-dirty` if tracked files differed,
//! rustc: fixed at build time by build.rs), the machine (CPU model, the
//! instruction set of the CPU loops, threads; GPU model, driver and CUDA version
//! when used), the data (SHA-256 of every file), the exact command line, and the
//! session's start and end (UTC).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::backend::Backend;

const FOLDER: &str = "provenance";

#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub optlab_version: String,
    pub git_commit: String,
    pub rustc: String,
    /// The backend that ran the study, described (see `Backend::describe`).
    pub device: String,
    /// Data file → SHA-256 of its verified content.
    pub data: BTreeMap<String, String>,
    pub command_line: Vec<String>,
    /// `<start, UTC>-<process id>`: unique among the sessions of a study.
    pub session: String,
    /// UTC, RFC 3339.
    pub started: String,
    pub ended: Option<String>,
}

impl Provenance {
    /// This process, about to run a study on `backend` with `data`.
    pub fn now<B: Backend>(backend: &B, data: BTreeMap<String, String>) -> Self {
        let now = std::time::SystemTime::now();
        Self {
            optlab_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("OPTLAB_GIT_COMMIT").into(),
            rustc: env!("OPTLAB_RUSTC").into(),
            device: backend.describe(),
            data,
            command_line: std::env::args().collect(),
            session: format!("{}-{}", utc(now, false), std::process::id()),
            started: utc(now, true),
            ended: None,
        }
    }

    /// Writes (or rewrites, once `ended` is set) this session's file under `root`.
    pub fn write(&self, root: &Path) -> Result<()> {
        let dir = root.join(FOLDER);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.toml", self.session));
        super::folder::write_atomically(&path, &toml::to_string_pretty(self)?)
    }

    /// Marks the session ended now and rewrites its file.
    pub fn finish(&mut self, root: &Path) -> Result<()> {
        self.ended = Some(utc(std::time::SystemTime::now(), true));
        self.write(root)
    }
}

/// `t` in UTC: `2026-12-02T06:20:00Z` (`rfc3339`), or `20261202-062000`
/// (for folder names). Days to civil date: Hinnant's algorithm.
pub fn utc(t: std::time::SystemTime, rfc3339: bool) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
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
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if rfc3339 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}{month:02}{day:02}-{h:02}{m:02}{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc(at(0), true), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(utc(at(951_827_696), true), "2000-02-29T12:34:56Z");
        assert_eq!(utc(at(951_827_696), false), "20000229-123456");
    }

    #[test]
    fn a_session_file_records_code_machine_data_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Provenance::now(&crate::backend::Cpu, BTreeMap::from([("mnist/x".into(), "abc".into())]));
        p.finish(dir.path()).unwrap();
        let file = std::fs::read_dir(dir.path().join(FOLDER)).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(file).unwrap();
        for needle in ["git_commit", "rustc", "cpu: ", "threads", "\"mnist/x\" = \"abc\"", "command_line", "ended"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
