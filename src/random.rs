//! Every random number optlab draws, from one documented construction.
//!
//! A generator is ChaCha12 (`rand::rngs::ChaCha12Rng`), one of rand's *named
//! portable* generators, whose output is promised stable across rand versions
//! and platforms (`StdRng` is explicitly not). Its 256-bit key is the run's seed
//! (little-endian in the first 8 bytes, zeros after); its 64-bit stream id is
//! the [`Stream`] in the top 16 bits and an index (a task, a segment, an epoch)
//! in the low 48, so initialisation, data order and sampling never share draws:
//! adding a probe that samples cannot shift the batches of a run.

use rand::SeedableRng;
use rand::rngs::ChaCha12Rng;

/// What a stream of random numbers is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Stream {
    /// Model parameters at initialisation (index 0).
    Init = 1,
    /// Minibatch order (index: task × 2¹⁶ + epoch).
    DataOrder = 2,
    /// Random windows of a text corpus (index: the segment of the run).
    Sampling = 3,
    /// Fixed held-out batches shared by every run of a study (index 0).
    Evaluation = 4,
    /// Pixel permutations of permuted-MNIST (index 0).
    Permutation = 5,
    /// The examples of each task held out for validation (index: the task).
    Validation = 6,
}

/// The generator of `stream` at `index` for `seed`.
pub fn rng(seed: u64, stream: Stream, index: u64) -> ChaCha12Rng {
    assert!(index < 1 << 48, "stream index {index} exceeds 48 bits");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha12Rng::from_seed(key);
    rng.set_stream(((stream as u64) << 48) | index);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_are_separate_and_fixed() {
        let draw = |seed, stream, index| -> Vec<u32> {
            let mut r = rng(seed, stream, index);
            (0..4).map(|_| r.random::<u32>()).collect()
        };
        assert_eq!(draw(7, Stream::Init, 0), draw(7, Stream::Init, 0));
        assert_ne!(draw(7, Stream::Init, 0), draw(7, Stream::DataOrder, 0));
        assert_ne!(draw(7, Stream::DataOrder, 0), draw(7, Stream::DataOrder, 1));
        assert_ne!(draw(7, Stream::Init, 0), draw(8, Stream::Init, 0));
        // Pinned: these values must never change, or old studies stop resuming
        // to the same numbers (a new rand release may change StdRng, not this).
        assert_eq!(draw(0, Stream::Init, 0), PINNED);
    }

    // Recorded from the first run of this construction (rand 0.10.3).
    const PINNED: [u32; 4] = [151_435_036, 2_442_896_953, 2_117_388_175, 1_972_438_038];
}
