//! The kernels of `kernels/*.cu` run on the host, so that their logic is checked
//! against the CPU backend on machines without a GPU, under ThreadSanitizer (a
//! shared-memory access no barrier orders is a race) and AddressSanitizer with
//! UBSan (an index past a buffer or a shared array).
//!
//! `kernels/emulation/cuda_host.h` emulates the CUDA execution model (one host
//! thread per CUDA thread, barriers, warp shuffles, atomics) and
//! `kernels/emulation/driver.cpp` replays [`Launch`]es, built by the same
//! functions the backend queues, over host buffers standing for device memory.
//! The driver is compiled with the C++ compiler (`$CXX`, else `g++`) once per
//! set of sources; without one the tests print why they skip, and
//! `OPTLAB_REQUIRE_EMULATION=1` (CI) makes that a failure.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytemuck::Pod;
use cudarc::driver::sys::CUdeviceptr;

use super::FUNCTIONS;
use super::launch::{Arg, Launch};

/// The two instrumented builds of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sanitizer {
    Thread,
    Address,
}

impl Sanitizer {
    pub(super) const ALL: [Sanitizer; 2] = [Sanitizer::Thread, Sanitizer::Address];

    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Thread => &["-fsanitize=thread"],
            Self::Address => &["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
        }
    }

    fn options(self) -> (&'static str, &'static str) {
        match self {
            Self::Thread => ("TSAN_OPTIONS", "halt_on_error=1 exitcode=66"),
            Self::Address => ("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1"),
        }
    }
}

/// Test kernels with known faults, compiled into the driver beside the real ones.
const FAULT_KERNELS: [&str; 3] = ["fault_missing_barrier", "fault_out_of_bounds", "fault_shuffle_from_exited_lane"];
/// A run longer than this is a barrier some threads never reach.
const TIMEOUT: Duration = Duration::from_secs(600);

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// `modules.inc` (each module in its own namespace) and `entries.inc` (one
/// `OPTLAB_ENTRY` per entry point), from [`FUNCTIONS`].
fn generated_sources() -> (String, String) {
    let mut modules = String::new();
    let mut entries = String::new();
    let all = FUNCTIONS.iter().map(|(m, names)| (*m, names.to_vec())).chain([("faults", FAULT_KERNELS.to_vec())]);
    for (module, names) in all {
        let file = if module == "faults" { "emulation/faults.cu".to_string() } else { format!("{module}.cu") };
        modules += &format!("namespace k_{module} {{\n#include \"{file}\"\n}}\n");
        for name in names {
            entries += &format!("OPTLAB_ENTRY(k_{module}, {name})\n");
        }
    }
    (modules, entries)
}

/// Builds the driver for `sanitizer` unless a build of the same sources exists;
/// `None` (with the reason printed) when there is no C++ compiler.
fn driver(sanitizer: Sanitizer) -> Option<PathBuf> {
    static BUILT: [OnceLock<Option<PathBuf>>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[sanitizer as usize].get_or_init(|| build(sanitizer).unwrap_or_else(|e| panic!("{e:#}"))).clone()
}

fn build(sanitizer: Sanitizer) -> Result<Option<PathBuf>> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        if std::env::var_os("OPTLAB_REQUIRE_EMULATION").is_some() {
            bail!("kernel emulation required, but there is no C++ compiler `{cxx}` (set CXX)");
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED kernel emulation: no C++ compiler `{cxx}` (set CXX)");
        return Ok(None);
    }
    let (modules, entries) = generated_sources();
    let mut flags = vec!["-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer", "-ffp-contract=off", "-pthread"];
    flags.extend(sanitizer.flags());
    let mut hasher = DefaultHasher::new();
    (&cxx, &flags, &modules, &entries).hash(&mut hasher);
    for dir in [kernels_dir(), kernels_dir().join("emulation")] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            std::fs::read(&f)?.hash(&mut hasher);
        }
    }
    let dir = Path::new(env!("OUT_DIR")).join(format!("emulator-{:016x}", hasher.finish()));
    let binary = dir.join(format!("emulate-{sanitizer:?}").to_lowercase());
    if binary.exists() {
        return Ok(Some(binary));
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("modules.inc"), modules)?;
    std::fs::write(dir.join("entries.inc"), entries)?;
    let partial = binary.with_extension("partial");
    let out = Command::new(&cxx)
        .args(&flags)
        .arg("-I")
        .arg(kernels_dir())
        .arg("-I")
        .arg(kernels_dir().join("emulation"))
        .arg("-I")
        .arg(&dir)
        .arg(kernels_dir().join("emulation/driver.cpp"))
        .arg("-o")
        .arg(&partial)
        .output()
        .with_context(|| format!("running {cxx}"))?;
    if !out.status.success() {
        bail!("the kernels do not compile as host C++ ({cxx} {}):\n{}", flags.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    // Renamed into place: a concurrent test process never runs a half-written binary.
    std::fs::rename(&partial, &binary)?;
    Ok(Some(binary))
}

/// Host buffers standing for device memory. A device pointer is
/// `(buffer index + 1) << 40 | byte offset`, as the driver decodes it.
#[derive(Clone, Default)]
pub(super) struct Memory {
    buffers: Vec<Vec<u8>>,
}

const BUFFER_SHIFT: u32 = 40;

impl Memory {
    /// A new buffer holding `data`; its device pointer.
    pub(super) fn alloc<T: Pod>(&mut self, data: &[T]) -> CUdeviceptr {
        self.buffers.push(bytemuck::cast_slice(data).to_vec());
        (self.buffers.len() as u64) << BUFFER_SHIFT
    }

    /// The whole buffer `ptr` points into.
    pub(super) fn read<T: Pod>(&self, ptr: CUdeviceptr) -> Vec<T> {
        let bytes = &self.buffers[(ptr >> BUFFER_SHIFT) as usize - 1];
        bytes.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
    }

    /// Runs `launches` in order, the buffers updated in place; `Ok(false)` when
    /// there is no C++ compiler (printed). An error carries the sanitizer's or
    /// the emulation's report.
    pub(super) fn run(&mut self, launches: &[Launch], sanitizer: Sanitizer) -> Result<bool> {
        let Some(driver) = driver(sanitizer) else { return Ok(false) };
        let dir = tempfile::tempdir()?;
        let (input, output) = (dir.path().join("launches"), dir.path().join("buffers"));
        std::fs::write(&input, self.encode(launches))?;
        let (var, options) = sanitizer.options();
        let mut child = Command::new(&driver).arg(&input).arg(&output).env(var, options).stderr(Stdio::piped()).spawn()?;
        // Read on a thread: a long report must not block the child on a full pipe.
        let mut stderr = child.stderr.take().context("the driver's stderr")?;
        let report = std::thread::spawn(move || {
            let mut report = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut report);
            report
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > TIMEOUT {
                child.kill()?;
                bail!("emulated launches did not finish in {TIMEOUT:?}: a barrier some threads never reach?");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let report = report.join().unwrap_or_default();
        let names: Vec<&str> = launches.iter().map(|l| l.kernel.as_str()).collect();
        if !status.success() || !report.is_empty() {
            bail!("emulated {} under {sanitizer:?}Sanitizer: {status}\n{report}", names.join(", "));
        }
        let bytes = std::fs::read(&output)?;
        let mut at = 0;
        for b in &mut self.buffers {
            let n = b.len();
            b.copy_from_slice(&bytes[at..at + n]);
            at += n;
        }
        Ok(true)
    }

    fn encode(&self, launches: &[Launch]) -> Vec<u8> {
        let mut out = b"OPTLABEMU1".to_vec();
        let u32s = |out: &mut Vec<u8>, xs: &[u32]| xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
        u32s(&mut out, &[self.buffers.len() as u32]);
        for b in &self.buffers {
            out.extend((b.len() as u64).to_le_bytes());
            out.extend(b);
        }
        u32s(&mut out, &[launches.len() as u32]);
        for l in launches {
            let c = &l.cfg;
            u32s(&mut out, &[l.kernel.len() as u32]);
            out.extend(l.kernel.as_bytes());
            u32s(&mut out, &[c.grid_dim.0, c.grid_dim.1, c.grid_dim.2, c.block_dim.0, c.block_dim.1, c.block_dim.2]);
            u32s(&mut out, &[c.shared_mem_bytes, l.args.len() as u32]);
            for a in &l.args {
                let (tag, payload): (u8, u64) = match *a {
                    Arg::Ptr(p) => (0, p),
                    Arg::F32(x) => (1, u64::from(x.to_bits())),
                    Arg::I32(x) => (2, u64::from(x as u32)),
                    Arg::I64(x) => (3, x as u64),
                    Arg::Index(n) => (2, u64::from(i32::try_from(n).expect("a 32-bit index") as u32)),
                };
                out.push(tag);
                out.extend(payload.to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use cudarc::driver::LaunchConfig;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::super::inverse_root;
    use super::super::newton_schulz::cublas_path;
    use super::super::newton_schulz::{one_launch, one_launch_schedule};
    use super::super::ops::{adamw_scalars, chunk_list, multi_tensor_launch, nn, softmax_cross_entropy_launch};
    use super::super::transformer::{
        attention_backward_launches, attention_forward_launch, embedding_backward_launch, embedding_forward_launch, embedding_groups,
        layernorm_backward_launches, layernorm_forward_launch, layernorm_partial_len,
    };
    use super::*;
    use crate::backend::{Activation, AdamParams, Attention, Backend, Cpu, DiagonalRule, Precision};
    use crate::linalg::{Epsilon, NsCoefficients};

    fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Outputs start as NaN: a value the kernel should write and did not stays NaN.
    fn poisoned(n: usize) -> Vec<f32> {
        vec![f32::NAN; n]
    }

    /// max |got − want| ≤ bound · max(max |want|, 1e-6), nothing non-finite.
    fn assert_close(what: &str, got: &[f32], want: &[f32], bound: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite output (poison left or overflow)");
        let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(want).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / scale;
        assert!(err <= bound, "{what}: relative error {err:.2e} > {bound:.0e}");
    }

    /// Grid axes a kernel strides over: x, y, or neither.
    const X: [bool; 2] = [true, false];
    const Y: [bool; 2] = [false, true];
    const NONE: [bool; 2] = [false, false];

    /// The launches as queued, and again with the axes of every grid set to 1 where
    /// the kernel grid-strides over them, so that each such loop runs several
    /// iterations per block (the backend's grids only do past ~10⁶ elements).
    fn geometries(launches: Vec<Launch>, strided: &[[bool; 2]]) -> [(Vec<Launch>, &'static str); 2] {
        assert_eq!(launches.len(), strided.len());
        let shrunk = launches
            .iter()
            .zip(strided)
            .map(|(l, &[x, y])| {
                let mut l = l.clone();
                if x {
                    l.cfg.grid_dim.0 = 1;
                }
                if y {
                    l.cfg.grid_dim.1 = 1;
                }
                l
            })
            .collect();
        [(launches, "backend grid"), (shrunk, "one block per strided axis")]
    }

    /// Runs under each of `sanitizers` on a copy of `memory`, then `check`s the
    /// buffers; nothing when the emulation is skipped.
    fn run_under(sanitizers: &[Sanitizer], launches: &[Launch], memory: &Memory, check: impl Fn(&Memory, Sanitizer)) {
        for &sanitizer in sanitizers {
            let mut m = memory.clone();
            if m.run(launches, sanitizer).unwrap_or_else(|e| panic!("{e:#}")) {
                check(&m, sanitizer);
            }
        }
    }

    fn single(kernel: &str, grid: u32, block: u32, args: Vec<Arg>) -> Launch {
        Launch::new(kernel, LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }, args)
    }

    #[test]
    fn the_emulation_reports_races_out_of_bounds_accesses_and_bad_shuffles() {
        let expect = |launch: Launch, sanitizer: Sanitizer, memory: Memory, report: &str| {
            let mut memory = memory;
            match memory.run(&[launch], sanitizer) {
                Ok(false) => {}
                Ok(true) => panic!("{sanitizer:?}: no report, expected `{report}`"),
                Err(e) => assert!(format!("{e:#}").contains(report), "{sanitizer:?}: expected `{report}` in {e:#}"),
            }
        };
        let mut m = Memory::default();
        let (out, x) = (m.alloc(&[0.0f32; 2]), m.alloc(&[1.0f32; 64]));
        expect(single("fault_missing_barrier", 2, 64, vec![Arg::Ptr(out), Arg::Ptr(x)]), Sanitizer::Thread, m, "data race");
        let mut m = Memory::default();
        let out = m.alloc(&[0.0f32; 40]);
        let launch = single("fault_out_of_bounds", 1, 40, vec![Arg::Ptr(out), Arg::I32(40)]);
        expect(launch, Sanitizer::Address, m, "heap-buffer-overflow");
        let mut m = Memory::default();
        let out = m.alloc(&[0.0f32; 32]);
        expect(single("fault_shuffle_from_exited_lane", 1, 32, vec![Arg::Ptr(out)]), Sanitizer::Thread, m, "lane that has exited");
        // Arguments that do not match the kernel's parameters: the check the driver API cannot make.
        let mut m = Memory::default();
        let x = m.alloc(&[0.0f32; 8]);
        let launch = single("fill", 1, 32, vec![Arg::Ptr(x), Arg::F32(1.0), Arg::F32(8.0)]);
        expect(launch, Sanitizer::Address, m, "fill: argument 2 is tag 1, the kernel takes long long");
    }

    #[test]
    fn newton_schulz_in_one_launch_matches_the_cpu() {
        let mut rng = StdRng::seed_from_u64(11);
        // (rows, cols, batch): tiny and odd, wide and tall, a short side past one
        // warp with every per-thread loop taking several iterations, 16×64 as in
        // the models, and the largest short side, 128.
        for (rows, cols, batch) in [(5, 7, 2), (37, 5, 1), (33, 65, 2), (16, 64, 3), (128, 131, 1)] {
            let len = rows * cols;
            // Gaps before and between the matrices, in reverse order.
            let input = random(5 + batch * (len + 3), &mut rng);
            let ranges: Vec<Range<usize>> = (0..batch).rev().map(|i| 5 + i * (len + 3)..5 + i * (len + 3) + len).collect();
            let offsets: Vec<i64> = ranges.iter().map(|r| r.start as i64).collect();
            // The bounds of tests/cuda_kernels.rs: bf16 operands, amplified by five
            // steps the more the smaller the matrix. ThreadSanitizer (~100× slower
            // at 512 threads) runs two steps: every barrier of a step, and the
            // reuse of shared memory from one step to the next.
            let checks: &[(usize, f32)] = if rows.min(cols) < 16 { &[(1, 1.5e-2)] } else { &[(1, 1.5e-2), (5, 5e-2)] };
            let runs = checks
                .iter()
                .flat_map(|&(steps, bound)| {
                    [NsCoefficients::Keller, NsCoefficients::PolarExpress].map(|c| (Sanitizer::Address, c, steps, bound))
                })
                .chain([(Sanitizer::Thread, NsCoefficients::Keller, 2, 5e-2)]);
            for (sanitizer, coeffs, steps, bound) in runs {
                let mut want = poisoned(input.len());
                Cpu.newton_schulz_batched(&mut want, &input, &ranges, rows, cols, steps, coeffs);
                let mut m = Memory::default();
                let out = m.alloc(&poisoned(input.len()));
                let buffers = [out, m.alloc(&input), m.alloc(&offsets), m.alloc(&one_launch_schedule(steps, coeffs))];
                run_under(&[sanitizer], &[one_launch([rows, cols], batch, steps, coeffs, buffers)], &m, |m, sanitizer| {
                    let got: Vec<f32> = m.read(out);
                    let what = format!("newton_schulz {batch}×{rows}×{cols} {coeffs:?} {steps} steps ({sanitizer:?})");
                    let outside = (0..input.len()).filter(|i| !ranges.iter().any(|r| r.contains(i)));
                    assert!(outside.into_iter().all(|i| got[i].is_nan()), "{what}: wrote outside its ranges");
                    let inside = |v: &[f32]| ranges.iter().flat_map(|r| v[r.clone()].to_vec()).collect::<Vec<_>>();
                    assert_close(&what, &inside(&got), &inside(&want), bound);
                });
            }
        }
    }

    #[test]
    fn attention_forward_and_backward_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(12);
        // Every compiled head dim, causal and not; 37 positions leave ragged
        // query (16) and key (32, 16) tiles.
        for (head_dim, causal) in [(16, true), (32, false), (64, true), (128, false)] {
            let s = Attention { batch: 2, seq: 37, heads: 2, head_dim, causal };
            let rows = s.batch * s.seq;
            let (qkv, dout) = (random(rows * s.qkv_width(), &mut rng), random(rows * s.width(), &mut rng));
            let (mut out, mut lse, mut dqkv) = (poisoned(rows * s.width()), poisoned(s.batch * s.heads * s.seq), poisoned(qkv.len()));
            Cpu.attention_forward(&mut out, &mut lse, &qkv, s);
            Cpu.attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, s);

            let mut m = Memory::default();
            let (d_out, d_lse, d_qkv) = (m.alloc(&poisoned(out.len())), m.alloc(&poisoned(lse.len())), m.alloc(&qkv));
            let forward = attention_forward_launch([d_out, d_lse, d_qkv], &s, Precision::F32).unwrap();
            // The backward reads the CPU's forward outputs, so each pass is checked on its own.
            let d_dqkv = m.alloc(&poisoned(qkv.len()));
            let delta = m.alloc(&poisoned(s.batch * s.heads * s.seq));
            let backward =
                attention_backward_launches([d_dqkv, m.alloc(&dout), d_qkv, m.alloc(&out), m.alloc(&lse), delta], &s, Precision::F32)
                    .unwrap();
            let launches: Vec<Launch> = std::iter::once(forward).chain(backward).collect();
            // Forward and backward grid-stride over query or key tiles (y), delta over rows (x).
            let strided = [Y, X, Y, Y];
            // Every gradient is summed in a fixed order: each geometry and thread
            // schedule gives the same bits.
            let first_dqkv = std::cell::RefCell::new(None::<Vec<u32>>);
            for (launches, grid) in geometries(launches, &strided) {
                run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                    let what = |t: &str| format!("attention {t} hd {head_dim} causal {causal}, {grid} ({sanitizer:?})");
                    assert_close(&what("out"), &m.read::<f32>(d_out), &out, 1e-5);
                    assert_close(&what("lse"), &m.read::<f32>(d_lse), &lse, 1e-5);
                    let got = m.read::<f32>(d_dqkv);
                    assert_close(&what("dqkv"), &got, &dqkv, 1e-4);
                    let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(
                        &bits,
                        first_dqkv.borrow_mut().get_or_insert_with(|| bits.clone()),
                        "{}: not bit-reproducible",
                        what("dqkv")
                    );
                });
            }
        }
    }

    /// Largest |got − want| relative to max(max |want|, 1), everything finite.
    fn max_error(what: &str, got: &[f32], want: &[f32]) -> f32 {
        assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite output (poison left or overflow)");
        let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        got.iter().zip(want).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / scale
    }

    #[test]
    fn tensor_core_attention_matches_the_cpu() {
        let mut rng = StdRng::seed_from_u64(13);
        // 70 positions: two tiles of 64 rows (one ragged) and ragged loop tiles.
        // Bounds: products of operands with 11 (tf32) or 8 (bf16) significant
        // bits, as the tensor cores take them, relative to max(|want|, 1): 3×
        // the errors seen (tf32 4–9e-4, bf16 3–6e-3); a fragment-layout bug
        // gives errors of order 1. Inputs of spread 2 make the softmax peaked.
        for (precision, bound) in [(Precision::Tf32, 2e-3), (Precision::Bf16, 1.5e-2)] {
            for (head_dim, causal) in [(16, true), (32, false), (64, true), (128, false)] {
                let s = Attention { batch: 2, seq: 70, heads: 2, head_dim, causal };
                let rows = s.batch * s.seq;
                let qkv: Vec<f32> = random(rows * s.qkv_width(), &mut rng).into_iter().map(|z| 2.0 * z).collect();
                let dout = random(rows * s.width(), &mut rng);
                let (mut out, mut lse, mut dqkv) = (poisoned(rows * s.width()), poisoned(s.batch * s.heads * s.seq), poisoned(qkv.len()));
                Cpu.attention_forward(&mut out, &mut lse, &qkv, s);
                Cpu.attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, s);
                let mut m = Memory::default();
                let (d_out, d_lse, d_qkv, d_dqkv) =
                    (m.alloc(&poisoned(out.len())), m.alloc(&poisoned(lse.len())), m.alloc(&qkv), m.alloc(&poisoned(qkv.len())));
                let forward = attention_forward_launch([d_out, d_lse, d_qkv], &s, precision).unwrap();
                // The backward reads the CPU's forward outputs, so each pass is checked on its own.
                let saved = [m.alloc(&dout), d_qkv, m.alloc(&out), m.alloc(&lse), m.alloc(&poisoned(lse.len()))];
                let backward =
                    attention_backward_launches([d_dqkv, saved[0], saved[1], saved[2], saved[3], saved[4]], &s, precision).unwrap();
                let launches: Vec<Launch> = std::iter::once(forward).chain(backward).collect();
                let first_dqkv = std::cell::RefCell::new(None::<Vec<u32>>);
                for (launches, grid) in geometries(launches, &[Y, X, Y, Y]) {
                    run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                        let what = format!("{precision} attention hd {head_dim} causal {causal}, {grid} ({sanitizer:?})");
                        let got = m.read::<f32>(d_dqkv);
                        let errors = [
                            ("out", max_error(&what, &m.read(d_out), &out)),
                            ("lse", max_error(&what, &m.read(d_lse), &lse)),
                            ("dqkv", max_error(&what, &got, &dqkv)),
                        ];
                        eprintln!("{what}: errors {errors:?}");
                        for (part, e) in errors {
                            assert!(e <= bound, "{what}: {part} error {e:.1e} > {bound:.0e}");
                        }
                        let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                        assert_eq!(&bits, first_dqkv.borrow_mut().get_or_insert_with(|| bits.clone()), "{what}: dqkv not bit-reproducible");
                    });
                }
            }
        }
    }

    #[test]
    fn layernorm_forward_and_backward_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(13);
        // 70 rows: two chunks of dgamma/dbeta partial sums, the second ragged; 45
        // columns: a ragged 32-column tile.
        let (rows, dim) = (70, 45);
        let (x, dy) = (random(rows * dim, &mut rng), random(rows * dim, &mut rng));
        let (gamma, beta) = (random(dim, &mut rng), random(dim, &mut rng));
        let (mut y, mut mean, mut rstd) = (poisoned(rows * dim), poisoned(rows), poisoned(rows));
        Cpu.layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &gamma, &beta, 1e-5);
        // dgamma and dbeta accumulate: both start from a nonzero value.
        let start = random(dim, &mut rng);
        let (mut dx, mut dgamma, mut dbeta) = (poisoned(x.len()), start.clone(), start.clone());
        Cpu.layernorm_backward(&mut dx, &mut dgamma, &mut dbeta, &dy, &x, &mean, &rstd, &gamma);

        let mut m = Memory::default();
        let (d_y, d_mean, d_rstd) = (m.alloc(&poisoned(y.len())), m.alloc(&poisoned(rows)), m.alloc(&poisoned(rows)));
        let (d_x, d_gamma, d_beta) = (m.alloc(&x), m.alloc(&gamma), m.alloc(&beta));
        let forward = layernorm_forward_launch([d_y, d_mean, d_rstd, d_x, d_gamma, d_beta], 1e-5, rows, dim);
        let (d_dx, d_dgamma, d_dbeta) = (m.alloc(&poisoned(x.len())), m.alloc(&start), m.alloc(&start));
        let saved = [m.alloc(&dy), d_x, m.alloc(&mean), m.alloc(&rstd), d_gamma];
        let partial = m.alloc(&poisoned(layernorm_partial_len(rows, dim)));
        let [s0, s1, s2, s3, s4] = saved;
        let backward = layernorm_backward_launches([d_dx, d_dgamma, d_dbeta, s0, s1, s2, s3, s4, partial], rows, dim);
        let launches: Vec<Launch> = std::iter::once(forward).chain(backward).collect();
        // Every kernel here but the per-chunk sums grid-strides over rows or elements.
        for (launches, grid) in geometries(launches, &[X, X, NONE, X, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                let what = |t: &str| format!("layernorm {t}, {grid} ({sanitizer:?})");
                assert_close(&what("y"), &m.read::<f32>(d_y), &y, 1e-5);
                assert_close(&what("mean"), &m.read::<f32>(d_mean), &mean, 1e-5);
                assert_close(&what("rstd"), &m.read::<f32>(d_rstd), &rstd, 1e-5);
                assert_close(&what("dx"), &m.read::<f32>(d_dx), &dx, 1e-5);
                assert_close(&what("dgamma"), &m.read::<f32>(d_dgamma), &dgamma, 1e-5);
                assert_close(&what("dbeta"), &m.read::<f32>(d_dbeta), &dbeta, 1e-5);
            });
        }
    }

    #[test]
    fn softmax_cross_entropy_matches_the_cpu() {
        let mut rng = StdRng::seed_from_u64(14);
        // 13 rows: a ragged last block of 8 warps; 45 classes: more than a warp's lanes.
        let (rows, classes) = (13, 45);
        let logits: Vec<f32> = random(rows * classes, &mut rng).iter().map(|x| 8.0 * x).collect();
        let labels: Vec<u8> = (0..rows).map(|_| rng.random_range(0..classes as u8)).collect();
        let mut dlogits = poisoned(logits.len());
        let want = Cpu.softmax_cross_entropy(&mut dlogits, &logits, &labels, classes).unwrap();
        let mut m = Memory::default();
        let labels_i32: Vec<i32> = labels.iter().map(|&l| i32::from(l)).collect();
        let (d_dlogits, d_loss, d_correct) = (m.alloc(&poisoned(logits.len())), m.alloc(&poisoned(rows)), m.alloc(&vec![-1i32; rows]));
        let launch = softmax_cross_entropy_launch([d_dlogits, d_loss, d_correct, m.alloc(&logits), m.alloc(&labels_i32)], rows, classes);
        run_under(&Sanitizer::ALL, &[launch], &m, |m, sanitizer| {
            let what = |t: &str| format!("softmax_cross_entropy {t} ({sanitizer:?})");
            assert_close(&what("dlogits"), &m.read::<f32>(d_dlogits), &dlogits, 1e-5);
            let loss = m.read::<f32>(d_loss).iter().map(|&l| f64::from(l)).sum::<f64>() / rows as f64;
            assert_close(&what("mean loss"), &[loss as f32], &[want.loss], 1e-5);
            let correct = m.read::<i32>(d_correct);
            assert!(correct.iter().all(|&c| c == 0 || c == 1), "{}: {correct:?}", what("hits"));
            assert_eq!(correct.iter().filter(|&&c| c == 1).count(), want.correct, "{}", what("hits"));
        });
    }

    #[test]
    fn elementwise_ops_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(16);
        // 37×29: nothing a multiple of a warp or a block.
        let (rows, cols) = (37, 29);
        let n = rows * cols;
        let (x, y0, dy) = (random(n, &mut rng), random(n, &mut rng), random(n, &mut rng));
        let (bias, v0) = (random(cols, &mut rng), random(n, &mut rng).iter().map(|x| x.abs()).collect::<Vec<_>>());
        let (d_rows, d_cols) = (random(rows, &mut rng), random(cols, &mut rng));
        let mut m = Memory::default();
        let (d_x, d_dy, d_v0, d_bias) = (m.alloc(&x), m.alloc(&dy), m.alloc(&v0), m.alloc(&bias));
        let (d_d_rows, d_d_cols) = (m.alloc(&d_rows), m.alloc(&d_cols));
        let d_y0 = m.alloc(&y0);
        let d_scratch = m.alloc(&poisoned(n));
        // (what, device output, launch, its initial contents, the CPU's op on them)
        type CpuOp = Box<dyn Fn(&mut [f32])>;
        let mut cases: Vec<(String, CUdeviceptr, Launch, Vec<f32>, CpuOp)> = Vec::new();
        let mut case = |what: &str, start: &[f32], launch: &dyn Fn(CUdeviceptr) -> Launch, cpu: CpuOp| {
            let out = m.alloc(start);
            cases.push((what.to_string(), out, launch(out), start.to_vec(), cpu));
        };
        let poison = poisoned(n);
        case("fill", &poison, &|o| nn::fill(o, 0.25, n), Box::new(|o| Cpu.fill(o, 0.25)));
        let xc = x.clone();
        case("axpby", &y0, &|o| nn::axpby(o, 0.7, d_x, -1.3, n), Box::new(move |o| Cpu.axpby(o, 0.7, &xc, -1.3)));
        case("scale", &y0, &|o| nn::scale(o, -0.3, n), Box::new(|o| Cpu.scale(o, -0.3)));
        let b = bias.clone();
        case("add_bias_rows", &y0, &|o| nn::add_bias_rows(o, d_bias, cols, n), Box::new(move |o| Cpu.add_bias_rows(o, &b)));
        let (xc, start) = (x.clone(), random(cols, &mut rng));
        case(
            "accumulate_column_sums",
            &start,
            &|o| nn::accumulate_column_sums(o, d_x, rows, cols),
            Box::new(move |o| Cpu.accumulate_column_sums(o, &xc)),
        );
        for kind in Activation::ALL {
            let xc = x.clone();
            case(
                &format!("{kind:?} forward"),
                &poison,
                &|o| nn::activation_forward(kind, o, d_x, n),
                Box::new(move |o| Cpu.activation_forward(kind, o, &xc)),
            );
            let (xc, dyc) = (x.clone(), dy.clone());
            let cpu = Box::new(move |o: &mut [f32]| Cpu.activation_backward(kind, o, &dyc, &xc));
            case(&format!("{kind:?} backward"), &poison, &|o| nn::activation_backward(kind, o, d_dy, d_x, n), cpu);
            // GLU with x as the gate, y0 as the up projection; each backward output checked in turn.
            let (xc, uc) = (x.clone(), y0.clone());
            let cpu = Box::new(move |o: &mut [f32]| Cpu.glu_forward(kind, o, &xc, &uc));
            case(&format!("{kind:?} GLU forward"), &poison, &|o| nn::glu_forward(kind, o, d_x, d_y0, n), cpu);
            for gate_out in [true, false] {
                let (xc, uc, dyc) = (x.clone(), y0.clone(), dy.clone());
                let cpu = Box::new(move |o: &mut [f32]| {
                    let mut other = vec![0.0; o.len()];
                    let (dgate, dup) = if gate_out { (o, &mut other[..]) } else { (&mut other[..], o) };
                    Cpu.glu_backward(kind, dgate, dup, &dyc, &xc, &uc);
                });
                let launch =
                    |o| nn::glu_backward(kind, if gate_out { [o, d_scratch, d_dy, d_x, d_y0] } else { [d_scratch, o, d_dy, d_x, d_y0] }, n);
                case(&format!("{kind:?} GLU backward ({})", if gate_out { "dgate" } else { "dup" }), &poison, &launch, cpu);
            }
        }
        let xc = x.clone();
        case("ema_square", &v0, &|o| nn::ema_square(o, d_x, 0.9, n), Box::new(move |o| Cpu.ema_square(o, &xc, 0.9)));
        let (yc, vc) = (y0.clone(), v0.clone());
        let cpu = Box::new(move |o: &mut [f32]| Cpu.adam_direction(o, &yc, &vc, 0.1, 0.01, 1e-8));
        case("adam_direction", &poison, &|o| nn::adam_direction(o, d_y0, d_v0, [0.1, 0.01, 1e-8], n), cpu);
        for (over_rows, d, d_dev) in [(true, d_rows.clone(), d_d_rows), (false, d_cols.clone(), d_d_cols)] {
            let cpu = Box::new(move |o: &mut [f32]| Cpu.scale_by_diagonal_root(o, &d, rows, cols, over_rows, 4, 1e-3));
            let launch = |o| nn::scale_by_diagonal_root(o, d_dev, [rows, cols], over_rows, 4, 1e-3);
            case(&format!("scale_by_diagonal_root over_rows {over_rows}"), &y0, &launch, cpu);
            let (xc, start) = (x.clone(), random(if over_rows { rows } else { cols }, &mut rng));
            let cpu = Box::new(move |o: &mut [f32]| Cpu.ema_square_sums(o, &xc, rows, cols, over_rows, 0.9, 0.5));
            case(
                &format!("ema_square_sums over_rows {over_rows}"),
                &start,
                &|o| nn::ema_square_sums(o, d_x, [rows, cols], over_rows, 0.9, 0.5),
                cpu,
            );
        }
        let launches: Vec<Launch> = cases.iter().map(|c| c.2.clone()).collect();
        let strided = vec![X; launches.len()];
        for (launches, grid) in geometries(launches, &strided) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                for (what, out, _, start, cpu) in &cases {
                    let mut want = start.clone();
                    cpu(&mut want);
                    assert_close(&format!("{what}, {grid} ({sanitizer:?})"), &m.read::<f32>(*out), &want, 1e-6);
                }
            });
        }
    }

    #[test]
    fn reductions_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(17);
        let n = 1000;
        let (a, b) = (random(n, &mut rng), random(n, &mut rng));
        let mut with_non_finite = a.clone();
        for (i, v) in [(3, f32::NAN), (500, f32::INFINITY), (999, f32::NEG_INFINITY)] {
            with_non_finite[i] = v;
        }
        let mut m = Memory::default();
        let (d_a, d_b, d_nf) = (m.alloc(&a), m.alloc(&b), m.alloc(&with_non_finite));
        let blocks = nn::reduce_f64_blocks(n);
        assert!(blocks > 1, "the partial sums span several blocks");
        let sums = [(); 3].map(|()| m.alloc(&vec![f64::NAN; blocks]));
        let count = m.alloc(&[0u32]);
        let launches = vec![
            nn::reduce_f64("sum_squares", sums[0], &[d_a], n),
            nn::reduce_f64("sum_squared_difference", sums[1], &[d_a, d_b], n),
            nn::reduce_f64("dot", sums[2], &[d_a, d_b], n),
            nn::count_non_finite(count, d_nf, n),
        ];
        let want_sums = [Cpu.sum_squares(&a).unwrap(), Cpu.sum_squared_difference(&a, &b).unwrap(), Cpu.dot(&a, &b).unwrap()];
        // The host adds one partial per block of the backend's grid: that grid stays.
        for (launches, grid) in geometries(launches, &[NONE, NONE, NONE, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                let what = |t: &str| format!("{t}, {grid} ({sanitizer:?})");
                for (name, (sum, want)) in ["sum_squares", "sum_squared_difference", "dot"].iter().zip(sums.iter().zip(want_sums)) {
                    let got: f64 = m.read::<f64>(*sum).iter().sum();
                    assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{}: {got} against {want}", what(name));
                }
                assert_eq!(m.read::<u32>(count)[0], 3, "{}", what("count_non_finite"));
            });
        }
    }

    #[test]
    fn inverse_root_kernels_match_their_definitions() {
        let mut rng = StdRng::seed_from_u64(21);
        let eye = |i: usize, n: usize| if i % (n * n) / n == i % n { 1.0f32 } else { 0.0 };
        // Power iteration, start and one step, over 3 vectors of 37 (the last
        // product zero); then M₀, X₀ and T (the second matrix done).
        let (n, batch, p) = (37, 3, 4u32);
        let eps = Epsilon { absolute: 1e-6, relative: 1e-2 };
        let v0: Vec<f32> = (0..batch * n)
            .map(|i| {
                let golden = 0.618_034_f32 * (i % n) as f32;
                (0.5 + golden - golden.floor()) / (n as f32).sqrt()
            })
            .collect();
        let mut w = random(batch * n, &mut rng);
        w[2 * n..].fill(0.0);
        let lambda: Vec<f32> =
            (0..batch).map(|b| (0..n).map(|i| f64::from(v0[b * n + i]) * f64::from(w[b * n + i])).sum::<f64>() as f32).collect();
        let v1: Vec<f32> = w
            .chunks(n)
            .flat_map(|c| {
                let norm = c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                c.iter().map(move |&x| if norm > 0.0 { x * (1.0 / norm) as f32 } else { 0.0 }).collect::<Vec<_>>()
            })
            .collect();
        let a = random(batch * n * n, &mut rng);
        let start: Vec<(f32, f32)> = (0..batch * n * n)
            .map(|i| {
                let top = lambda[i / (n * n)].max(0.0);
                let e = eps.absolute as f32 + eps.relative as f32 * top;
                let z = (1.0 + p as f32) / (2.0 * (top + e));
                (z * (a[i] + e * eye(i, n)), eye(i, n) * z.powf(1.0 / p as f32))
            })
            .collect();
        let done = [0i32, 1, 0];
        let factor: Vec<f32> = (0..batch * n * n)
            .map(|i| if done[i / (n * n)] != 0 { eye(i, n) } else { ((p as f32 + 1.0) * eye(i, n) - start[i].0) / p as f32 })
            .collect();
        let mut m = Memory::default();
        let (d_v, d_w, d_lambda) = (m.alloc(&poisoned(batch * n)), m.alloc(&w), m.alloc(&poisoned(batch)));
        let (d_m, d_x, d_a, d_t, d_done) =
            (m.alloc(&poisoned(a.len())), m.alloc(&poisoned(a.len())), m.alloc(&a), m.alloc(&poisoned(a.len())), m.alloc(&done));
        let launches = vec![
            inverse_root::launches::power_start(d_v, n, batch),
            inverse_root::launches::power_step([d_v, d_lambda, d_w], n, batch),
            inverse_root::launches::start([d_m, d_x, d_a, d_lambda], eps, p, n, batch),
            inverse_root::launches::factor([d_t, d_m, d_done], p, n, batch),
        ];
        // The host adds one partial per block of the backend's grid: that grid stays.
        for (launches, grid) in geometries(launches, &[NONE, NONE, NONE, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                let what = |t: &str| format!("{t}, {grid} ({sanitizer:?})");
                assert_close(&what("power_iteration_step lambda"), &m.read::<f32>(d_lambda), &lambda, 1e-6);
                assert_close(&what("power_iteration_step v"), &m.read::<f32>(d_v), &v1, 1e-6);
                assert_close(&what("newton_start m"), &m.read::<f32>(d_m), &start.iter().map(|s| s.0).collect::<Vec<_>>(), 1e-6);
                assert_close(&what("newton_start x"), &m.read::<f32>(d_x), &start.iter().map(|s| s.1).collect::<Vec<_>>(), 1e-6);
                assert_close(&what("newton_factor"), &m.read::<f32>(d_t), &factor, 1e-6);
            });
        }
        // The convergence check over 4 matrices of 300² (2 chunks each): one far
        // from I, one converged, one with a NaN, one stalled (8e-5 after 1e-4).
        let n = 300;
        let deviations = [0.25f32, 1e-6, f32::NAN, 8e-5];
        let mut near = Vec::with_capacity(4 * n * n);
        for &d in &deviations {
            let mut mat: Vec<f32> = (0..n * n).map(|i| eye(i, n)).collect();
            mat[n * n - 2] += d; // in the second chunk
            mat[5] += d * 0.5;
            near.extend(mat);
        }
        let mut m = Memory::default();
        let (d_residual, d_m, d_done, d_err) =
            (m.alloc(&[7u32; 4]), m.alloc(&near), m.alloc(&[0i32; 4]), m.alloc(&[f32::INFINITY, f32::INFINITY, f32::INFINITY, 1e-4]));
        let check = inverse_root::launches::check([d_residual, d_m, d_done, d_err], n, 4).to_vec();
        assert!(check[1].cfg.grid_dim.0 >= 2, "the residual's maximum spans several blocks per matrix");
        for (launches, grid) in geometries(check, &[X, NONE, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                let what = format!("newton_residual and newton_converged, {grid} ({sanitizer:?})");
                assert_eq!(m.read::<i32>(d_done), vec![0, 1, 1, 1], "{what}: done flags");
                let err = m.read::<f32>(d_err);
                assert!(err[0] == 0.25 && err[1] == 1e-6 && err[2] == f32::INFINITY && err[3] == 8e-5, "{what}: residuals {err:?}");
            });
        }
    }

    #[test]
    fn multi_tensor_steps_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(15);
        // Ranges out of order with gaps, one empty, sizes and starts not multiples
        // of 4 (scalar heads and tails around the 128-bit body); then ranges cut
        // into several chunks, with one block striding over them all too.
        let layouts: [(&[Range<usize>], usize); 2] =
            [(&[40..77, 3..4, 100..100, 80..97, 5..36], 110), (&[3..9000, 9005..9006, 12288..12290], 12300)];
        for (ranges, n) in layouts {
            let (p, g) = (random(n, &mut rng), random(n, &mut rng));
            // Running squares above 0.5, a small running mean (centered RMSProp takes
            // the root of their difference), a non-negative third state.
            let r = |rng: &mut StdRng, f: fn(f32) -> f32| random(n, rng).into_iter().map(f).collect::<Vec<f32>>();
            let states = [r(&mut rng, |x| 0.5 + x.abs()), r(&mut rng, f32::abs), r(&mut rng, |x| 0.1 * x)];
            let chunks = chunk_list(ranges);
            let (lr, wd) = (0.01, 0.1);
            let rules = [
                DiagonalRule::Adagrad { lr, eps: 1e-10, weight_decay: wd },
                DiagonalRule::RmsProp { lr, alpha: 0.99, eps: 1e-8, weight_decay: wd, momentum: 0.9, centered: true },
                DiagonalRule::Adadelta { lr: 1.0, rho: 0.9, eps: 1e-6, weight_decay: wd },
                DiagonalRule::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, amsgrad: true, bias1: 0.271, bias2: 0.003 },
            ];
            // Each case: the kernel with its scalars, how many state buffers it takes, and the CPU step on (p, states).
            type CpuStep = Box<dyn Fn(&mut Vec<f32>, &mut [Vec<f32>; 3])>;
            let mut cases: Vec<(String, &str, Vec<Arg>, usize, CpuStep)> = Vec::new();
            let hp = AdamParams { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, step: 3 };
            let (gc, rc) = (g.clone(), ranges.to_vec());
            let cpu: CpuStep = Box::new(move |p, [m, v, _]| Cpu.adamw_step(p, &gc, m, v, &rc, hp));
            cases.push(("adamw".into(), "adamw_step", adamw_scalars(hp), 2, cpu));
            for nesterov in [false, true] {
                let (gc, rc) = (g.clone(), ranges.to_vec());
                let cpu: CpuStep = Box::new(move |p, s| Cpu.sgd_step(p, &gc, &mut s[0], &rc, lr, 0.9, nesterov, wd));
                cases.push((format!("sgd nesterov {nesterov}"), "sgd_step", nn::sgd_scalars(lr, 0.9, nesterov, wd), 1, cpu));
            }
            let (gc, rc) = (g.clone(), ranges.to_vec());
            let cpu: CpuStep = Box::new(move |p, s| Cpu.lion_step(p, &gc, &mut s[0], &rc, lr, 0.9, 0.99, wd));
            cases.push(("lion".into(), "lion_step", nn::lion_scalars(lr, 0.9, 0.99, wd), 1, cpu));
            for rule in rules {
                let (gc, rc) = (g.clone(), ranges.to_vec());
                let cpu: CpuStep = Box::new(move |p, [s0, s1, s2]| Cpu.diagonal_step(p, &gc, [s0, s1, s2], &rc, rule));
                let (kernel, scalars) = nn::diagonal_rule(rule);
                cases.push((format!("{rule:?}"), kernel, scalars, 3, cpu));
            }
            for (what, kernel, scalars, count, cpu) in cases {
                let (mut want_p, mut want_s) = (p.clone(), states.clone());
                cpu(&mut want_p, &mut want_s);
                let mut m = Memory::default();
                let (d_p, d_g) = (m.alloc(&p), m.alloc(&g));
                let d_s: Vec<CUdeviceptr> = states.iter().map(|s| m.alloc(s)).collect();
                let state = [d_p, d_g].iter().chain(&d_s[..count]).map(|&p| Arg::Ptr(p)).collect();
                let launch = multi_tensor_launch(kernel, state, m.alloc(&chunks), chunks.len() / 2, scalars);
                for (launches, grid) in geometries(vec![launch], &[X]) {
                    run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                        let what = |t: &str| format!("{what} {t}, {} chunks, {grid} ({sanitizer:?})", chunks.len() / 2);
                        // Outside the ranges every buffer keeps its values exactly.
                        assert_close(&what("p"), &m.read::<f32>(d_p), &want_p, 1e-6);
                        for (i, s) in d_s.iter().enumerate() {
                            assert_close(&what(&format!("state {i}")), &m.read::<f32>(*s), &want_s[i], 1e-6);
                        }
                    });
                }
            }
        }
    }

    #[test]
    fn embedding_gather_and_scatter_add_match_the_cpu() {
        let mut rng = StdRng::seed_from_u64(19);
        // Repeated ids: 50 ids over 7 rows, one row never used.
        let (rows, dim) = (7, 13);
        let ids: Vec<u32> = (0..50).map(|_| rng.random_range(0..rows as u32 - 1)).collect();
        let (table, dout) = (random(rows * dim, &mut rng), random(ids.len() * dim, &mut rng));
        let mut out = poisoned(ids.len() * dim);
        Cpu.embedding_forward(&mut out, &table, &ids, dim);
        let mut dtable = random(rows * dim, &mut rng);
        let start = dtable.clone();
        Cpu.embedding_backward(&mut dtable, &dout, &ids, dim);
        let (distinct, groups) = embedding_groups(&ids);
        let mut m = Memory::default();
        let (d_out, d_table, d_ids, d_groups) = (m.alloc(&poisoned(out.len())), m.alloc(&table), m.alloc(&ids), m.alloc(&groups));
        let (d_dtable, d_dout) = (m.alloc(&start), m.alloc(&dout));
        let launches = vec![
            embedding_forward_launch([d_out, d_table, d_ids], ids.len(), dim),
            embedding_backward_launch([d_dtable, d_dout, d_groups], distinct, dim),
        ];
        for (launches, grid) in geometries(launches, &[X, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                assert_close(&format!("embedding_forward, {grid} ({sanitizer:?})"), &m.read::<f32>(d_out), &out, 0.0);
                // Every id's rows summed in the CPU's order: the same bits.
                let got: Vec<u32> = m.read::<f32>(d_dtable).iter().map(|x| x.to_bits()).collect();
                assert!(got == dtable.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "embedding_backward, {grid} ({sanitizer:?})");
            });
        }
    }

    #[test]
    fn embedding_groups_list_every_id_once_with_its_rows_in_order() {
        // ids by row: 3 1 3 0 1 3
        let groups = embedding_groups(&[3, 1, 3, 0, 1, 3]);
        assert_eq!(groups, (3, [vec![0, 1, 3], vec![0, 1, 3, 6], vec![3, 1, 4, 0, 2, 5]].concat()));
        assert_eq!(embedding_groups(&[]), (0, vec![0]));
    }

    /// f32 → bf16 bits, rounding to nearest even, NaN kept a (quiet) NaN; and back.
    fn bf16(x: f32) -> u16 {
        let u = x.to_bits();
        if x.is_nan() {
            return (u >> 16) as u16 | 0x40;
        }
        ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
    }
    fn from_bf16(b: u16) -> f32 {
        f32::from_bits(u32::from(b) << 16)
    }

    #[test]
    fn to_bf16_rounds_to_nearest_even_and_keeps_nan() {
        // Ties go to the even mantissa (1 + 2⁻⁸ down, 1 + 3·2⁻⁸ up); f32::MAX
        // rounds to infinity; a NaN whose payload sits in the low 16 bits stays a NaN.
        let special = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), f32::MAX, f32::INFINITY, -0.0, f32::from_bits(0x7f80_0001)];
        assert_eq!(special.map(bf16), [0x3f80, 0x3f82, 0x7f80, 0x7f80, 0x8000, 0x7fc0]);
        let mut rng = StdRng::seed_from_u64(21);
        let x: Vec<f32> = special.iter().copied().chain(random(1000, &mut rng).iter().map(|v| v * 1e3)).collect();
        let mut m = Memory::default();
        let (out, d_x) = (m.alloc(&vec![0u16; x.len()]), m.alloc(&x));
        for (launches, grid) in geometries(vec![nn::to_bf16(out, d_x, x.len())], &[X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                let want: Vec<u16> = x.iter().map(|&v| bf16(v)).collect();
                assert_eq!(m.read::<u16>(out), want, "to_bf16, {grid} ({sanitizer:?})");
            });
        }
    }

    #[test]
    fn newton_schulz_cublas_path_kernels_match_their_definitions() {
        let mut rng = StdRng::seed_from_u64(20);
        // 3 matrices of 40,000 values (3 chunks of the norm's partial sums, the
        // last ragged), polynomials 19×19.
        let (batch, len, short) = (3, 40_000, 19);
        assert_eq!(cublas_path::norm_chunks(len), 3);
        let x = random(batch * len, &mut rng);
        let poly = random(batch * short * short, &mut rng);
        let product = random(batch * len, &mut rng);
        let coeffs = NsCoefficients::Keller;
        let a = 3.4445f32;

        // normalize: x / (factor·‖x‖ + eps) per matrix.
        let normalized: Vec<f32> = x
            .chunks(len)
            .flat_map(|m| {
                let norm = m.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32;
                let inv = 1.0 / (coeffs.norm_factor() * norm + crate::linalg::NS_NORM_EPS);
                m.iter().map(move |v| v * inv).collect::<Vec<_>>()
            })
            .collect();
        // β = tr(P)/s and bf16(P − βI).
        let betas: Vec<f32> = poly
            .chunks(short * short)
            .map(|p| ((0..short).map(|i| f64::from(p[i * short + i])).sum::<f64>() / short as f64) as f32)
            .collect();
        let shifted: Vec<u16> = poly
            .iter()
            .enumerate()
            .map(|(e, &v)| bf16(v - if e % (short * short) / short == e % short { betas[e / (short * short)] } else { 0.0 }))
            .collect();
        // x ← (a + β)·x + product, fused.
        let updated: Vec<f32> =
            normalized.iter().zip(&product).enumerate().map(|(i, (&v, &y))| (a + betas[i / len]).mul_add(v, y)).collect();

        let mut m = Memory::default();
        let (d_x, d_xb) = (m.alloc(&x), m.alloc(&vec![0u16; x.len()]));
        let (d_partial, d_scale) = (m.alloc(&vec![f64::NAN; batch * 3]), m.alloc(&poisoned(batch)));
        let (d_poly_bf16, d_shift, d_poly) = (m.alloc(&vec![0u16; poly.len()]), m.alloc(&poisoned(batch)), m.alloc(&poly));
        let launches: Vec<Launch> = cublas_path::normalize([d_x, d_xb, d_partial, d_scale], len, batch, coeffs)
            .into_iter()
            .chain(cublas_path::shifted_polynomial([d_poly_bf16, d_shift, d_poly], short, batch))
            .collect();
        // Scales and shifts grid-stride over matrices, the elementwise kernels over values.
        for (launches, grid) in geometries(launches, &[NONE, X, X, X, X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                assert_close(&format!("normalization, {grid} ({sanitizer:?})"), &m.read::<f32>(d_x), &normalized, 1e-6);
                let xb: Vec<f32> = m.read::<u16>(d_xb).into_iter().map(from_bf16).collect();
                let want: Vec<f32> = m.read::<f32>(d_x).iter().map(|&v| from_bf16(bf16(v))).collect();
                assert_close(&format!("normalization's bf16 copy, {grid} ({sanitizer:?})"), &xb, &want, 0.0);
                assert_close(&format!("shift, {grid} ({sanitizer:?})"), &m.read::<f32>(d_shift), &betas, 1e-6);
                assert_eq!(m.read::<u16>(d_poly_bf16), shifted, "shifted_to_bf16, {grid} ({sanitizer:?})");
            });
        }
        // The update on its own, from the normalized X and these β, over one block per strided axis too.
        let mut m = Memory::default();
        let (d_x, d_xb) = (m.alloc(&normalized), m.alloc(&vec![0u16; x.len()]));
        let (d_product, d_shift) = (m.alloc(&product), m.alloc(&betas));
        let update = cublas_path::update([d_x, d_xb, d_product, d_shift], a, len, batch);
        for (launches, grid) in geometries(vec![update], &[X]) {
            run_under(&Sanitizer::ALL, &launches, &m, |m, sanitizer| {
                assert_close(&format!("newton_schulz_update, {grid} ({sanitizer:?})"), &m.read::<f32>(d_x), &updated, 1e-6);
                let xb: Vec<u16> = m.read(d_xb);
                assert!(xb.iter().zip(&updated).all(|(&b, &v)| b == bf16(v)), "newton_schulz_update bf16 copy, {grid} ({sanitizer:?})");
            });
        }
    }
}
