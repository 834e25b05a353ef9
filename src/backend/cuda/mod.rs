//! The CUDA backend: the kernels of `kernels/*.cu` (PTX from build.rs, or NVRTC
//! at run time) and cuBLAS, through cudarc with the driver loaded dynamically,
//! so the binary runs where no CUDA library exists at all.
//!
//! Everything runs on one stream, so stream order is the only synchronization
//! needed: views are plain (device pointer, length) pairs, as in llm.c, and
//! kernels and cuBLAS take raw pointers. Failures are values: see [`fault`].

#[cfg(test)]
mod emulator;
mod fault;
mod inverse_root;
mod launch;
mod newton_schulz;
mod ops;
mod transformer;

/// Constants shared with the kernels (launch geometry, activation codes),
/// generated from `kernels/constants.cuh`.
mod constants {
    include!(concat!(env!("OUT_DIR"), "/constants.rs"));
}

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, sys};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::Precision;
use super::kernels::{KERNELS, KernelSource};

/// Every kernel entry point, by module (a test checks this against the sources).
pub const FUNCTIONS: &[(&str, &[&str])] = &[
    ("adamw", &["adamw_step", "sgd_step", "lion_step", "adagrad_step", "rmsprop_step", "adadelta_step", "adam_l2_step"]),
    (
        "attention",
        &[
            "attention_forward_16",
            "attention_forward_32",
            "attention_forward_64",
            "attention_forward_128",
            "attention_backward_delta",
            "attention_backward_dkdv_16",
            "attention_backward_dq_16",
            "attention_backward_dkdv_32",
            "attention_backward_dq_32",
            "attention_backward_dkdv_64",
            "attention_backward_dq_64",
            "attention_backward_dkdv_128",
            "attention_backward_dq_128",
        ],
    ),
    (
        "attention_mma",
        &[
            "attention_forward_bf16_16",
            "attention_forward_bf16_32",
            "attention_forward_bf16_64",
            "attention_forward_bf16_128",
            "attention_forward_tf32_16",
            "attention_forward_tf32_32",
            "attention_forward_tf32_64",
            "attention_forward_tf32_128",
            "attention_backward_dkdv_bf16_16",
            "attention_backward_dq_bf16_16",
            "attention_backward_dkdv_bf16_32",
            "attention_backward_dq_bf16_32",
            "attention_backward_dkdv_bf16_64",
            "attention_backward_dq_bf16_64",
            "attention_backward_dkdv_bf16_128",
            "attention_backward_dq_bf16_128",
            "attention_backward_dkdv_tf32_16",
            "attention_backward_dq_tf32_16",
            "attention_backward_dkdv_tf32_32",
            "attention_backward_dq_tf32_32",
            "attention_backward_dkdv_tf32_64",
            "attention_backward_dq_tf32_64",
            "attention_backward_dkdv_tf32_128",
            "attention_backward_dq_tf32_128",
        ],
    ),
    (
        "newton_schulz",
        &[
            "newton_schulz_in_shared_memory",
            "square_sum_partials",
            "frobenius_scales",
            "scale_to_bf16",
            "polynomial_shifts",
            "shifted_to_bf16",
            "newton_schulz_update",
        ],
    ),
    (
        "nn",
        &[
            "fill",
            "to_bf16",
            "axpby",
            "scale",
            "add_bias_rows",
            "accumulate_column_sums",
            "activation_forward",
            "activation_backward",
            "glu_forward",
            "glu_backward",
            "softmax_cross_entropy",
            "sum_squares",
            "sum_squared_difference",
            "dot",
            "count_non_finite",
            "ema_square",
            "adam_direction",
            "scale_by_diagonal_root",
            "ema_square_sums",
        ],
    ),
    ("shampoo", &["power_iteration_start", "power_iteration_step", "newton_start", "newton_factor", "newton_residual", "newton_converged"]),
    (
        "transformer",
        &["layernorm_forward", "layernorm_backward_dx", "layernorm_backward_params", "embedding_forward", "embedding_backward"],
    ),
];

/// Lets every kernel use the device's opt-in shared memory per block (past the
/// default 48 KiB; 227 KiB on H100 and H200), and returns how many dynamic bytes
/// each may now ask for. The attribute only raises the cap a launch may request.
fn allow_opt_in_shared_memory(ctx: &CudaContext, functions: &HashMap<&'static str, CudaFunction>) -> Result<HashMap<&'static str, usize>> {
    let opt_in = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| anyhow!("cannot query the opt-in shared memory: {e:?}"))?;
    let mut limits = HashMap::new();
    for (name, kernel) in functions {
        let fixed = kernel.shared_size_bytes().map_err(|e| anyhow!("cannot query the static shared memory of {name}: {e:?}"))?;
        let dynamic = opt_in - fixed;
        kernel
            .set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic)
            .map_err(|e| anyhow!("cannot raise the dynamic shared memory of {name}: {e:?}"))?;
        limits.insert(*name, dynamic as usize);
    }
    Ok(limits)
}

/// Where the kernels came from, for `exp info` and test logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOrigin {
    /// PTX compiled by nvcc at build time.
    Ptx,
    /// CUDA C++ compiled by NVRTC when the backend started.
    Nvrtc,
}

/// Why CUDA cannot be used here, or `Ok` with the device count.
pub fn probe() -> Result<usize> {
    // SAFETY: only checks whether the driver library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        bail!("no CUDA driver library (libcuda) on this machine");
    }
    let n = CudaContext::device_count().map_err(|e| anyhow!("CUDA driver present but unusable: {e:?}"))?;
    if n < 1 {
        bail!("CUDA driver present but no CUDA device");
    }
    Ok(n as usize)
}

/// A device buffer view: pointer and length, valid while the buffer it was
/// taken from is borrowed (`'a`).
#[derive(Clone, Copy, Debug)]
pub struct DView<'a> {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) len: usize,
    _borrow: PhantomData<&'a CudaSlice<f32>>,
}

/// A mutable device buffer view.
#[derive(Debug)]
pub struct DViewMut<'a> {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) len: usize,
    _borrow: PhantomData<&'a mut CudaSlice<f32>>,
}

/// A buffer of `len` floats on the device; without memory when its allocation
/// failed (the failure is pending, so nothing is launched on it).
pub struct DeviceBuf {
    memory: Option<CudaSlice<f32>>,
    len: usize,
}

impl DeviceBuf {
    fn ptr(&self) -> sys::CUdeviceptr {
        self.memory.as_ref().map_or(0, base_ptr)
    }
}

fn base_ptr<T>(buf: &CudaSlice<T>) -> sys::CUdeviceptr {
    let (ptr, _sync) = buf.device_ptr(buf.stream());
    ptr
}

fn offset(ptr: sys::CUdeviceptr, elements: usize) -> sys::CUdeviceptr {
    ptr + (elements * std::mem::size_of::<f32>()) as u64
}

pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    origin: KernelOrigin,
    /// Index tables derived from range lists (multi-tensor chunks, Newton-Schulz
    /// offsets), uploaded once per content: the same groups step every iteration.
    index_tables: Mutex<HashMap<Vec<i64>, Arc<CudaSlice<i64>>>>,
    /// Inverse roots the GPU iteration could not deliver, computed on the CPU instead.
    root_fallbacks: AtomicU64,
    /// Operand precision of the model's GEMMs (`Backend::matmul`).
    precision: Precision,
    /// Dynamic shared memory per block each kernel may use (the device's opt-in
    /// limit less its static shared memory; 0 where the opt-in failed).
    dynamic_shared_limits: HashMap<&'static str, usize>,
    /// The first failure of queued work, until a host read reports it.
    pending: fault::PendingError,
    /// The last kernel queued, named when an asynchronous failure surfaces.
    last_launch: Mutex<Option<(&'static str, LaunchConfig)>>,
}

impl Cuda {
    /// Opens device `ordinal` and loads every kernel; errors say why CUDA is unusable.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("cannot open CUDA device {ordinal}: {e:?}"))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cannot start cuBLAS: {e:?}"))?;
        let mut functions = HashMap::new();
        let mut origin = KernelOrigin::Ptx;
        for (module, names) in FUNCTIONS {
            let source = KERNELS.iter().find(|k| k.name == *module).with_context(|| format!("kernel module {module} was not embedded"))?;
            let ptx = match source.ptx {
                Some(ptx) => Ptx::from_src(ptx),
                None => {
                    origin = KernelOrigin::Nvrtc;
                    compile_at_run_time(source)?
                }
            };
            let m = ctx.load_module(ptx).map_err(|e| anyhow!("cannot load kernel module {module}: {e:?}"))?;
            for name in *names {
                functions.insert(*name, m.load_function(name).map_err(|e| anyhow!("kernel {module}::{name} missing: {e:?}"))?);
            }
        }
        // Without the opt-in, every Newton-Schulz batch takes the cuBLAS path and
        // attention's backward the f32 kernels: slower, still correct.
        let dynamic_shared_limits = allow_opt_in_shared_memory(&ctx, &functions).unwrap_or_else(|e| {
            eprintln!("optlab: {e:#}; kernels keep the default 48 KiB of shared memory per block");
            functions.keys().map(|name| (*name, 0)).collect()
        });
        Ok(Self {
            ctx,
            stream,
            blas,
            functions,
            origin,
            index_tables: Mutex::new(HashMap::new()),
            precision: Precision::F32,
            root_fallbacks: AtomicU64::new(0),
            dynamic_shared_limits,
            pending: fault::PendingError::default(),
            last_launch: Mutex::new(None),
        })
    }

    /// Dynamic shared memory per block `kernel` may be launched with.
    fn dynamic_shared_limit(&self, kernel: &str) -> usize {
        self.dynamic_shared_limits.get(kernel).copied().unwrap_or(0)
    }

    /// The backend with the model's GEMMs (`Backend::matmul`) at `precision`
    /// (f32 unless set: the CPU's precision, what the kernel tests compare with).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn origin(&self) -> KernelOrigin {
        self.origin
    }

    /// Device name, compute capability and memory, for `exp info`.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown".into());
        let cc = self.ctx.compute_capability().map(|(a, b)| format!("{a}.{b}")).unwrap_or_default();
        let mem = self.ctx.total_mem().map(|b| b as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
        format!("{name} (compute capability {cc}, {mem:.1} GiB), kernels from {:?}, model GEMMs in {}", self.origin, self.precision)
    }

    /// The driver's CUDA version, e.g. "13.0".
    pub fn driver_version() -> Option<String> {
        let mut v = 0;
        // SAFETY: only called after probe() found the driver library.
        let ok = unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS;
        ok.then(|| format!("{}.{}", v / 1000, v % 1000 / 10))
    }

    pub fn root_fallbacks(&self) -> u64 {
        self.root_fallbacks.load(Ordering::Relaxed)
    }

    fn function(&self, name: &str) -> Result<(&'static str, &CudaFunction)> {
        self.functions.get_key_value(name).map(|(k, f)| (*k, f)).with_context(|| format!("kernel {name} is not in kernels/*.cu"))
    }

    /// Blocks until every queued operation finished; the first failure of queued
    /// work, if any, is the error (naming the last kernel queued when the driver
    /// reports it only now).
    pub fn synchronize(&self) -> Result<()> {
        self.pending.take()?;
        self.stream.synchronize().map_err(|e| {
            let last = self.last_launch.lock().unwrap_or_else(|p| p.into_inner()).take();
            let culprit = last.map_or_else(
                || "no kernel was queued".to_string(),
                |(name, cfg)| format!("the last kernel queued was {}", launch::describe(name, &cfg, &[])),
            );
            anyhow!("CUDA reported {e:?} while synchronizing; {culprit} (CUDA_LAUNCH_BLOCKING=1 names the failing one)")
        })
    }
}

/// PTX of a kernel module compiled by NVRTC: the path taken when the binary was
/// built without nvcc. Needs libnvrtc, but no GPU.
pub fn compile_at_run_time(source: &KernelSource) -> Result<Ptx> {
    // The kernels include no toolkit header, so NVRTC needs no include path.
    let opts = CompileOptions { arch: Some("compute_80"), options: vec!["-std=c++17".into()], ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(source.cuda, opts)
        .map_err(|e| anyhow!("NVRTC could not compile kernels/{}.cu: {e:?}", source.name))
}

/// A 1-D launch covering `n` elements with grid-stride loops (an empty grid,
/// which is not launched, when `n` is 0).
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).min(4096) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
