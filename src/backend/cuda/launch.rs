//! What a kernel launch is made of, and the checks that decide, before the
//! driver sees it, whether it can run: pure functions, so that they are tested
//! on machines without a GPU.
//!
//! The kernels index with 32-bit `int`s where a size is declared `int` in
//! `kernels/*.cu`; such sizes travel as [`Arg::Index`] and a value past
//! `i32::MAX` is an error naming the kernel, never a silent truncation.

use std::fmt::Write;

use anyhow::{Result, bail};
use cudarc::driver::{LaunchConfig, sys};

/// One kernel argument; `launch` keeps them alive until the launch is queued.
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg {
    Ptr(sys::CUdeviceptr),
    F32(f32),
    /// A flag or a code (not a size).
    I32(i32),
    /// A 64-bit element count (`long long` in the kernel).
    I64(i64),
    /// A size the kernel takes as a 32-bit `int`.
    Index(usize),
}

impl From<f32> for Arg {
    fn from(x: f32) -> Self {
        Arg::F32(x)
    }
}
impl From<i32> for Arg {
    fn from(x: i32) -> Self {
        Arg::I32(x)
    }
}
impl From<usize> for Arg {
    fn from(x: usize) -> Self {
        Arg::I64(x as i64)
    }
}

/// A kernel launch: entry point, geometry and arguments in the kernel's
/// parameter order. The ops build them with pure functions, so that the host
/// emulation of the kernels (`emulator.rs`) runs exactly what the backend queues.
#[derive(Clone, Debug)]
pub(super) struct Launch {
    pub(super) kernel: String,
    pub(super) cfg: LaunchConfig,
    pub(super) args: Vec<Arg>,
}

impl Launch {
    pub(super) fn new(kernel: impl Into<String>, cfg: LaunchConfig, args: Vec<Arg>) -> Self {
        Self { kernel: kernel.into(), cfg, args }
    }
}

/// A grid dimension of `n` blocks, saturating so that [`check`] rejects a count
/// past CUDA's limits rather than a wrapped one running.
pub(super) fn blocks(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// CUDA's grid limits (compute capability ≥ 3.0): x up to 2³¹ − 1, y and z up to 65,535.
const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
/// Threads per block on every architecture since Fermi.
const MAX_BLOCK_THREADS: u32 = 1024;

/// Whether a launch of `kernel` runs: `Ok(false)` when its grid is empty (zero-size
/// work, which the CPU backend also skips), an error naming the kernel, its
/// geometry and its sizes when a grid or block limit or a 32-bit size is exceeded.
pub(super) fn check(kernel: &str, cfg: &LaunchConfig, args: &[Arg]) -> Result<bool> {
    let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
    let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
    if let Some((i, (&g, &max))) = grid.iter().zip(&MAX_GRID).enumerate().find(|(_, (g, max))| g > max) {
        bail!("{}: grid dimension {} = {g} exceeds CUDA's limit {max}", describe(kernel, cfg, args), ["x", "y", "z"][i]);
    }
    let threads: u64 = block.iter().map(|&b| u64::from(b)).product();
    if threads == 0 || threads > u64::from(MAX_BLOCK_THREADS) {
        bail!("{}: {threads} threads per block (CUDA allows 1 to {MAX_BLOCK_THREADS})", describe(kernel, cfg, args));
    }
    if let Some((i, &n)) = args.iter().enumerate().find_map(|(i, a)| match a {
        Arg::Index(n) if *n > i32::MAX as usize => Some((i, n)),
        _ => None,
    }) {
        bail!("{}: argument {i} = {n} exceeds the kernel's 32-bit index", describe(kernel, cfg, args));
    }
    Ok(grid.iter().all(|&g| g > 0))
}

/// `kernel <name> (grid …, block …, … B shared; sizes …)`: what an error about a
/// launch says, so that a failure names the kernel and the shapes it was given.
pub(super) fn describe(kernel: &str, cfg: &LaunchConfig, args: &[Arg]) -> String {
    let mut s = format!("kernel {kernel} (grid {:?}, block {:?}, {} B shared", cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes);
    let sizes: Vec<String> = args
        .iter()
        .filter_map(|a| match a {
            Arg::Index(n) => Some(n.to_string()),
            Arg::I64(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    if !sizes.is_empty() {
        let _ = write!(s, "; sizes {}", sizes.join(", "));
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
    }

    #[test]
    fn an_empty_grid_skips_the_launch() {
        assert!(!check("fill", &cfg((0, 1, 1), 256), &[Arg::I64(0)]).unwrap());
        assert!(!check("attention_forward_64", &cfg((4, 0, 1), 128), &[]).unwrap());
        assert!(check("fill", &cfg((1, 1, 1), 256), &[Arg::I64(1)]).unwrap());
    }

    #[test]
    fn grid_and_block_limits_are_errors_naming_the_kernel() {
        let e = check("attention_forward_64", &cfg((8, 65_536, 1), 128), &[Arg::Index(1024)]).unwrap_err().to_string();
        assert!(e.contains("attention_forward_64") && e.contains("grid dimension y = 65536") && e.contains("sizes 1024"), "{e}");
        assert!(check("k", &cfg((i32::MAX as u32, 65_535, 65_535), 1024), &[]).unwrap(), "the limits themselves are allowed");
        let e = check("k", &cfg((i32::MAX as u32 + 1, 1, 1), 256), &[]).unwrap_err().to_string();
        assert!(e.contains("grid dimension x"), "{e}");
        let e = check("k", &cfg((1, 1, 1), 2048), &[]).unwrap_err().to_string();
        assert!(e.contains("2048 threads per block"), "{e}");
    }

    #[test]
    fn a_size_past_the_32_bit_index_is_an_error_not_a_truncation() {
        let at_limit = i32::MAX as usize;
        assert!(check("layernorm_forward", &cfg((1, 1, 1), 256), &[Arg::Index(at_limit), Arg::Index(64)]).unwrap());
        let e = check("layernorm_forward", &cfg((1, 1, 1), 256), &[Arg::Ptr(0), Arg::Index(at_limit + 1), Arg::Index(64)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layernorm_forward") && e.contains("argument 1 = 2147483648"), "{e}");
        // 64-bit counts are not limited.
        assert!(check("fill", &cfg((1, 1, 1), 256), &[Arg::I64(1 << 40)]).unwrap());
    }
}
