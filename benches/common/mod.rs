//! Helpers shared by the benches: inputs, and the GPU when one is usable.

use optlab::backend::cuda::Cuda;
use rand::{RngExt, SeedableRng, rngs::StdRng};

pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// The GPU backend, or `None` with the reason printed (CUDA benches are skipped).
pub fn gpu() -> Option<Cuda> {
    Cuda::new(0).inspect_err(|e| eprintln!("CUDA benches skipped: {e:#}")).ok()
}
