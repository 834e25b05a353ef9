//! Continual-learning task streams built from one [`Split`]: class-incremental
//! (disjoint groups of classes) and permuted (same classes, scrambled pixels).

use anyhow::ensure;
use rand::seq::SliceRandom;

use super::{Dataset, Split};

const CLASSES: u8 = 10;

/// One task of a stream: the examples to train on and to evaluate it with.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: usize,
    pub classes: Vec<u8>,
    pub train: Dataset,
    pub test: Dataset,
}

/// One task per group, holding the train and test examples of its classes.
///
/// Labels keep their original values (one shared 10-way output space), which is
/// what makes the setting class-incremental rather than task-incremental.
pub fn class_incremental(split: &Split, groups: &[Vec<u8>]) -> anyhow::Result<Vec<Task>> {
    check_groups(groups)?;
    Ok(groups
        .iter()
        .enumerate()
        .map(|(id, classes)| Task {
            id,
            classes: classes.clone(),
            train: split.train.filter_classes(classes),
            test: split.test.filter_classes(classes),
        })
        .collect())
}

/// Split-MNIST: five tasks of two consecutive digits.
pub fn default_class_groups() -> Vec<Vec<u8>> {
    (0..CLASSES).step_by(2).map(|c| vec![c, c + 1]).collect()
}

/// Checks class groups: none empty, every class in 0-9 and in one group at most.
pub fn check_groups(groups: &[Vec<u8>]) -> anyhow::Result<()> {
    ensure!(!groups.is_empty(), "no class groups given");
    let mut seen = [false; CLASSES as usize];
    for (i, group) in groups.iter().enumerate() {
        ensure!(!group.is_empty(), "group {i} is empty");
        for &c in group {
            ensure!(c < CLASSES, "class {c} in group {i} is not in 0-9");
            ensure!(!seen[c as usize], "class {c} appears in more than one group");
            seen[c as usize] = true;
        }
    }
    Ok(())
}

/// Permuted-MNIST: `n_tasks` tasks over all 10 classes, each with its own fixed
/// random pixel permutation (no identity task), applied to train and test alike.
///
/// Permutations are drawn in task order from one RNG seeded with `seed`, so a
/// seed fixes them and a longer stream extends a shorter one.
pub fn permuted(split: &Split, n_tasks: usize, seed: u64) -> Vec<Task> {
    let mut rng = crate::random::rng(seed, crate::random::Stream::Permutation, 0);
    (0..n_tasks)
        .map(|id| {
            let mut perm: Vec<usize> = (0..split.train.pixels).collect();
            perm.shuffle(&mut rng);
            Task { id, classes: (0..CLASSES).collect(), train: split.train.permute_pixels(&perm), test: split.test.permute_pixels(&perm) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_class` examples of each class; pixel p of example i is `i * pixels + p`.
    fn dataset(per_class: usize, pixels: usize) -> Dataset {
        let labels: Vec<u8> = (0..per_class * 10).map(|i| (i % 10) as u8).collect();
        let images = (0..labels.len() * pixels).map(|v| v as f32).collect();
        Dataset { images, labels, pixels, channels: 1 }
    }

    fn split() -> Split {
        Split { train: dataset(3, 16), test: dataset(2, 16) }
    }

    #[test]
    fn class_incremental_partitions_by_class() {
        let s = split();
        let tasks = class_incremental(&s, &default_class_groups()).unwrap();
        assert_eq!(tasks.len(), 5);
        for (id, t) in tasks.iter().enumerate() {
            let want = [2 * id as u8, 2 * id as u8 + 1];
            assert_eq!((t.id, t.classes.as_slice()), (id, want.as_slice()));
            assert!(t.train.labels.iter().chain(&t.test.labels).all(|l| want.contains(l)), "labels not remapped");
            assert_eq!((t.train.len(), t.test.len()), (6, 4));
        }
        let total: usize = tasks.iter().map(|t| t.train.len()).sum();
        assert_eq!(total, s.train.len());
    }

    #[test]
    fn bad_groups_are_rejected() {
        let s = split();
        for (groups, msg) in [
            (vec![vec![0], vec![]], "group 1 is empty"),
            (vec![vec![0, 10]], "class 10 in group 0"),
            (vec![vec![0, 1], vec![1, 2]], "class 1 appears in more than one group"),
            (vec![], "no class groups"),
        ] {
            let e = class_incremental(&s, &groups).unwrap_err().to_string();
            assert!(e.contains(msg), "{groups:?}: {e}");
        }
    }

    #[test]
    fn permutations_are_fixed_per_seed_bijections() {
        let s = split();
        let tasks = permuted(&s, 3, 42);
        let perm_of = |t: &Task| -> Vec<usize> { t.train.image(0).iter().map(|&v| v as usize).collect() };
        let mut perms = Vec::new();
        for t in &tasks {
            assert_eq!(t.classes, (0..10).collect::<Vec<u8>>());
            assert_eq!(t.train.labels, s.train.labels);
            let p = perm_of(t);
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..16).collect::<Vec<_>>(), "not a bijection");
            assert_ne!(p, sorted, "no identity task");
            // Same permutation on every train and test image.
            assert_eq!(t.test.image(1), s.test.permute_pixels(&p).image(1));
            assert_eq!(t.train.image(4), s.train.permute_pixels(&p).image(4));
            perms.push(p);
        }
        assert!(perms[0] != perms[1] && perms[1] != perms[2] && perms[0] != perms[2], "tasks must differ");
        let again: Vec<_> = permuted(&s, 2, 42).iter().map(perm_of).collect();
        assert_eq!(again, perms[..2], "fixed by the seed, prefix-stable");
        let other: Vec<_> = permuted(&s, 3, 43).iter().map(perm_of).collect();
        assert_ne!(other, perms);
    }
}
