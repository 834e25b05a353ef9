//! Batched inverse p-th roots of Shampoo's statistics on the GPU
//! (`kernels/shampoo.cu`): the coupled Newton iteration over every same-size
//! statistic at once, with strided-batched GEMMs, ε relative to λ_max as the CPU
//! defines it (λ_max by power iteration on the device), and convergence decided
//! per matrix on the device; the host reads the flags once every
//! [`CHECK_EVERY`] steps. A matrix that does not converge in f32 goes to the
//! CPU's f64 eigendecomposition, and the fallback is counted.

use std::sync::atomic::Ordering;

use anyhow::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, sys};

use super::launch::{Arg, Launch, blocks};
use super::ops::nn;
use super::{Cuda, DView, DViewMut, base_ptr, elementwise, offset};
use crate::backend::{Backend, Gemm, Precision};
use crate::linalg::{self, Epsilon};

/// Power-iteration steps for λ_max (a root's null-space part scales as
/// ε^{-1/p}, so ε, and λ_max with it, must be right to a few 1e-3). The top
/// eigenvalues of a Gram statistic lie close together: in an f32 model of this
/// iteration, rank-32 statistics of 256×256 gave roots off the CPU's by 2.4e-3
/// after 32 steps, 5e-4 after 100, 9e-5 after 400. Each step is a batched GEMV.
const POWER_STEPS: usize = 100;
/// Newton steps at most (p = 4 takes ~10–25 from z's scaling).
const MAX_STEPS: usize = 60;
/// Steps between host reads of the convergence flags.
const CHECK_EVERY: usize = 8;
/// A root is kept when its last max |M − I| is below this.
const ACCEPT: f32 = 1e-3;
/// Blocks per matrix of the residual's maximum.
const RESIDUAL_CHUNK: usize = 65_536;

type Ptr = sys::CUdeviceptr;

/// The kernels, over `batch` contiguous n×n matrices.
pub(super) mod launches {
    use super::*;

    pub(in super::super) fn power_start(v: Ptr, n: usize, batch: usize) -> Launch {
        Launch::new("power_iteration_start", elementwise(batch * n), vec![Arg::Ptr(v), Arg::Index(n), (batch * n).into()])
    }

    /// λ = vᵀw and v ← w/‖w‖, a block per matrix.
    pub(in super::super) fn power_step([v, lambda, w]: [Ptr; 3], n: usize, batch: usize) -> Launch {
        let cfg = LaunchConfig { grid_dim: (blocks(batch.min(65_535)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        Launch::new("power_iteration_step", cfg, vec![Arg::Ptr(v), Arg::Ptr(lambda), Arg::Ptr(w), Arg::Index(n), Arg::Index(batch)])
    }

    /// M₀ and X₀ from A, λ_max and ε: buffers [m, x, a, lambda].
    pub(in super::super) fn start([m, x, a, lambda]: [Ptr; 4], eps: Epsilon, p: u32, n: usize, batch: usize) -> Launch {
        let total = batch * n * n;
        let args = vec![
            Arg::Ptr(m),
            Arg::Ptr(x),
            Arg::Ptr(a),
            Arg::Ptr(lambda),
            (eps.absolute as f32).into(),
            (eps.relative as f32).into(),
            (p as i32).into(),
            Arg::Index(n),
            total.into(),
        ];
        Launch::new("newton_start", elementwise(total), args)
    }

    /// T = ((p + 1)I − M)/p, or I where done: buffers [t, m, done].
    pub(in super::super) fn factor([t, m, done]: [Ptr; 3], p: u32, n: usize, batch: usize) -> Launch {
        let total = batch * n * n;
        let args = vec![Arg::Ptr(t), Arg::Ptr(m), Arg::Ptr(done), (p as i32).into(), Arg::Index(n), total.into()];
        Launch::new("newton_factor", elementwise(total), args)
    }

    /// max |M − I| per matrix into `residual` (zeroed first), then the done flags
    /// and last residuals: buffers [residual, m, done, err].
    pub(in super::super) fn check([residual, m, done, err]: [Ptr; 4], n: usize, batch: usize) -> [Launch; 3] {
        let chunks = (n * n).div_ceil(RESIDUAL_CHUNK).max(1);
        let cfg = LaunchConfig { grid_dim: (blocks(chunks), blocks(batch), 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        [
            nn::fill(residual, 0.0, batch),
            Launch::new("newton_residual", cfg, vec![Arg::Ptr(residual), Arg::Ptr(m), Arg::Index(n)]),
            Launch::new("newton_converged", elementwise(batch), vec![Arg::Ptr(done), Arg::Ptr(err), Arg::Ptr(residual), Arg::Index(batch)]),
        ]
    }
}

/// The iteration's device buffers for `batch` n×n matrices.
struct Scratch {
    /// A, M, T, Tᵖ, X, and two product targets (n² per matrix).
    squares: [CudaSlice<f32>; 7],
    /// Power-iteration vector and product (n per matrix).
    vectors: [CudaSlice<f32>; 2],
    /// λ_max and the last max |M − I| (one per matrix).
    lambda: CudaSlice<f32>,
    err: CudaSlice<f32>,
    residual: CudaSlice<u32>,
    done: CudaSlice<i32>,
}

impl Cuda {
    fn scratch(&self, n: usize, batch: usize) -> Result<Scratch> {
        let square = || self.alloc::<f32>(batch * n * n);
        Ok(Scratch {
            squares: [square()?, square()?, square()?, square()?, square()?, square()?, square()?],
            vectors: [self.alloc(batch * n)?, self.alloc(batch * n)?],
            lambda: self.alloc(batch)?,
            err: self.alloc(batch)?,
            residual: self.alloc(batch)?,
            done: self.alloc(batch)?,
        })
    }

    pub(super) fn inverse_roots_impl<'a>(
        &self,
        roots: Vec<DViewMut<'a>>,
        stats: Vec<DView<'a>>,
        n: usize,
        p: u32,
        eps: Epsilon,
    ) -> Result<Vec<bool>> {
        assert_eq!(roots.len(), stats.len(), "inverse_roots: one root per statistic");
        assert!(roots.iter().zip(&stats).all(|(r, s)| r.len == n * n && s.len == n * n), "inverse_roots: matrices must be {n}×{n}");
        if roots.is_empty() || n == 0 {
            return Ok(vec![true; roots.len()]);
        }
        // Freed in stream order when dropped, after the copies queued below.
        let scratch = self.scratch(n, stats.len())?;
        let (x, errors) = self.coupled_newton(&scratch, &stats, n, p, eps)?;
        let mut computed = Vec::with_capacity(roots.len());
        for (i, ((root, stat), err)) in roots.into_iter().zip(stats).zip(errors).enumerate() {
            if err.is_finite() && err < ACCEPT {
                self.copy_raw(root.ptr, offset(x, i * n * n), n * n);
                computed.push(true);
                continue;
            }
            // The f32 iteration did not converge (ill-conditioned or non-finite
            // statistic): the CPU's f64 eigendecomposition decides, and a root
            // it computes is counted. On failure the caller's root stays.
            let host = linalg::sym_inverse_root(&self.download(stat)?, n, p, eps);
            if let Ok(host) = &host {
                self.root_fallbacks.fetch_add(1, Ordering::Relaxed);
                self.write_from_host(root, host)?;
            }
            computed.push(host.is_ok());
        }
        self.synchronize()?;
        Ok(computed)
    }

    /// Runs the iteration over the batch gathered from `stats`; returns the
    /// buffer holding the roots (X, n² per matrix) and each matrix's last
    /// max |M − I|.
    fn coupled_newton(&self, s: &Scratch, stats: &[DView<'_>], n: usize, p: u32, eps: Epsilon) -> Result<(Ptr, Vec<f32>)> {
        let (batch, nn) = (stats.len(), n * n);
        let [a, mut m, t, tp, mut x, mut spare, mut x_spare] = s.squares.each_ref().map(base_ptr);
        let [v, w] = s.vectors.each_ref().map(base_ptr);
        let (lambda, err, residual, done) = (base_ptr(&s.lambda), base_ptr(&s.err), base_ptr(&s.residual), base_ptr(&s.done));
        for (i, stat) in stats.iter().enumerate() {
            self.copy_raw(offset(a, i * nn), stat.ptr, nn);
        }
        // λ_max by power iteration, then M₀ and X₀.
        let matvec = Gemm { m: n, k: n, n: 1, trans_a: false, trans_b: false };
        self.launch(&launches::power_start(v, n, batch));
        for _ in 0..POWER_STEPS {
            self.gemm_batched(w, a, v, matvec, 1.0, 0.0, batch, [n, nn, n], Precision::F32);
            self.launch(&launches::power_step([v, lambda, w], n, batch));
        }
        self.launch(&launches::start([m, x, a, lambda], eps, p, n, batch));
        self.launch(&nn::fill(err, f32::INFINITY, batch));
        // Newton steps, every matrix at once; a done matrix takes T = I.
        let square = Gemm { m: n, k: n, n, trans_a: false, trans_b: false };
        for step in 1..=MAX_STEPS {
            self.launch(&launches::factor([t, m, done], p, n, batch));
            self.gemm_batched(x_spare, x, t, square, 1.0, 0.0, batch, [nn; 3], Precision::F32);
            std::mem::swap(&mut x, &mut x_spare);
            self.copy_raw(tp, t, batch * nn);
            for _ in 1..p {
                self.gemm_batched(spare, tp, t, square, 1.0, 0.0, batch, [nn; 3], Precision::F32);
                self.copy_raw(tp, spare, batch * nn);
            }
            self.gemm_batched(spare, tp, m, square, 1.0, 0.0, batch, [nn; 3], Precision::F32);
            std::mem::swap(&mut m, &mut spare);
            launches::check([residual, m, done, err], n, batch).iter().for_each(|l| self.launch(l));
            if step % CHECK_EVERY == 0 && self.host(&s.done)?.iter().all(|&d| d != 0) {
                break;
            }
        }
        Ok((x, self.host(&s.err)?))
    }
}
