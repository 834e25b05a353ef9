//! CIFAR-10 in its official binary format: `cifar-10-binary.tar.gz` holds five
//! training batches and one test batch of 10,000 records each, a record being a
//! label byte and a 32×32 image as three planes (R, G, B) of 1,024 bytes.
//!
//! The archive is the unit of verification: its SHA-256 is the one published
//! for the file at the canonical URL, and it is read in place (no extraction),
//! so a loaded dataset always comes from checked bytes. No package registry
//! carries a full copy, so offline the archive must be put in place by hand.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::fetch::{self, Artifact, FileSpec, Form, Route};
use super::{Dataset, Split};

const ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// Of the 170,052,171-byte archive (MD5 c32a1d4a…, the published one).
const SHA256: &str = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";
const TRAIN_BATCHES: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const TEST_BATCH: &str = "test_batch.bin";
const CHANNELS: usize = 3;
const PIXELS: usize = CHANNELS * 32 * 32;
const RECORD: usize = 1 + PIXELS;
const CLASSES: u8 = 10;

/// The archive, verified as a whole; downloaded only from its canonical location.
pub(super) const CIFAR10: Artifact = Artifact {
    name: "cifar10",
    files: &[FileSpec { stem: ARCHIVE, sha256: SHA256, form: Form::Exact }],
    routes: cifar_routes,
    by_hand: "It comes from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (170 MB). No package registry \
              carries it; offline, train on dataset \"mnist\" or \"fashion-mnist\" instead.",
};

fn cifar_routes() -> Vec<Route> {
    vec![fetch::curl_route("https://www.cs.toronto.edu/~kriz/", "", 1800)]
}

/// Finds the archive (downloading it into the first search folder if absent),
/// verifies it and parses its six batches.
pub(super) fn load(data_dir: Option<&Path>) -> Result<Split> {
    let archive = fetch::obtain(&CIFAR10, data_dir)?.remove(0);
    parse_archive(&archive.bytes, &archive.path)
}

/// The six batches of a verified archive (`path` names it in errors).
fn parse_archive(bytes: &[u8], path: &Path) -> Result<Split> {
    let mut train = vec![None; TRAIN_BATCHES.len()];
    let mut test = None;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries().with_context(|| format!("{}: not a tar.gz archive", path.display()))? {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", path.display()))?;
        let name = entry.path()?.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let slot = match TRAIN_BATCHES.iter().position(|b| *b == name) {
            Some(i) => &mut train[i],
            None if name == TEST_BATCH => &mut test,
            None => continue,
        };
        let mut batch = Vec::new();
        entry.read_to_end(&mut batch).with_context(|| format!("{}: corrupt archive member {name}", path.display()))?;
        *slot = Some(parse_batch(&batch).with_context(|| format!("{}: {name}", path.display()))?);
    }
    let mut missing: Vec<&str> = TRAIN_BATCHES.iter().zip(&train).filter(|(_, b)| b.is_none()).map(|(n, _)| *n).collect();
    missing.extend(test.is_none().then_some(TEST_BATCH));
    let (Some(test), true) = (test, missing.is_empty()) else {
        bail!("{}: the archive lacks {}", path.display(), missing.join(", "));
    };
    let train: Vec<Dataset> = train.into_iter().flatten().collect();
    Ok(Split { train: Dataset::concat(&train.iter().collect::<Vec<_>>()), test })
}

/// One batch file: whole records, labels 0–9, pixels scaled to [0, 1] and kept planar (CHW).
fn parse_batch(bytes: &[u8]) -> Result<Dataset> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        bail!("{} bytes is not a whole number of {RECORD}-byte records (truncated or not a CIFAR-10 batch)", bytes.len());
    }
    let records = bytes.chunks_exact(RECORD);
    let mut images = Vec::with_capacity(records.len() * PIXELS);
    let mut labels = Vec::with_capacity(records.len());
    for (i, record) in records.enumerate() {
        if record[0] >= CLASSES {
            bail!("label {} of record {i} is not a class 0-9", record[0]);
        }
        labels.push(record[0]);
        images.extend(record[1..].iter().map(|&b| f32::from(b) / 255.0));
    }
    Ok(Dataset { images, labels, pixels: PIXELS, channels: CHANNELS })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sha2::{Digest, Sha256};

    use super::*;

    /// The archive at `path`, checked against `sha256` as `load` checks the official one.
    fn read_archive(path: &Path, sha256: &'static str) -> Result<Split> {
        let spec = FileSpec { stem: ARCHIVE, sha256, form: Form::Exact };
        let file = fetch::obtain_from("cifar10", &[spec], &[path.parent().unwrap().to_path_buf()], &[], "")?.remove(0);
        parse_archive(&file.bytes, &file.path)
    }

    /// A batch in the official format: record r has label r % 10 and pixels (r + p) % 256.
    fn batch(records: usize, first: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(records * RECORD);
        for r in first..first + records {
            out.push((r % 10) as u8);
            out.extend((0..PIXELS).map(|p| ((r + p) % 256) as u8));
        }
        out
    }

    /// A gzipped tar laid out like the official archive, with the given members.
    fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), bytes.as_slice()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn official_layout() -> Vec<(&'static str, Vec<u8>)> {
        let mut members: Vec<_> = TRAIN_BATCHES.iter().enumerate().map(|(i, n)| (*n, batch(3, 3 * i))).collect();
        members.push(("batches.meta.txt", b"airplane\nautomobile\n".to_vec()));
        members.push((TEST_BATCH, batch(2, 100)));
        members
    }

    fn write(dir: &Path, bytes: &[u8]) -> (PathBuf, &'static str) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(ARCHIVE);
        std::fs::write(&path, bytes).unwrap();
        (path, Box::leak(format!("{:x}", Sha256::digest(bytes)).into_boxed_str()))
    }

    #[test]
    fn reads_every_batch_in_order_planar_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sha) = write(dir.path(), &archive(&official_layout()));
        let split = read_archive(&path, sha).unwrap();
        assert_eq!((split.train.len(), split.test.len(), split.train.pixels, split.train.channels), (15, 2, 3072, 3));
        // Training records come from batches 1..5 in order: record r has label r % 10.
        assert_eq!(split.train.labels, (0..15).map(|r| (r % 10) as u8).collect::<Vec<_>>());
        assert_eq!(split.test.labels, [0, 1]);
        // Pixel p of record r is ((r + p) % 256) / 255, planes untouched: green starts at p = 1024.
        let record7 = split.train.image(7);
        assert_eq!(record7[0], 7.0 / 255.0);
        assert_eq!(record7[1024], ((7 + 1024) % 256) as f32 / 255.0);
        assert_eq!(split.test.image(1)[3071], ((101 + 3071) % 256) as f32 / 255.0);
    }

    #[test]
    fn wrong_hash_is_an_error_naming_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sha) = write(dir.path(), &archive(&official_layout()));
        let err = format!("{:#}", read_archive(&path, SHA256).unwrap_err());
        assert!(err.contains(SHA256) && err.contains(sha) && err.contains("not the official"), "{err}");
    }

    #[test]
    fn truncated_or_damaged_batches_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut members = official_layout();
        members[2].1.truncate(RECORD * 2 + 100);
        let (path, sha) = write(dir.path(), &archive(&members));
        let err = format!("{:#}", read_archive(&path, sha).unwrap_err());
        assert!(err.contains("data_batch_3.bin") && err.contains("whole number"), "{err}");

        let mut members = official_layout();
        members.iter_mut().find(|(n, _)| *n == TEST_BATCH).unwrap().1[RECORD] = 10;
        let (path, sha) = write(dir.path(), &archive(&members));
        let err = format!("{:#}", read_archive(&path, sha).unwrap_err());
        assert!(err.contains("test_batch.bin") && err.contains("label 10 of record 1"), "{err}");

        let members: Vec<_> = official_layout().into_iter().filter(|(n, _)| *n != "data_batch_4.bin").collect();
        let (path, sha) = write(dir.path(), &archive(&members));
        let err = format!("{:#}", read_archive(&path, sha).unwrap_err());
        assert!(err.contains("lacks data_batch_4.bin"), "{err}");

        let whole = archive(&official_layout());
        let (path, sha) = write(dir.path(), &whole[..whole.len() / 2]);
        assert!(read_archive(&path, sha).is_err(), "a cut archive must not load");
    }

    #[test]
    fn offline_and_absent_names_the_alternatives_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar10");
        let offline = Route { label: "the canonical URL".into(), run: Box::new(|_, _| bail!("could not resolve host")) };
        let err = format!(
            "{:#}",
            fetch::obtain_from("cifar10", CIFAR10.files, std::slice::from_ref(&dest), &[offline], CIFAR10.by_hand).unwrap_err()
        );
        for needle in
            ["cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", SHA256, "fashion-mnist", "OPTLAB_DATA_DIR", &dest.display().to_string()]
        {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "no partial download left behind");
    }
}
