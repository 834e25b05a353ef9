//! Minibatch order: one shuffled pass over the examples, drawn from the caller's
//! RNG so that a run's seed fixes every batch.

use rand::seq::SliceRandom;

/// Indices `0..n` shuffled and cut into batches of `batch`; the last, partial
/// batch is kept so every example is seen once per epoch.
///
/// Panics if `batch` is 0 (a configuration bug).
pub fn shuffled_batches(n: usize, batch: usize, rng: &mut impl rand::Rng) -> Vec<Vec<usize>> {
    assert!(batch > 0, "batch size must be positive");
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn covers_every_index_once_with_partial_tail() {
        let batches = shuffled_batches(10, 4, &mut StdRng::seed_from_u64(1));
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all: Vec<usize> = batches.concat();
        assert_ne!(all, (0..10).collect::<Vec<_>>(), "should be shuffled");
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(shuffled_batches(0, 4, &mut StdRng::seed_from_u64(1)).is_empty());
    }

    #[test]
    fn same_seed_same_batches() {
        let a = shuffled_batches(100, 7, &mut StdRng::seed_from_u64(3));
        assert_eq!(a, shuffled_batches(100, 7, &mut StdRng::seed_from_u64(3)));
        assert_ne!(a, shuffled_batches(100, 7, &mut StdRng::seed_from_u64(4)));
    }
}
