//! CUDA batched Newton-Schulz for Muon (`kernels/newton_schulz.cu`; the CPU's
//! `linalg::newton_schulz` is the reference). Both paths take X·Xᵀ and (P − βI)·X
//! from bf16 operands and A·A from tf32, accumulate in f32, and keep an f32
//! master X with the polynomial's mean diagonal applied to it (why: the kernel
//! file's header), so results agree with the CPU to ~1e-2 of max |X| after 5
//! steps, not to f32 round-off.

use std::ops::Range;

use anyhow::{Result, anyhow};
use cudarc::driver::{LaunchConfig, sys};

use super::constants::{MMA_PAD_BF16, MMA_PAD_TF32, NS_ONE_LAUNCH_MAX_SHORT, NS_THREADS};
use super::launch::{Arg, Launch, blocks};
use super::{Cuda, DeviceBuf, base_ptr, elementwise, offset};
use crate::backend::{Gemm, Precision};
use crate::linalg::{self, NsCoefficients};

/// The one-launch kernel's entry point.
pub(super) const ONE_LAUNCH_KERNEL: &str = "newton_schulz_in_shared_memory";
/// Values per block of the cuBLAS path's partial sums of squares (at most
/// `MAX_NORM_CHUNKS` blocks per matrix).
const NORM_CHUNK: usize = 16_384;
const MAX_NORM_CHUNKS: usize = 256;

/// Dynamic shared memory of the one-launch kernel for short side `s` and long side
/// `l`, laid out as in the kernel, with both sides rounded up to 16 (`sp`, `lp`):
/// the Gram matrix in f32, the shifted polynomial and X in bf16, each row padded
/// for the tensor cores' fragment loads:
/// `sp·(sp + MMA_PAD_TF32)·4 + sp·(sp + MMA_PAD_BF16)·2 + sp·(lp + MMA_PAD_BF16)·2` bytes.
fn one_launch_shared_bytes(s: usize, l: usize) -> usize {
    let (sp, lp) = (s.next_multiple_of(16), l.next_multiple_of(16));
    sp * (sp + MMA_PAD_TF32) * 4 + sp * (sp + MMA_PAD_BF16) * 2 + sp * (lp + MMA_PAD_BF16) * 2
}

/// (a, b, c) of each step as the one-launch kernel reads them; at least one
/// triple, so that the buffer is never empty.
pub(super) fn one_launch_schedule(steps: usize, coeffs: NsCoefficients) -> Vec<f32> {
    (0..steps.max(1)).flat_map(|k| <[f32; 3]>::from(coeffs.at(k))).collect()
}

/// The one-launch kernel over `batch` rows×cols matrices, one block each:
/// buffers [out, input, offsets (i64, one per matrix), schedule].
pub(super) fn one_launch(
    [rows, cols]: [usize; 2],
    batch: usize,
    steps: usize,
    coeffs: NsCoefficients,
    buffers: [sys::CUdeviceptr; 4],
) -> Launch {
    let [out, input, offsets, schedule] = buffers;
    let cfg = LaunchConfig {
        grid_dim: (blocks(batch), 1, 1),
        block_dim: (NS_THREADS as u32, 1, 1),
        shared_mem_bytes: one_launch_shared_bytes(rows.min(cols), rows.max(cols)) as u32,
    };
    let args = vec![
        Arg::Ptr(out),
        Arg::Ptr(input),
        Arg::Ptr(offsets),
        Arg::Index(rows),
        Arg::Index(cols),
        Arg::Index(steps),
        Arg::Ptr(schedule),
        coeffs.norm_factor().into(),
        linalg::NS_NORM_EPS.into(),
    ];
    Launch::new(ONE_LAUNCH_KERNEL, cfg, args)
}

/// The kernels of the cuBLAS path, around its GEMMs: X is `batch` matrices of
/// `len` f32 values with a bf16 copy, P and P − βI are short×short.
pub(super) mod cublas_path {
    use super::*;

    type Ptr = sys::CUdeviceptr;

    /// Blocks per matrix of the partial sums of squares of `len` values.
    pub(in super::super) fn norm_chunks(len: usize) -> usize {
        len.div_ceil(NORM_CHUNK).clamp(1, MAX_NORM_CHUNKS)
    }

    /// X ← X / (factor·‖X‖_F + eps) per matrix, and its bf16 copy: buffers [x,
    /// x_bf16, partial (f64, `norm_chunks(len)` per matrix), scale (one per matrix)].
    pub(in super::super) fn normalize(
        [x, x_bf16, partial, scale]: [Ptr; 4],
        len: usize,
        batch: usize,
        coeffs: NsCoefficients,
    ) -> [Launch; 3] {
        let chunks = norm_chunks(len);
        let partials = LaunchConfig { grid_dim: (blocks(chunks), blocks(batch), 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let scale_args = vec![
            Arg::Ptr(scale),
            Arg::Ptr(partial),
            Arg::Index(chunks),
            coeffs.norm_factor().into(),
            linalg::NS_NORM_EPS.into(),
            Arg::Index(batch),
        ];
        [
            Launch::new("square_sum_partials", partials, vec![Arg::Ptr(partial), Arg::Ptr(x), len.into(), Arg::Index(chunks)]),
            Launch::new("frobenius_scales", elementwise(batch), scale_args),
            Launch::new(
                "scale_to_bf16",
                elementwise(batch * len),
                vec![Arg::Ptr(x), Arg::Ptr(x_bf16), Arg::Ptr(scale), len.into(), (batch * len).into()],
            ),
        ]
    }

    /// β = tr(P)/s per matrix (a warp each) and bf16(P − βI): buffers [poly_bf16, shift (β), poly].
    pub(in super::super) fn shifted_polynomial([poly_bf16, shift, poly]: [Ptr; 3], short: usize, batch: usize) -> [Launch; 2] {
        let warps = LaunchConfig { grid_dim: (blocks(batch.div_ceil(8)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let n = batch * short * short;
        [
            Launch::new("polynomial_shifts", warps, vec![Arg::Ptr(shift), Arg::Ptr(poly), Arg::Index(short), Arg::Index(batch)]),
            Launch::new(
                "shifted_to_bf16",
                elementwise(n),
                vec![Arg::Ptr(poly_bf16), Arg::Ptr(poly), Arg::Ptr(shift), Arg::Index(short), n.into()],
            ),
        ]
    }

    /// X ← (a + β)·X + (P − βI)·X (the product given) and X's bf16 copy:
    /// buffers [x, x_bf16, product, shift].
    pub(in super::super) fn update([x, x_bf16, product, shift]: [Ptr; 4], a: f32, len: usize, batch: usize) -> Launch {
        let args = vec![Arg::Ptr(x), Arg::Ptr(x_bf16), Arg::Ptr(product), Arg::Ptr(shift), a.into(), len.into(), (batch * len).into()];
        Launch::new("newton_schulz_update", elementwise(batch * len), args)
    }
}

impl Cuda {
    /// Whether [`Backend::newton_schulz_batched`](crate::backend::Backend::newton_schulz_batched)
    /// runs rows×cols matrices in one launch, one block per matrix with the whole
    /// iteration in shared memory on tensor cores: when the short side s is at most
    /// 128 and X (bf16) with its s×s Gram matrix (f32) and polynomial (bf16) fit in
    /// the device's opt-in shared memory per block (227 KiB on H100 and H200: up to
    /// 64×1600 or 128×496).
    /// Otherwise every step is three cuBLAS GEMMs and three grid-wide kernels.
    pub fn newton_schulz_in_one_launch(&self, rows: usize, cols: usize) -> bool {
        let (short, long) = (rows.min(cols), rows.max(cols));
        short <= NS_ONE_LAUNCH_MAX_SHORT && one_launch_shared_bytes(short, long) <= self.dynamic_shared_limit(ONE_LAUNCH_KERNEL)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn newton_schulz_batched_impl(
        &self,
        out: &mut DeviceBuf,
        input: &DeviceBuf,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: NsCoefficients,
    ) {
        let len = rows * cols;
        assert!(ranges.iter().all(|r| r.len() == len), "every matrix of a batch must be {rows}×{cols}");
        assert!(ranges.iter().all(|r| r.end <= input.len && r.end <= out.len), "newton_schulz ranges past the end of a buffer");
        if ranges.is_empty() || len == 0 || self.pending.is_set() {
            return;
        }
        if self.newton_schulz_in_one_launch(rows, cols) {
            self.newton_schulz_one_launch(out, input, ranges, rows, cols, steps, coeffs);
        } else {
            self.newton_schulz_cublas(out, input, ranges, rows, cols, steps, coeffs);
        }
    }

    /// One block per matrix, reading `input` at the ranges and keeping the f32
    /// master X in `out` at the same ranges.
    #[allow(clippy::too_many_arguments)]
    fn newton_schulz_one_launch(
        &self,
        out: &mut DeviceBuf,
        input: &DeviceBuf,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: NsCoefficients,
    ) {
        let offsets = ranges.iter().map(|r| r.start as i64).collect();
        let Some(offsets) = self.pending.keep(self.index_table(offsets)) else { return };
        let uploaded = self
            .stream
            .clone_htod(&one_launch_schedule(steps, coeffs))
            .map_err(|e| anyhow!("CUDA upload of the Newton-Schulz schedule failed: {e:?}"));
        let Some(schedule) = self.pending.keep(uploaded) else { return };
        let buffers = [out.ptr(), input.ptr(), base_ptr(&offsets), base_ptr(&schedule)];
        self.launch(&one_launch([rows, cols], ranges.len(), steps, coeffs, buffers));
    }

    /// The batch gathered into scratch, then per step: A = X·Xᵀ (bf16 operands);
    /// P = b·A + c·A² (TF32: the s×s product needs no more, and in f32 it would be
    /// the slowest GEMM); β = tr(P)/s and bf16(P − βI); (P − βI)·X (bf16 operands);
    /// X ← (a + β)·X + that product, with X's bf16 copy for the next step.
    #[allow(clippy::too_many_arguments)]
    fn newton_schulz_cublas(
        &self,
        out: &mut DeviceBuf,
        input: &DeviceBuf,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: NsCoefficients,
    ) {
        let (len, batch) = (rows * cols, ranges.len());
        let (tall, short, long) = (rows > cols, rows.min(cols), rows.max(cols));
        let ss = short * short;
        // Scratch, freed in stream order when dropped: X, (P − βI)·X, A, P, β and
        // the norm's scale per matrix in f32; X and P − βI in bf16; the norm's
        // partial sums in f64.
        let scratch = || -> Result<_> {
            let f32s = [batch * len, batch * len, batch * ss, batch * ss, batch, batch].map(|n| self.alloc::<f32>(n));
            let bf16s = [batch * len, batch * ss].map(|n| self.alloc::<u16>(n));
            let partial = self.alloc::<f64>(batch * cublas_path::norm_chunks(len))?;
            Ok((f32s.into_iter().collect::<Result<Vec<_>>>()?, bf16s.into_iter().collect::<Result<Vec<_>>>()?, partial))
        };
        let Some((f32_scratch, bf16_scratch, partial)) = self.pending.keep(scratch()) else { return };
        let [x, product, gram, poly, shift, scale] = [0, 1, 2, 3, 4, 5].map(|i| base_ptr(&f32_scratch[i]));
        let [x_bf16, poly_bf16] = [0, 1].map(|i| base_ptr(&bf16_scratch[i]));

        let (src, dst) = (input.ptr(), out.ptr());
        for (b, r) in ranges.iter().enumerate() {
            self.copy_raw(offset(x, b * len), offset(src, r.start), len);
        }
        cublas_path::normalize([x, x_bf16, base_ptr(&partial), scale], len, batch, coeffs).iter().for_each(|l| self.launch(l));
        let square = Gemm { m: short, k: short, n: short, trans_a: false, trans_b: false };
        // (P − βI)·X for wide matrices, X·(P − βI) for tall ones.
        let (first, second, product_shape, product_strides) = if tall {
            (x_bf16, poly_bf16, Gemm { m: long, k: short, n: short, trans_a: false, trans_b: false }, [len, len, ss])
        } else {
            (poly_bf16, x_bf16, Gemm { m: short, k: short, n: long, trans_a: false, trans_b: false }, [len, ss, len])
        };
        for step in 0..steps {
            let (a, b, c) = coeffs.at(step);
            let gram_shape = Gemm { m: short, k: long, n: short, trans_a: tall, trans_b: !tall };
            self.gemm_batched(gram, x_bf16, x_bf16, gram_shape, 1.0, 0.0, batch, [ss, len, len], Precision::Bf16);
            self.copy_raw(poly, gram, batch * ss);
            self.gemm_batched(poly, gram, gram, square, c, b, batch, [ss; 3], Precision::Tf32);
            cublas_path::shifted_polynomial([poly_bf16, shift, poly], short, batch).iter().for_each(|l| self.launch(l));
            self.gemm_batched(product, first, second, product_shape, 1.0, 0.0, batch, product_strides, Precision::Bf16);
            self.launch(&cublas_path::update([x, x_bf16, product, shift], a, len, batch));
        }
        for (b, r) in ranges.iter().enumerate() {
            self.copy_raw(offset(dst, r.start), offset(x, b * len), len);
        }
    }
}
