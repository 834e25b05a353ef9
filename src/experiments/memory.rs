//! A run's peak memory, estimated before it starts, so a model too large for
//! this machine is refused with the estimate instead of aborting mid-study.
//!
//! The estimate is deliberately coarse and on the safe side of typical use:
//! parameters and gradients, the parameters before a step, up to four
//! optimizer states of the model's size (SOAP: m, v and two bases per matrix are
//! below that), the activations a batch keeps for backward, and the f64 copy
//! a spectrum probe makes of the largest matrix.

use anyhow::{Result, bail};

/// Bytes one run holds at its peak.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub bytes: u64,
}

impl Estimate {
    /// From the parameter count, the activation values of a batch and the
    /// element count of the largest matrix.
    pub fn new(params: usize, activations: usize, largest_matrix: usize) -> Self {
        let f32s = (params as u64).saturating_mul(8).saturating_add(activations as u64);
        let probe = (largest_matrix as u64).saturating_mul(8 * 3);
        Self { bytes: f32s.saturating_mul(4).saturating_add(probe) }
    }
}

/// Memory this process can still use: `MemAvailable` of `/proc/meminfo`
/// (None where that file does not exist).
fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses an estimate above the memory available now.
pub fn check(estimate: Estimate) -> Result<()> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match available() {
        Some(free) if estimate.bytes > free => bail!(
            "this model needs about {:.1} GiB per run (parameters, gradients, optimizer state, activations), \
             more than the {:.1} GiB available: make it smaller (widths, depth, batch size)",
            gib(estimate.bytes),
            gib(free)
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_model_is_refused_with_its_size() {
        let err = check(Estimate::new(usize::MAX / 2, 0, 0)).unwrap_err().to_string();
        assert!(err.contains("GiB per run"), "{err}");
        check(Estimate::new(1000, 1000, 100)).unwrap();
    }
}
