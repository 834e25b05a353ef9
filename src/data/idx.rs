//! IDX, the MNIST container format: strict parsing whose errors name the file and
//! the defect, so a damaged download is diagnosed instead of silently trained on.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;

/// Magic numbers: unsigned bytes with 3 dimensions (images) or 1 (labels).
const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const CLASSES: u8 = 10;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{}: cannot read: {error}", .path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: corrupt gzip data: {error}", .path.display())]
    Gzip { path: PathBuf, error: std::io::Error },
    #[error("{}: wrong magic number {found} (an IDX {kind} file has {expected})", .path.display())]
    WrongMagic { path: PathBuf, kind: &'static str, expected: u32, found: u32 },
    #[error("{}: truncated: {found} bytes, shorter than the {expected}-byte IDX header", .path.display())]
    ShortHeader { path: PathBuf, expected: usize, found: usize },
    #[error("{}: truncated: expected {expected} bytes of data, found {found}", .path.display())]
    Truncated { path: PathBuf, expected: u128, found: usize },
    #[error("{}: {extra} bytes of trailing garbage after the {expected} bytes of data", .path.display())]
    TrailingGarbage { path: PathBuf, expected: usize, extra: usize },
    #[error("{}: label {value} at index {index} is not a class 0-9", .path.display())]
    LabelOutOfRange { path: PathBuf, index: usize, value: u8 },
    #[error("{} has {n_images} images but {} has {n_labels} labels", .images.display(), .labels.display())]
    CountMismatch { images: PathBuf, labels: PathBuf, n_images: usize, n_labels: usize },
}

/// An IDX file's uncompressed bytes, kept with its path for error messages.
#[derive(Clone, Debug)]
pub struct IdxFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl IdxFile {
    /// Reads a raw or gzipped file; gzip is detected by its magic bytes, not the name.
    pub fn read(path: &Path) -> Result<IdxFile, IdxError> {
        let io = |error| IdxError::Io { path: path.to_owned(), error };
        let raw = std::fs::read(path).map_err(io)?;
        let bytes = if raw.starts_with(&GZIP_MAGIC) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|error| IdxError::Gzip { path: path.to_owned(), error })?;
            out
        } else {
            raw
        };
        Ok(IdxFile { path: path.to_owned(), bytes })
    }

    /// Checks magic and sizes; returns the dimensions and the data after the header.
    fn body(&self, magic: u32, kind: &'static str, n_dims: usize) -> Result<(Vec<usize>, &[u8]), IdxError> {
        let path = || self.path.clone();
        let header = 4 + 4 * n_dims;
        let word = |i: usize| u32::from_be_bytes(self.bytes[4 * i..4 * i + 4].try_into().unwrap());
        if self.bytes.len() >= 4 && word(0) != magic {
            return Err(IdxError::WrongMagic { path: path(), kind, expected: magic, found: word(0) });
        }
        if self.bytes.len() < header {
            return Err(IdxError::ShortHeader { path: path(), expected: header, found: self.bytes.len() });
        }
        let dims: Vec<usize> = (1..=n_dims).map(|i| word(i) as usize).collect();
        // u128 cannot overflow: at most three u32 factors.
        let expected: u128 = dims.iter().map(|&d| d as u128).product();
        let data = &self.bytes[header..];
        if (data.len() as u128) < expected {
            return Err(IdxError::Truncated { path: path(), expected, found: data.len() });
        }
        let expected = expected as usize; // fits: it is at most data.len()
        if data.len() > expected {
            return Err(IdxError::TrailingGarbage { path: path(), expected, extra: data.len() - expected });
        }
        Ok((dims, data))
    }
}

/// Parses a matching images/labels pair into a [`Dataset`] (pixels scaled to [0, 1]).
pub fn parse_pair(images: &IdxFile, labels: &IdxFile) -> Result<Dataset, IdxError> {
    let (dims, pixels) = images.body(IMAGES_MAGIC, "images", 3)?;
    let (_, label_bytes) = labels.body(LABELS_MAGIC, "labels", 1)?;
    if let Some(index) = label_bytes.iter().position(|&v| v >= CLASSES) {
        let value = label_bytes[index];
        return Err(IdxError::LabelOutOfRange { path: labels.path.clone(), index, value });
    }
    if dims[0] != label_bytes.len() {
        return Err(IdxError::CountMismatch {
            images: images.path.clone(),
            labels: labels.path.clone(),
            n_images: dims[0],
            n_labels: label_bytes.len(),
        });
    }
    Ok(Dataset {
        images: pixels.iter().map(|&b| f32::from(b) / 255.0).collect(),
        labels: label_bytes.to_vec(),
        pixels: dims[1] * dims[2],
        channels: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| out.extend(d.to_be_bytes()));
        out.extend_from_slice(data);
        out
    }

    /// Two 2x3 images and their labels.
    fn valid() -> (Vec<u8>, Vec<u8>) {
        (idx(2051, &[2, 2, 3], &[0, 51, 102, 153, 204, 255, 255, 0, 0, 0, 0, 0]), idx(2049, &[2], &[3, 9]))
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Writes both files and parses them; the error as text, which must name the file.
    fn parse_err(images: &[u8], labels: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let i = IdxFile::read(&write(dir.path(), "imgs", images)).unwrap();
        let l = IdxFile::read(&write(dir.path(), "lbls", labels)).unwrap();
        parse_pair(&i, &l).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let (images, labels) = valid();
        let dir = tempfile::tempdir().unwrap();
        // The gzipped copies have names that do not say so: detection is by content.
        for (img, lbl) in [(images.clone(), labels.clone()), (gzip(&images), gzip(&labels))] {
            let i = IdxFile::read(&write(dir.path(), "a", &img)).unwrap();
            let l = IdxFile::read(&write(dir.path(), "b", &lbl)).unwrap();
            let d = parse_pair(&i, &l).unwrap();
            assert_eq!(d.pixels, 6);
            assert_eq!(d.labels, vec![3, 9]);
            assert_eq!(d.image(0), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
            assert_eq!(d.image(1), &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn wrong_magic() {
        let (images, labels) = valid();
        let e = parse_err(&labels, &labels);
        assert!(e.contains("imgs") && e.contains("wrong magic number 2049"), "{e}");
        let e = parse_err(&images, &images);
        assert!(e.contains("lbls") && e.contains("wrong magic number 2051"), "{e}");
    }

    #[test]
    fn truncated_data_and_header() {
        let (images, labels) = valid();
        let e = parse_err(&images[..images.len() - 2], &labels);
        assert!(e.contains("imgs") && e.contains("expected 12 bytes of data, found 10"), "{e}");
        let e = parse_err(&images, &labels[..6]);
        assert!(e.contains("lbls") && e.contains("shorter than the 8-byte IDX header"), "{e}");
        // Absurd dimensions must not overflow or allocate.
        let e = parse_err(&idx(2051, &[u32::MAX; 3], &[]), &labels);
        assert!(e.contains("expected 79228162458924105385300197375 bytes"), "{e}");
    }

    #[test]
    fn trailing_garbage() {
        let (images, mut labels) = valid();
        labels.push(0);
        let e = parse_err(&images, &labels);
        assert!(e.contains("lbls") && e.contains("1 bytes of trailing garbage"), "{e}");
    }

    #[test]
    fn label_out_of_range() {
        let (images, _) = valid();
        let e = parse_err(&images, &idx(2049, &[2], &[1, 10]));
        assert!(e.contains("lbls") && e.contains("label 10 at index 1"), "{e}");
    }

    #[test]
    fn count_mismatch() {
        let (images, _) = valid();
        let e = parse_err(&images, &idx(2049, &[3], &[1, 2, 3]));
        assert!(e.contains("imgs has 2 images but") && e.contains("lbls has 3 labels"), "{e}");
    }

    #[test]
    fn corrupt_gzip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let gz = gzip(&valid().0);
        let path = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
        let e = IdxFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("cut.gz") && e.contains("corrupt gzip"), "{e}");
        let e = IdxFile::read(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(e.contains("absent") && e.contains("cannot read"), "{e}");
    }
}
