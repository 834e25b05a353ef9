//! `Backend` for [`Cuda`]: each op is one kernel launch (or cuBLAS call) on the
//! backend's stream; the CPU backend's op of the same name is its reference.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg, result as driver, sys};

use super::launch::{self, Arg, Launch};
use super::{Cuda, DView, DViewMut, DeviceBuf, base_ptr, constants, elementwise, offset};
use crate::backend::{Activation, AdamParams, Attention, Backend, DiagonalRule, Gemm, LossOut, Precision};
use crate::linalg::{self, Epsilon, NsCoefficients};

/// cuBLAS's operand type and compute type of a precision.
fn gemm_types(precision: Precision) -> (cudaDataType, cublasComputeType_t) {
    match precision {
        Precision::F32 => (cudaDataType::CUDA_R_32F, cublasComputeType_t::CUBLAS_COMPUTE_32F),
        Precision::Tf32 => (cudaDataType::CUDA_R_32F, cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32),
        Precision::Bf16 => (cudaDataType::CUDA_R_16BF, cublasComputeType_t::CUBLAS_COMPUTE_32F),
    }
}

/// Elements per chunk of a multi-tensor step, a multiple of 4: one block's work
/// between two reads of the chunk table (16 KiB of each buffer).
const MULTI_TENSOR_CHUNK: usize = 4096;

/// A range list as the multi-tensor kernels read it: (start, length) pairs of
/// chunks of at most [`MULTI_TENSOR_CHUNK`] elements, cut at multiples of it, so
/// that every chunk but a range's first starts 4-aligned. Empty ranges give none.
pub(super) fn chunk_list(ranges: &[Range<usize>]) -> Vec<i64> {
    let mut chunks = Vec::new();
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let end = ((start / MULTI_TENSOR_CHUNK + 1) * MULTI_TENSOR_CHUNK).min(r.end);
            chunks.extend([start as i64, (end - start) as i64]);
            start = end;
        }
    }
    chunks
}

/// A multi-tensor kernel over `count` chunks of the table at `chunks`
/// ([`chunk_list`]): its state pointers, the table, then its scalars. A block
/// per chunk, up to 4096 blocks striding over the rest.
pub(super) fn multi_tensor_launch(kernel: &str, state: Vec<Arg>, chunks: sys::CUdeviceptr, count: usize, scalars: Vec<Arg>) -> Launch {
    let mut args = state;
    args.extend([Arg::Ptr(chunks), Arg::Index(count)]);
    args.extend(scalars);
    let cfg = LaunchConfig { grid_dim: (launch::blocks(count.min(4096)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    Launch::new(kernel, cfg, args)
}

/// AdamW's scalars after the chunk table, bias corrections of `hp.step` included.
pub(super) fn adamw_scalars(hp: AdamParams) -> Vec<Arg> {
    let bias1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bias2 = 1.0 - hp.beta2.powi(hp.step as i32);
    vec![hp.lr.into(), hp.beta1.into(), hp.beta2.into(), hp.eps.into(), hp.weight_decay.into(), bias1.into(), bias2.into()]
}

/// Softmax cross-entropy over `rows` rows of `classes` logits: one warp per row, 8 rows per block.
pub(super) fn softmax_cross_entropy_launch(
    [dlogits, loss, correct, logits, labels]: [sys::CUdeviceptr; 5],
    rows: usize,
    classes: usize,
) -> Launch {
    let cfg = LaunchConfig { grid_dim: (launch::blocks(rows.div_ceil(8)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let args = [dlogits, loss, correct, logits, labels].map(Arg::Ptr).into_iter().chain([Arg::Index(rows), Arg::Index(classes)]).collect();
    Launch::new("softmax_cross_entropy", cfg, args)
}

/// Launches of the elementwise and reduction kernels of `kernels/nn.cu` and
/// `kernels/shampoo.cu`, one per op, over buffers given as device pointers.
pub(super) mod nn {
    use super::*;

    type Ptr = sys::CUdeviceptr;

    pub(in super::super) fn fill(x: Ptr, value: f32, n: usize) -> Launch {
        Launch::new("fill", elementwise(n), vec![Arg::Ptr(x), value.into(), n.into()])
    }
    /// `out = bf16(x)` (u16 bits, rounded to nearest even).
    pub(in super::super) fn to_bf16(out: Ptr, x: Ptr, n: usize) -> Launch {
        Launch::new("to_bf16", elementwise(n), vec![Arg::Ptr(out), Arg::Ptr(x), n.into()])
    }
    pub(in super::super) fn axpby(y: Ptr, alpha: f32, x: Ptr, beta: f32, n: usize) -> Launch {
        Launch::new("axpby", elementwise(n), vec![Arg::Ptr(y), alpha.into(), Arg::Ptr(x), beta.into(), n.into()])
    }
    pub(in super::super) fn scale(x: Ptr, alpha: f32, n: usize) -> Launch {
        Launch::new("scale", elementwise(n), vec![Arg::Ptr(x), alpha.into(), n.into()])
    }
    /// `y[r, :] += bias` over the `n` values of y.
    pub(in super::super) fn add_bias_rows(y: Ptr, bias: Ptr, cols: usize, n: usize) -> Launch {
        Launch::new("add_bias_rows", elementwise(n), vec![Arg::Ptr(y), Arg::Ptr(bias), Arg::Index(cols), n.into()])
    }
    /// `out[c] += Σ_r x[r, c]`: a block of 8 warps per 32 columns (up to 4096 blocks, striding beyond).
    pub(in super::super) fn accumulate_column_sums(out: Ptr, x: Ptr, rows: usize, cols: usize) -> Launch {
        let cfg =
            LaunchConfig { grid_dim: (launch::blocks(cols.div_ceil(32).min(4096)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        Launch::new("accumulate_column_sums", cfg, vec![Arg::Ptr(out), Arg::Ptr(x), Arg::Index(rows), Arg::Index(cols)])
    }
    pub(in super::super) fn activation_forward(kind: Activation, y: Ptr, x: Ptr, n: usize) -> Launch {
        Launch::new("activation_forward", elementwise(n), vec![activation_code(kind).into(), Arg::Ptr(y), Arg::Ptr(x), n.into()])
    }
    pub(in super::super) fn activation_backward(kind: Activation, dx: Ptr, dy: Ptr, x: Ptr, n: usize) -> Launch {
        let args = vec![activation_code(kind).into(), Arg::Ptr(dx), Arg::Ptr(dy), Arg::Ptr(x), n.into()];
        Launch::new("activation_backward", elementwise(n), args)
    }
    pub(in super::super) fn glu_forward(kind: Activation, out: Ptr, gate: Ptr, up: Ptr, n: usize) -> Launch {
        let args = vec![activation_code(kind).into(), Arg::Ptr(out), Arg::Ptr(gate), Arg::Ptr(up), n.into()];
        Launch::new("glu_forward", elementwise(n), args)
    }
    pub(in super::super) fn glu_backward(kind: Activation, [dgate, dup, dout, gate, up]: [Ptr; 5], n: usize) -> Launch {
        let args = std::iter::once(activation_code(kind).into()).chain([dgate, dup, dout, gate, up].map(Arg::Ptr)).chain([n.into()]);
        Launch::new("glu_backward", elementwise(n), args.collect())
    }
    /// Blocks of the f64 reductions over `n` values: as many partial sums.
    pub(in super::super) fn reduce_f64_blocks(n: usize) -> usize {
        n.div_ceil(256).clamp(1, 1024)
    }
    /// `kernel` (sum_squares, sum_squared_difference, dot) of the `n` values of
    /// `inputs`, one f64 partial sum per block into `partial`
    /// ([`reduce_f64_blocks`] of them), which the host adds in order.
    pub(in super::super) fn reduce_f64(kernel: &str, partial: Ptr, inputs: &[Ptr], n: usize) -> Launch {
        let args = std::iter::once(partial).chain(inputs.iter().copied()).map(Arg::Ptr).chain([n.into()]).collect();
        let cfg = LaunchConfig { grid_dim: (launch::blocks(reduce_f64_blocks(n)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        Launch::new(kernel, cfg, args)
    }
    /// Non-finite values of x counted into the u32 at `count`, which must start at 0.
    pub(in super::super) fn count_non_finite(count: Ptr, x: Ptr, n: usize) -> Launch {
        Launch::new("count_non_finite", elementwise(n), vec![Arg::Ptr(count), Arg::Ptr(x), n.into()])
    }
    pub(in super::super) fn ema_square(v: Ptr, g: Ptr, beta: f32, n: usize) -> Launch {
        Launch::new("ema_square", elementwise(n), vec![Arg::Ptr(v), Arg::Ptr(g), beta.into(), n.into()])
    }
    pub(in super::super) fn adam_direction(out: Ptr, m: Ptr, v: Ptr, [bias1, bias2, eps]: [f32; 3], n: usize) -> Launch {
        let args = vec![Arg::Ptr(out), Arg::Ptr(m), Arg::Ptr(v), bias1.into(), bias2.into(), eps.into(), n.into()];
        Launch::new("adam_direction", elementwise(n), args)
    }
    /// Shampoo's diagonal preconditioner of a rows×cols matrix, `d` per row or per column.
    pub(in super::super) fn scale_by_diagonal_root(x: Ptr, d: Ptr, [rows, cols]: [usize; 2], over_rows: bool, p: u32, eps: f32) -> Launch {
        let args =
            vec![Arg::Ptr(x), Arg::Ptr(d), Arg::Index(rows), Arg::Index(cols), i32::from(over_rows).into(), (p as i32).into(), eps.into()];
        Launch::new("scale_by_diagonal_root", elementwise(rows * cols), args)
    }
    pub(in super::super) fn ema_square_sums(out: Ptr, g: Ptr, [rows, cols]: [usize; 2], over_rows: bool, beta: f32, weight: f32) -> Launch {
        let args =
            vec![Arg::Ptr(out), Arg::Ptr(g), Arg::Index(rows), Arg::Index(cols), i32::from(over_rows).into(), beta.into(), weight.into()];
        Launch::new("ema_square_sums", elementwise(if over_rows { rows } else { cols }), args)
    }
    pub(in super::super) fn sgd_scalars(lr: f32, momentum: f32, nesterov: bool, weight_decay: f32) -> Vec<Arg> {
        vec![lr.into(), momentum.into(), i32::from(nesterov).into(), weight_decay.into()]
    }
    pub(in super::super) fn lion_scalars(lr: f32, beta1: f32, beta2: f32, weight_decay: f32) -> Vec<Arg> {
        vec![lr.into(), beta1.into(), beta2.into(), weight_decay.into()]
    }
    /// The kernel of a per-coordinate `torch.optim` rule and its scalars.
    pub(in super::super) fn diagonal_rule(rule: DiagonalRule) -> (&'static str, Vec<Arg>) {
        match rule {
            DiagonalRule::Adagrad { lr, eps, weight_decay } => ("adagrad_step", vec![lr.into(), eps.into(), weight_decay.into()]),
            DiagonalRule::RmsProp { lr, alpha, eps, weight_decay, momentum, centered } => (
                "rmsprop_step",
                vec![lr.into(), alpha.into(), eps.into(), weight_decay.into(), momentum.into(), i32::from(centered).into()],
            ),
            DiagonalRule::Adadelta { lr, rho, eps, weight_decay } => {
                ("adadelta_step", vec![lr.into(), rho.into(), eps.into(), weight_decay.into()])
            }
            DiagonalRule::Adam { lr, beta1, beta2, eps, weight_decay, amsgrad, bias1, bias2 } => (
                "adam_l2_step",
                vec![
                    lr.into(),
                    beta1.into(),
                    beta2.into(),
                    eps.into(),
                    weight_decay.into(),
                    i32::from(amsgrad).into(),
                    bias1.into(),
                    bias2.into(),
                ],
            ),
        }
    }
}

/// The kernels' code for `kind` (`ACT_*` of kernels/constants.cuh).
fn activation_code(kind: Activation) -> i32 {
    let code = match kind {
        Activation::Relu => constants::ACT_RELU,
        Activation::Tanh => constants::ACT_TANH,
        Activation::Gelu => constants::ACT_GELU,
        Activation::Silu => constants::ACT_SILU,
    };
    code as i32
}

impl Cuda {
    /// Queues `launch`, unless a failure is pending or its grid is empty; a
    /// failure to launch becomes the pending error.
    pub(super) fn launch(&self, launch: &Launch) {
        if !self.pending.is_set() {
            let launched = self.try_launch(launch);
            self.pending.keep(launched);
        }
    }

    fn try_launch(&self, Launch { kernel, cfg, args }: &Launch) -> Result<()> {
        let cfg = *cfg;
        if !launch::check(kernel, &cfg, args)? {
            return Ok(());
        }
        let (name, function) = self.function(kernel)?;
        // Sizes were checked to fit: they travel as the kernels' 32-bit ints.
        let args: Vec<Arg> = args.iter().map(|&a| if let Arg::Index(n) = a { Arg::I32(n as i32) } else { a }).collect();
        let mut builder = self.stream.launch_builder(function);
        for a in &args {
            match a {
                Arg::Ptr(p) => builder.arg(p),
                Arg::F32(x) => builder.arg(x),
                Arg::I32(x) => builder.arg(x),
                Arg::I64(x) => builder.arg(x),
                Arg::Index(_) => unreachable!("converted above"),
            };
        }
        *self.last_launch.lock().unwrap_or_else(|p| p.into_inner()) = Some((name, cfg));
        // SAFETY: every launch function passes the argument list of the kernel's
        // signature in kernels/*.cu (the emulator checks the types), with views of the lengths the kernel reads
        // (checked by the asserts of each op and the CPU-comparison tests).
        unsafe { builder.launch(cfg) }.map(drop).map_err(|e| anyhow!("{} failed to launch: {e:?}", launch::describe(name, &cfg, &args)))
    }

    /// Row-major `C = alpha·op(A)·op(B) + beta·C` for `batch` matrices at the given
    /// element strides, as the column-major product `Cᵀ = op(B)ᵀ·op(A)ᵀ`; A and B
    /// are of `precision`'s type, C is f32.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_batched(
        &self,
        c: sys::CUdeviceptr,
        a: sys::CUdeviceptr,
        b: sys::CUdeviceptr,
        s: Gemm,
        alpha: f32,
        beta: f32,
        batch: usize,
        strides: [usize; 3],
        precision: Precision,
    ) {
        if self.pending.is_set() {
            return;
        }
        let fits = [s.m, s.n, s.k, batch].iter().all(|&x| i32::try_from(x).is_ok());
        if !fits {
            return self.pending.record(anyhow!("cuBLAS GEMM {s:?} × {batch}: a size exceeds cuBLAS's 32-bit int"));
        }
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let (m, n, k) = (s.m as i32, s.n as i32, s.k as i32);
        let lda = if s.trans_b { k } else { n };
        let ldb = if s.trans_a { m } else { k };
        let (operands, compute) = gemm_types(precision);
        // SAFETY: the pointers come from live views whose lengths the callers
        // checked against the shape; cuBLAS runs on the backend's stream.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(s.trans_b),
                op(s.trans_a),
                n,
                m,
                k,
                (&alpha as *const f32).cast(),
                b as *const c_void,
                operands,
                lda,
                strides[2] as i64,
                a as *const c_void,
                operands,
                ldb,
                strides[1] as i64,
                (&beta as *const f32).cast(),
                c as *mut c_void,
                cudaDataType::CUDA_R_32F,
                n,
                strides[0] as i64,
                batch as i32,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .unwrap_or_else(|e| self.pending.record(anyhow!("cuBLAS {precision:?} GEMM {s:?} × {batch} failed: {e:?}")));
    }

    /// `table` on the device, uploaded once per content.
    pub(super) fn index_table(&self, table: Vec<i64>) -> Result<Arc<CudaSlice<i64>>> {
        let mut tables = self.index_tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(uploaded) = tables.get(&table) {
            return Ok(uploaded.clone());
        }
        let uploaded = Arc::new(
            self.stream.clone_htod(&table).map_err(|e| anyhow!("CUDA upload of a {}-entry index table failed: {e:?}", table.len()))?,
        );
        tables.insert(table, uploaded.clone());
        Ok(uploaded)
    }

    /// A buffer of `len` floats from `make`, unless a failure is pending; a failed
    /// `make` leaves it without memory and its failure pending.
    fn device_buf(&self, len: usize, make: impl FnOnce() -> Result<CudaSlice<f32>>) -> DeviceBuf {
        let memory = if self.pending.is_set() { None } else { self.pending.keep(make()) };
        DeviceBuf { memory, len }
    }

    pub(super) fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| anyhow!("CUDA allocation of {len} × {} B failed: {e:?}", std::mem::size_of::<T>()))
    }

    /// A buffer's contents on the host, after all queued work (the pending failure, if any, is the error).
    pub(super) fn host<T: cudarc::driver::DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.pending.take()?;
        self.stream.clone_dtoh(buf).map_err(|e| anyhow!("CUDA download of {} elements failed: {e:?}", buf.len()))
    }

    pub(super) fn copy_raw(&self, dst: sys::CUdeviceptr, src: sys::CUdeviceptr, elements: usize) {
        if self.pending.is_set() || elements == 0 {
            return;
        }
        // SAFETY: both ranges lie inside live buffers (callers check lengths).
        unsafe { driver::memcpy_dtod_async(dst, src, elements * std::mem::size_of::<f32>(), self.stream.cu_stream()) }
            .unwrap_or_else(|e| self.pending.record(anyhow!("CUDA copy of {elements} floats failed: {e:?}")));
    }

    /// Copies `host` into the device view `out`, waiting so `host` may be dropped.
    pub(super) fn write_from_host(&self, out: DViewMut<'_>, host: &[f32]) -> Result<()> {
        assert_eq!(out.len, host.len(), "write_from_host: lengths differ");
        self.pending.take()?;
        // SAFETY: `out` is a live view of `host.len()` floats; synchronize before `host` can be dropped.
        unsafe { driver::memcpy_htod_async(out.ptr, host, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("CUDA upload of {} floats failed: {e:?}", host.len()))?;
        self.synchronize()
    }

    /// A reduction's per-block partial sums, added here in block order: the same
    /// result on every run, where atomics would add them in any order.
    fn reduce_f64(&self, kernel: &str, inputs: &[sys::CUdeviceptr], n: usize) -> Result<f64> {
        let partial = self.alloc::<f64>(nn::reduce_f64_blocks(n))?;
        self.launch(&nn::reduce_f64(kernel, base_ptr(&partial), inputs, n));
        Ok(self.host(&partial)?.iter().sum())
    }

    fn multi_tensor(&self, kernel: &str, state: Vec<Arg>, ranges: &[Range<usize>], scalars: Vec<Arg>) {
        let chunks = chunk_list(ranges);
        let count = chunks.len() / 2;
        let Some(table) = self.pending.keep(self.index_table(chunks)) else { return };
        self.launch(&multi_tensor_launch(kernel, state, base_ptr(&table), count, scalars));
    }
}

impl Backend for Cuda {
    type Buf = DeviceBuf;
    type View<'a> = DView<'a>;
    type ViewMut<'a> = DViewMut<'a>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!("cuda: {}, driver CUDA {}", Cuda::describe(self), Cuda::driver_version().unwrap_or_else(|| "unknown".into()))
    }

    fn counters(&self) -> Vec<(&'static str, f64)> {
        vec![("cuda_inverse_root_cpu_fallbacks", self.root_fallbacks() as f64)]
    }

    fn zeros(&self, len: usize) -> DeviceBuf {
        self.device_buf(len, || {
            self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| anyhow!("CUDA allocation of {len} floats failed: {e:?}"))
        })
    }
    fn upload(&self, host: &[f32]) -> DeviceBuf {
        if host.is_empty() {
            return DeviceBuf { memory: None, len: 0 };
        }
        self.device_buf(host.len(), || {
            self.stream.clone_htod(host).map_err(|e| anyhow!("CUDA upload of {} floats failed: {e:?}", host.len()))
        })
    }
    fn download(&self, view: DView<'_>) -> Result<Vec<f32>> {
        self.pending.take()?;
        let mut out = vec![0.0f32; view.len];
        if view.len > 0 {
            // SAFETY: the view lies inside a live buffer; synchronize before reading.
            unsafe { driver::memcpy_dtoh_async(&mut out, view.ptr, self.stream.cu_stream()) }
                .map_err(|e| anyhow!("CUDA download of {} floats failed: {e:?}", view.len))?;
        }
        self.synchronize()?;
        Ok(out)
    }
    fn len(buf: &DeviceBuf) -> usize {
        buf.len
    }
    fn view(buf: &DeviceBuf, range: Range<usize>) -> DView<'_> {
        assert!(range.start <= range.end && range.end <= buf.len, "view {range:?} out of a buffer of {}", buf.len);
        DView { ptr: offset(buf.ptr(), range.start), len: range.len(), _borrow: std::marker::PhantomData }
    }
    fn view_mut(buf: &mut DeviceBuf, range: Range<usize>) -> DViewMut<'_> {
        assert!(range.start <= range.end && range.end <= buf.len, "view {range:?} out of a buffer of {}", buf.len);
        DViewMut { ptr: offset(buf.ptr(), range.start), len: range.len(), _borrow: std::marker::PhantomData }
    }
    fn view_mut_pair(buf: &mut DeviceBuf, a: Range<usize>, b: Range<usize>) -> (DViewMut<'_>, DViewMut<'_>) {
        assert!(a.end <= b.start || b.end <= a.start, "view_mut_pair: ranges {a:?} and {b:?} overlap");
        assert!(a.end.max(b.end) <= buf.len, "view_mut_pair: ranges out of a buffer of {}", buf.len);
        let base = buf.ptr();
        let view = |r: Range<usize>| DViewMut { ptr: offset(base, r.start), len: r.len(), _borrow: std::marker::PhantomData };
        (view(a), view(b))
    }
    fn copy(&self, dst: DViewMut<'_>, src: DView<'_>) {
        assert_eq!(dst.len, src.len, "copy between views of different lengths");
        self.copy_raw(dst.ptr, src.ptr, src.len);
    }
    fn fill(&self, dst: DViewMut<'_>, value: f32) {
        self.launch(&nn::fill(dst.ptr, value, dst.len));
    }

    fn matmul(&self, c: DViewMut<'_>, a: DView<'_>, b: DView<'_>, s: Gemm, alpha: f32, beta: f32) {
        assert!(a.len == s.m * s.k && b.len == s.k * s.n && c.len == s.m * s.n, "matmul operands do not match {s:?}");
        if self.precision != Precision::Bf16 {
            return self.gemm_batched(c.ptr, a.ptr, b.ptr, s, alpha, beta, 1, [0; 3], self.precision);
        }
        // bf16 copies of both operands (freed in stream order), the f32 originals kept.
        let Some((a16, b16)) = self.pending.keep(self.alloc::<u16>(a.len).and_then(|a16| Ok((a16, self.alloc::<u16>(b.len)?)))) else {
            return;
        };
        self.launch(&nn::to_bf16(base_ptr(&a16), a.ptr, a.len));
        self.launch(&nn::to_bf16(base_ptr(&b16), b.ptr, b.len));
        self.gemm_batched(c.ptr, base_ptr(&a16), base_ptr(&b16), s, alpha, beta, 1, [0; 3], Precision::Bf16);
    }
    fn add_bias_rows(&self, y: DViewMut<'_>, bias: DView<'_>) {
        assert_eq!(y.len % bias.len, 0, "bias length must divide the matrix");
        self.launch(&nn::add_bias_rows(y.ptr, bias.ptr, bias.len, y.len));
    }
    fn accumulate_column_sums(&self, out: DViewMut<'_>, x: DView<'_>) {
        assert_eq!(x.len % out.len, 0, "column count must divide the matrix");
        let rows = x.len / out.len;
        self.launch(&nn::accumulate_column_sums(out.ptr, x.ptr, rows, out.len));
    }
    fn activation_forward(&self, kind: Activation, y: DViewMut<'_>, x: DView<'_>) {
        assert_eq!(y.len, x.len);
        self.launch(&nn::activation_forward(kind, y.ptr, x.ptr, x.len));
    }
    fn activation_backward(&self, kind: Activation, dx: DViewMut<'_>, dy: DView<'_>, x: DView<'_>) {
        assert!(dx.len == dy.len && dy.len == x.len);
        self.launch(&nn::activation_backward(kind, dx.ptr, dy.ptr, x.ptr, x.len));
    }
    fn glu_forward(&self, kind: Activation, out: DViewMut<'_>, gate: DView<'_>, up: DView<'_>) {
        assert!(out.len == gate.len && gate.len == up.len);
        self.launch(&nn::glu_forward(kind, out.ptr, gate.ptr, up.ptr, out.len));
    }
    fn glu_backward(&self, kind: Activation, dgate: DViewMut<'_>, dup: DViewMut<'_>, dout: DView<'_>, gate: DView<'_>, up: DView<'_>) {
        assert!(dgate.len == dup.len && dup.len == dout.len && dout.len == gate.len && gate.len == up.len);
        self.launch(&nn::glu_backward(kind, [dgate.ptr, dup.ptr, dout.ptr, gate.ptr, up.ptr], dout.len));
    }
    fn softmax_cross_entropy(
        &self,
        dlogits: DViewMut<'_>,
        logits: DView<'_>,
        labels: &[impl Into<u32> + Copy + Sync],
        classes: usize,
    ) -> Result<LossOut> {
        let rows = labels.len();
        assert_eq!(logits.len, rows * classes, "logits must be batch×classes");
        assert_eq!(dlogits.len, logits.len);
        assert!(classes <= i32::MAX as usize, "{classes} classes do not fit the kernel's int labels");
        let labels: Vec<i32> = labels.iter().map(|&l| l.into() as i32).collect();
        assert!(labels.iter().all(|&l| (l as usize) < classes), "label out of range for {classes} classes");
        self.pending.take()?;
        let labels = self.stream.clone_htod(&labels).map_err(|e| anyhow!("CUDA upload of {rows} labels failed: {e:?}"))?;
        let (loss, correct) = (self.alloc::<f32>(rows)?, self.alloc::<i32>(rows)?);
        let buffers = [dlogits.ptr, base_ptr(&loss), base_ptr(&correct), logits.ptr, base_ptr(&labels)];
        self.launch(&softmax_cross_entropy_launch(buffers, rows, classes));
        let loss: f64 = self.host(&loss)?.iter().map(|&l| f64::from(l)).sum();
        let correct = self.host(&correct)?.iter().filter(|&&c| c != 0).count();
        Ok(LossOut { loss: (loss / rows as f64) as f32, correct })
    }

    fn layernorm_forward(
        &self,
        y: DViewMut<'_>,
        mean: DViewMut<'_>,
        rstd: DViewMut<'_>,
        x: DView<'_>,
        gamma: DView<'_>,
        beta: DView<'_>,
        eps: f32,
    ) {
        self.layernorm_forward_impl(y, mean, rstd, x, gamma, beta, eps);
    }
    fn layernorm_backward(
        &self,
        dx: DViewMut<'_>,
        dgamma: DViewMut<'_>,
        dbeta: DViewMut<'_>,
        dy: DView<'_>,
        x: DView<'_>,
        mean: DView<'_>,
        rstd: DView<'_>,
        gamma: DView<'_>,
    ) {
        self.layernorm_backward_impl(dx, dgamma, dbeta, dy, x, mean, rstd, gamma);
    }
    fn attention_forward(&self, out: DViewMut<'_>, lse: DViewMut<'_>, qkv: DView<'_>, shape: Attention) {
        self.attention_forward_impl(out, lse, qkv, shape);
    }
    fn attention_backward(&self, dqkv: DViewMut<'_>, dout: DView<'_>, qkv: DView<'_>, out: DView<'_>, lse: DView<'_>, shape: Attention) {
        self.attention_backward_impl(dqkv, dout, qkv, out, lse, shape);
    }
    fn embedding_forward(&self, out: DViewMut<'_>, table: DView<'_>, ids: &[u32], dim: usize) {
        self.embedding_forward_impl(out, table, ids, dim);
    }
    fn embedding_backward(&self, dtable: DViewMut<'_>, dout: DView<'_>, ids: &[u32], dim: usize) {
        self.embedding_backward_impl(dtable, dout, ids, dim);
    }

    fn sum_squares(&self, x: DView<'_>) -> Result<f64> {
        self.reduce_f64("sum_squares", &[x.ptr], x.len)
    }
    fn sum_squared_difference(&self, a: DView<'_>, b: DView<'_>) -> Result<f64> {
        assert_eq!(a.len, b.len);
        self.reduce_f64("sum_squared_difference", &[a.ptr, b.ptr], a.len)
    }
    fn dot(&self, a: DView<'_>, b: DView<'_>) -> Result<f64> {
        assert_eq!(a.len, b.len);
        self.reduce_f64("dot", &[a.ptr, b.ptr], a.len)
    }
    fn all_finite(&self, x: DView<'_>) -> Result<bool> {
        let count = self.alloc::<u32>(1)?;
        self.launch(&nn::count_non_finite(base_ptr(&count), x.ptr, x.len));
        Ok(self.host(&count)?[0] == 0)
    }

    fn axpby(&self, y: DViewMut<'_>, alpha: f32, x: DView<'_>, beta: f32) {
        assert_eq!(y.len, x.len);
        self.launch(&nn::axpby(y.ptr, alpha, x.ptr, beta, x.len));
    }
    fn scale(&self, x: DViewMut<'_>, alpha: f32) {
        self.launch(&nn::scale(x.ptr, alpha, x.len));
    }
    fn adamw_step(&self, p: &mut DeviceBuf, g: &DeviceBuf, m: &mut DeviceBuf, v: &mut DeviceBuf, ranges: &[Range<usize>], hp: AdamParams) {
        let state = vec![Arg::Ptr(p.ptr()), Arg::Ptr(g.ptr()), Arg::Ptr(m.ptr()), Arg::Ptr(v.ptr())];
        self.multi_tensor("adamw_step", state, ranges, adamw_scalars(hp));
    }
    fn sgd_step(
        &self,
        p: &mut DeviceBuf,
        g: &DeviceBuf,
        buf: &mut DeviceBuf,
        ranges: &[Range<usize>],
        lr: f32,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    ) {
        let scalars = nn::sgd_scalars(lr, momentum, nesterov, weight_decay);
        self.multi_tensor("sgd_step", vec![Arg::Ptr(p.ptr()), Arg::Ptr(g.ptr()), Arg::Ptr(buf.ptr())], ranges, scalars);
    }
    fn lion_step(
        &self,
        p: &mut DeviceBuf,
        g: &DeviceBuf,
        m: &mut DeviceBuf,
        ranges: &[Range<usize>],
        lr: f32,
        beta1: f32,
        beta2: f32,
        weight_decay: f32,
    ) {
        let scalars = nn::lion_scalars(lr, beta1, beta2, weight_decay);
        self.multi_tensor("lion_step", vec![Arg::Ptr(p.ptr()), Arg::Ptr(g.ptr()), Arg::Ptr(m.ptr())], ranges, scalars);
    }
    fn diagonal_step(
        &self,
        p: &mut DeviceBuf,
        g: &DeviceBuf,
        [s0, s1, s2]: [&mut DeviceBuf; 3],
        ranges: &[Range<usize>],
        rule: DiagonalRule,
    ) {
        let (kernel, scalars) = nn::diagonal_rule(rule);
        self.multi_tensor(
            kernel,
            vec![Arg::Ptr(p.ptr()), Arg::Ptr(g.ptr()), Arg::Ptr(s0.ptr()), Arg::Ptr(s1.ptr()), Arg::Ptr(s2.ptr())],
            ranges,
            scalars,
        );
    }
    fn adam_direction(&self, out: DViewMut<'_>, m: DView<'_>, v: DView<'_>, bias1: f32, bias2: f32, eps: f32) {
        assert!(out.len == m.len && m.len == v.len);
        self.launch(&nn::adam_direction(out.ptr, m.ptr, v.ptr, [bias1, bias2, eps], m.len));
    }
    fn ema_square(&self, v: DViewMut<'_>, g: DView<'_>, beta: f32) {
        assert_eq!(v.len, g.len);
        self.launch(&nn::ema_square(v.ptr, g.ptr, beta, g.len));
    }

    fn newton_schulz_batched(
        &self,
        out: &mut DeviceBuf,
        input: &DeviceBuf,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: NsCoefficients,
    ) {
        self.newton_schulz_batched_impl(out, input, ranges, rows, cols, steps, coeffs);
    }

    fn inverse_root(&self, out: DViewMut<'_>, a: DView<'_>, n: usize, p: u32, eps: Epsilon) -> Result<bool> {
        Ok(self.inverse_roots_impl(vec![out], vec![a], n, p, eps)?[0])
    }
    fn inverse_roots<'a>(&self, roots: Vec<DViewMut<'a>>, stats: Vec<DView<'a>>, n: usize, p: u32, eps: Epsilon) -> Result<Vec<bool>> {
        self.inverse_roots_impl(roots, stats, n, p, eps)
    }
    /// On the host in f64 (download, `linalg::sym_eigenvectors`, upload): SOAP calls
    /// it once per side every `precondition_frequency` steps, not every step.
    fn sym_eigenvectors(&self, out: DViewMut<'_>, a: DView<'_>, n: usize) -> Result<bool> {
        assert!(out.len == n * n && a.len == n * n, "sym_eigenvectors: matrices must be {n}×{n}");
        let Ok(basis) = linalg::sym_eigenvectors(&self.download(a)?, n) else { return Ok(false) };
        self.write_from_host(out, &basis).map(|()| true)
    }
    fn scale_by_diagonal_root(&self, x: DViewMut<'_>, d: DView<'_>, rows: usize, cols: usize, over_rows: bool, p: u32, eps: f32) {
        assert_eq!(x.len, rows * cols);
        assert_eq!(d.len, if over_rows { rows } else { cols });
        self.launch(&nn::scale_by_diagonal_root(x.ptr, d.ptr, [rows, cols], over_rows, p, eps));
    }
    fn ema_square_sums(&self, out: DViewMut<'_>, g: DView<'_>, rows: usize, cols: usize, over_rows: bool, beta: f32, weight: f32) {
        assert_eq!(g.len, rows * cols);
        assert_eq!(out.len, if over_rows { rows } else { cols });
        self.launch(&nn::ema_square_sums(out.ptr, g.ptr, [rows, cols], over_rows, beta, weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_ranges_exactly_and_start_aligned_inside_them() {
        let c = MULTI_TENSOR_CHUNK;
        let ranges = [5..5, 3..4, 7..c + 9, 2 * c..4 * c, 4 * c + 1..4 * c + 2, 10 * c - 3..10 * c + 3];
        let chunks = chunk_list(&ranges);
        let pairs: Vec<(usize, usize)> = chunks.chunks(2).map(|p| (p[0] as usize, p[1] as usize)).collect();
        let covered: Vec<usize> = pairs.iter().flat_map(|&(s, n)| s..s + n).collect();
        let wanted: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, wanted, "chunks must cover the ranges in order, each element once");
        for &(start, len) in &pairs {
            assert!(len > 0 && len <= c, "chunk ({start}, {len})");
            assert!(start % 4 == 0 || ranges.iter().any(|r| r.start == start), "chunk at {start} is neither 4-aligned nor a range's start");
        }
        assert_eq!(pairs.len(), 1 + 2 + 2 + 1 + 2, "{pairs:?}");
    }
}
