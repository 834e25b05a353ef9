//! Every CUDA op against the CPU reference: fresh random inputs of several
//! shapes (odd sizes too), outputs poisoned with NaN before the launch, one
//! relative-error bound per op. Without a GPU each test prints why it skipped;
//! OPTLAB_REQUIRE_GPU=1 turns a missing GPU into a failure (the GPU machine's run).

use optlab::backend::cuda::{Cuda, FUNCTIONS};
use optlab::backend::{Activation, AdamParams, Attention, Backend, Cpu, DiagonalRule, Gemm, Precision};
use optlab::linalg::{Epsilon, NsCoefficients};
use optlab::models::{Classifier, FeedForward, Gpt, GptConfig, Mlp, MlpConfig, TransformerConfig, Vit, VitConfig};
use optlab::optim::{MuonConfig, OptimizerConfig, ShampooConfig};
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn gpu(test: &str) -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => Some(c),
        Err(e) if std::env::var_os("OPTLAB_REQUIRE_GPU").is_some() => panic!("{test}: GPU required but unusable: {e:#}"),
        Err(e) => {
            // Straight to stderr: libtest captures print!, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test} (no GPU): {e:#}");
            None
        }
    }
}

/// Runs the same body with `$b` bound to the CPU and then to the GPU backend.
macro_rules! on_both {
    ($gpu:expr, |$b:ident| $body:block) => {{
        let cpu = {
            let $b = &Cpu;
            $body
        };
        let gpu = {
            let $b = $gpu;
            $body
        };
        (cpu, gpu)
    }};
}

fn v<'a, B: Backend>(_: &B, buf: &'a B::Buf) -> B::View<'a> {
    B::all(buf)
}
fn vm<'a, B: Backend>(_: &B, buf: &'a mut B::Buf) -> B::ViewMut<'a> {
    B::all_mut(buf)
}
fn poisoned<B: Backend>(b: &B, n: usize) -> B::Buf {
    b.upload(&vec![f32::NAN; n])
}

fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// max |gpu − cpu| ≤ bound · max(max |cpu|, 1e-6), and nothing left poisoned.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], bound: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    assert!(gpu.iter().all(|x| x.is_finite()), "{what}: non-finite output (poison left or overflow)");
    let scale = cpu.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    let err = gpu.iter().zip(cpu).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / scale;
    assert!(err <= bound, "{what}: relative error {err:.2e} > {bound:.0e}");
}

#[test]
fn every_kernel_in_the_sources_is_loaded() {
    // Runs without a GPU: the Rust list of entry points and the .cu files agree.
    let mut in_sources: Vec<String> = optlab::backend::kernels::KERNELS
        .iter()
        .flat_map(|k| k.cuda.split("extern \"C\" __global__ void ").skip(1))
        // A `__launch_bounds__(…)` may stand before the name.
        .map(|rest| rest.strip_prefix("__launch_bounds__(").map_or(rest, |r| &r[r.find(')').unwrap() + 1..]))
        .map(|rest| rest.split('(').next().unwrap().trim().to_string())
        .collect();
    let mut listed: Vec<String> = FUNCTIONS.iter().flat_map(|(_, names)| names.iter().map(|n| n.to_string())).collect();
    in_sources.sort();
    listed.sort();
    assert_eq!(in_sources, listed);
}

/// Prints why a check that needs a CUDA tool did not run, or fails when CI
/// (`$require` = 1) demands the tool.
fn skip_unless_required(test: &str, require: &str, why: &str) {
    assert!(std::env::var(require).as_deref() != Ok("1"), "{test}: {require}=1 but {why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

#[test]
fn nvrtc_compiles_every_module() {
    // The run-time path of a binary built without nvcc: NVRTC needs no GPU.
    // SAFETY: only checks whether libnvrtc can be loaded.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return skip_unless_required("nvrtc", "OPTLAB_REQUIRE_NVRTC", "no libnvrtc on the library path");
    }
    for k in optlab::backend::kernels::KERNELS {
        let ptx = optlab::backend::cuda::compile_at_run_time(k).unwrap_or_else(|e| panic!("{e:#}")).to_src();
        let (_, names) = FUNCTIONS.iter().find(|(m, _)| *m == k.name).unwrap();
        for name in *names {
            assert!(ptx.contains(&format!(".entry {name}(")), "NVRTC's PTX of kernels/{}.cu has no entry {name}", k.name);
        }
    }
}

/// `ptxas -arch=sm_90 -v` on one module's PTX: per entry function, (registers,
/// static shared bytes, spill bytes stored + loaded).
fn ptxas_resources(ptxas: &str, module: &str, ptx: &str) -> Vec<(String, u64, u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{module}.ptx"));
    std::fs::write(&path, ptx).unwrap();
    let out = std::process::Command::new(ptxas).args(["-arch=sm_90", "-v", "-o", "/dev/null"]).arg(&path).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ptxas failed on kernels/{module}.cu:\n{log}");
    let number_before = |line: &str, unit: &str| -> u64 {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(unit).map(|n| n.trim().rsplit(' ').next().unwrap().parse().unwrap()))
            .unwrap_or(0)
    };
    let (mut found, mut current, mut spills) = (Vec::new(), None, 0);
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = Some(rest.split('\'').next().unwrap().to_string());
        } else if line.contains("spill stores") {
            spills = number_before(line, "bytes spill stores") + number_before(line, "bytes spill loads");
        } else if let (Some(name), true) = (&current, line.contains(" registers")) {
            let registers = line.split("Used ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            found.push((name.clone(), registers, number_before(line, "bytes smem"), spills));
            current = None;
        }
    }
    found
}

#[test]
fn kernels_fit_their_register_and_shared_memory_budgets() {
    let kernels = optlab::backend::kernels::KERNELS;
    if kernels.iter().all(|k| k.ptx.is_none()) {
        return skip_unless_required("ptxas budgets", "OPTLAB_REQUIRE_NVCC", "built without nvcc, so there is no PTX to check");
    }
    let ptxas = env!("OPTLAB_PTXAS");
    assert!(!ptxas.is_empty(), "PTX was built, but no ptxas was found beside that nvcc");
    let budgets: toml::Table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/budgets.toml")).unwrap().parse().unwrap();
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for k in kernels {
        for (name, registers, shared, spills) in ptxas_resources(ptxas, k.name, k.ptx.unwrap()) {
            let budget = |key: &str| budgets.get(&name).and_then(|b| b.get(key)).and_then(|v| v.as_integer()).map(|v| v as u64);
            match budget("registers") {
                None => problems.push(format!("{name}: no budget in kernels/budgets.toml ({registers} registers, {shared} B shared)")),
                Some(max) if registers > max => problems.push(format!("{name}: {registers} registers > budget {max}")),
                Some(_) => {}
            }
            if shared > budget("shared_bytes").unwrap_or(0) {
                problems.push(format!("{name}: {shared} B static shared memory > budget {}", budget("shared_bytes").unwrap_or(0)));
            }
            if spills > 0 {
                problems.push(format!("{name}: {spills} bytes of register spills"));
            }
            seen.push(name);
        }
    }
    problems.extend(budgets.keys().filter(|k| !seen.contains(k)).map(|k| format!("{k}: a budget for a kernel that does not exist")));
    assert!(problems.is_empty(), "sm_90 resource budgets:\n  {}", problems.join("\n  "));
}

#[test]
fn matmul_all_transposes_and_odd_shapes_at_every_precision() {
    // Relative to max |C| with operands in [-1, 1): f32 differs from the CPU by
    // summation order only; TF32 keeps 10 mantissa bits of each operand (a
    // relative error up to 2⁻¹¹ each, ~1e-3 per product) and bf16 8 (2⁻⁹,
    // ~4e-3 per product), and over k products the errors add like a random walk
    // against a sum that grows like √k too, so the bounds are a few times those.
    for (precision, bound) in [(Precision::F32, 1e-5), (Precision::Tf32, 5e-3), (Precision::Bf16, 2e-2)] {
        let Some(g) = gpu("matmul") else { return };
        let g = &g.with_precision(precision);
        let mut rng = StdRng::seed_from_u64(1);
        for (m, k, n) in [(1, 1, 1), (3, 17, 5), (65, 33, 129), (128, 256, 10)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 2.0)] {
                    let (a, bm, c0) = (random(m * k, &mut rng), random(k * n, &mut rng), random(m * n, &mut rng));
                    let (cpu, gpu) = on_both!(g, |b| {
                        let (a, bm) = (b.upload(&a), b.upload(&bm));
                        let mut c = if beta == 0.0 { poisoned(b, m * n) } else { b.upload(&c0) };
                        b.matmul(vm(b, &mut c), v(b, &a), v(b, &bm), Gemm { m, k, n, trans_a: ta, trans_b: tb }, alpha, beta);
                        b.download(v(b, &c)).unwrap()
                    });
                    assert_close(&format!("matmul {precision} {m}x{k}x{n} ta={ta} tb={tb} beta={beta}"), &gpu, &cpu, bound);
                }
            }
        }
    }
}

#[test]
fn elementwise_and_bias_ops() {
    let Some(g) = gpu("elementwise") else { return };
    let mut rng = StdRng::seed_from_u64(2);
    for (rows, cols) in [(1, 1), (7, 13), (129, 257)] {
        let n = rows * cols;
        let (x, y0, bias) = (random(n, &mut rng), random(n, &mut rng), random(cols, &mut rng));
        for kind in Activation::ALL {
            // The GLU takes x as its gate, y0 as its up projection and bias (tiled) as dout.
            let dout: Vec<f32> = bias.iter().copied().cycle().take(n).collect();
            let (cpu, gpu) = on_both!(&g, |b| {
                let (xb, dy, doutb) = (b.upload(&x), b.upload(&y0), b.upload(&dout));
                let [mut y, mut dx, mut glu, mut dgate, mut dup] = std::array::from_fn(|_| poisoned(b, n));
                b.activation_forward(kind, vm(b, &mut y), v(b, &xb));
                b.activation_backward(kind, vm(b, &mut dx), v(b, &dy), v(b, &xb));
                b.glu_forward(kind, vm(b, &mut glu), v(b, &xb), v(b, &dy));
                b.glu_backward(kind, vm(b, &mut dgate), vm(b, &mut dup), v(b, &doutb), v(b, &xb), v(b, &dy));
                [y, dx, glu, dgate, dup].map(|o| b.download(v(b, &o)).unwrap()).concat()
            });
            assert_close(&format!("activation {kind:?} {rows}x{cols}"), &gpu, &cpu, 1e-5);
        }
        let (cpu, gpu) = on_both!(&g, |b| {
            let (xb, biasb) = (b.upload(&x), b.upload(&bias));
            let mut y = b.upload(&y0);
            b.add_bias_rows(vm(b, &mut y), v(b, &biasb));
            let mut sums = b.upload(&bias);
            b.accumulate_column_sums(vm(b, &mut sums), v(b, &xb));
            let mut z = b.upload(&y0);
            b.axpby(vm(b, &mut z), 0.3, v(b, &xb), -1.5);
            b.scale(vm(b, &mut z), 2.0);
            let mut f = poisoned(b, n);
            b.fill(vm(b, &mut f), 0.25);
            let mut c = poisoned(b, n);
            b.copy(vm(b, &mut c), v(b, &xb));
            let mut e = b.upload(&y0);
            b.ema_square(vm(b, &mut e), v(b, &xb), 0.9);
            [
                b.download(v(b, &y)).unwrap(),
                b.download(v(b, &sums)).unwrap(),
                b.download(v(b, &z)).unwrap(),
                b.download(v(b, &f)).unwrap(),
                b.download(v(b, &c)).unwrap(),
                b.download(v(b, &e)).unwrap(),
            ]
            .concat()
        });
        assert_close(&format!("bias/axpby/fill/copy/ema {rows}x{cols}"), &gpu, &cpu, 1e-5);
    }
}

#[test]
fn softmax_cross_entropy_and_reductions() {
    let Some(g) = gpu("softmax_cross_entropy") else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, classes) in [(1, 2), (7, 10), (33, 37), (128, 257)] {
        let logits: Vec<f32> = random(rows * classes, &mut rng).into_iter().map(|z| 4.0 * z).collect();
        let labels: Vec<u8> = (0..rows).map(|_| rng.random_range(0..classes.min(256)) as u8).collect();
        let (cpu, gpu) = on_both!(&g, |b| {
            let z = b.upload(&logits);
            let mut d = poisoned(b, rows * classes);
            let out = b.softmax_cross_entropy(vm(b, &mut d), v(b, &z), &labels, classes).unwrap();
            (out.loss, out.correct, b.download(v(b, &d)).unwrap())
        });
        assert!((cpu.0 - gpu.0).abs() <= 1e-5 * cpu.0.abs().max(1.0), "loss {} vs {}", gpu.0, cpu.0);
        assert_eq!(cpu.1, gpu.1, "correct count");
        assert_close(&format!("dlogits {rows}x{classes}"), &gpu.2, &cpu.2, 1e-5);
    }
    for n in [1, 1000, 1 << 20] {
        let (a, bv) = (random(n, &mut rng), random(n, &mut rng));
        let (cpu, gpu) = on_both!(&g, |b| {
            let (ab, bb) = (b.upload(&a), b.upload(&bv));
            let sums = (
                b.sum_squares(v(b, &ab)).unwrap(),
                b.sum_squared_difference(v(b, &ab), v(b, &bb)).unwrap(),
                b.all_finite(v(b, &ab)).unwrap(),
            );
            (sums.0, sums.1, sums.2, b.dot(v(b, &ab), v(b, &bb)).unwrap())
        });
        assert!((cpu.0 - gpu.0).abs() <= 1e-9 * cpu.0, "sum_squares n={n}");
        assert!((cpu.1 - gpu.1).abs() <= 1e-9 * cpu.1, "sum_squared_difference n={n}");
        assert!((cpu.3 - gpu.3).abs() <= 1e-9 * cpu.0, "dot n={n}");
        assert!(cpu.2 && gpu.2);
        let mut bad = a.clone();
        bad[n / 2] = f32::INFINITY;
        assert!(!g.all_finite(v(&g, &g.upload(&bad))).unwrap(), "all_finite misses an Inf (n={n})");
    }
}

#[test]
fn fused_optimizer_steps_over_range_lists() {
    let Some(g) = gpu("optimizer steps") else { return };
    let mut rng = StdRng::seed_from_u64(4);
    let n = 5000;
    // Unsorted-looking but disjoint ranges, odd lengths, some parameters untouched.
    let ranges = vec![0..1, 7..400, 401..402, 1000..4999];
    let (p0, grad, m0, v0): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) =
        (random(n, &mut rng), random(n, &mut rng), random(n, &mut rng), random(n, &mut rng).into_iter().map(f32::abs).collect());
    let hp = AdamParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 3 };
    let (cpu, gpu) = on_both!(&g, |b| {
        let gb = b.upload(&grad);
        let (mut p, mut m, mut vv) = (b.upload(&p0), b.upload(&m0), b.upload(&v0));
        b.adamw_step(&mut p, &gb, &mut m, &mut vv, &ranges, hp);
        let (mut p2, mut buf) = (b.upload(&p0), b.upload(&m0));
        b.sgd_step(&mut p2, &gb, &mut buf, &ranges, 0.1, 0.9, true, 0.01);
        let (mut p3, mut m3) = (b.upload(&p0), b.upload(&m0));
        b.lion_step(&mut p3, &gb, &mut m3, &ranges, 1e-3, 0.9, 0.99, 0.1);
        let mut dir = poisoned(b, n);
        b.adam_direction(vm(b, &mut dir), v(b, &m), v(b, &vv), 0.3, 0.01, 1e-8);
        let mut out = [&p, &m, &vv, &p2, &buf, &p3, &m3, &dir].map(|x| b.download(v(b, x)).unwrap()).concat();
        // Every per-coordinate rule, with each option on, from non-trivial state.
        let rules = [
            DiagonalRule::Adagrad { lr: 0.1, eps: 1e-10, weight_decay: 0.01 },
            DiagonalRule::RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-8, weight_decay: 0.01, momentum: 0.9, centered: true },
            DiagonalRule::Adadelta { lr: 1.0, rho: 0.9, eps: 1e-6, weight_decay: 0.01 },
            DiagonalRule::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                amsgrad: true,
                bias1: 0.27,
                bias2: 0.003,
            },
        ];
        for rule in rules {
            let (mut p, mut s0, mut s1) = (b.upload(&p0), b.upload(&v0), b.upload(&v0));
            // A centered RMSProp needs E[g]² < E[g²]: a small grad_avg.
            let mut s2 = b.upload(&m0.iter().map(|x| 0.01 * x).collect::<Vec<_>>());
            b.diagonal_step(&mut p, &gb, [&mut s0, &mut s1, &mut s2], &ranges, rule);
            out.extend([&p, &s0, &s1, &s2].map(|x| b.download(v(b, x)).unwrap()).concat());
        }
        out
    });
    assert_close("adamw/sgd/lion/adam_direction/diagonal rules", &gpu, &cpu, 1e-5);
}

#[test]
fn batched_newton_schulz() {
    let Some(g) = gpu("newton_schulz") else { return };
    let mut rng = StdRng::seed_from_u64(5);
    // (rows, cols, batch). One launch: tiny and odd, wide and tall, the model shapes,
    // a short side of exactly 128 (300×128 fills most of the shared memory). cuBLAS:
    // short sides past 128, and 128×512, too large for the shared memory.
    let shapes = [
        (5, 7, 2),
        (7, 5, 1),
        (9, 13, 3),
        (33, 65, 2),
        (100, 37, 3),
        (64, 64, 1),
        (16, 64, 3),
        (64, 256, 2),
        (256, 64, 2),
        (128, 128, 1),
        (300, 128, 1),
        (130, 300, 3),
        (300, 129, 1),
        (128, 512, 2),
    ];
    // Which shapes fit depends on the device's shared memory; both paths must run.
    let one_launch: Vec<bool> = shapes.iter().map(|&(rows, cols, _)| g.newton_schulz_in_one_launch(rows, cols)).collect();
    assert!(one_launch.contains(&true) && one_launch.contains(&false), "one path unexercised: {one_launch:?}");
    for (rows, cols, batch) in shapes {
        let len = rows * cols;
        // Gaps before and between the matrices, in reverse order: only the ranges are read and written.
        let input = random(5 + batch * (len + 3), &mut rng);
        let ranges: Vec<_> = (0..batch).rev().map(|i| 5 + i * (len + 3)..5 + i * (len + 3) + len).collect();
        // Bounds relative to max |X|: the normalisation alone is f32; one step adds the
        // bf16 rounding of X (≤ 7e-3 in a CPU emulation of the scheme); five steps
        // amplify it, the more the fewer the singular values (≤ 2.5e-2 from a short
        // side of 16 on, but up to 0.17 for 5×7), so tiny matrices stop at one step.
        let checks: &[(usize, f32)] = if rows.min(cols) < 16 { &[(0, 1e-6), (1, 1.5e-2)] } else { &[(0, 1e-6), (1, 1.5e-2), (5, 5e-2)] };
        let path = if g.newton_schulz_in_one_launch(rows, cols) { "one launch" } else { "cuBLAS" };
        for coeffs in [NsCoefficients::Keller, NsCoefficients::PolarExpress] {
            for &(steps, bound) in checks {
                let (cpu, gpu) = on_both!(&g, |b| {
                    let inp = b.upload(&input);
                    let mut out = poisoned(b, input.len());
                    b.newton_schulz_batched(&mut out, &inp, &ranges, rows, cols, steps, coeffs);
                    b.download(v(b, &out)).unwrap()
                });
                let what = format!("newton_schulz {batch}x{rows}x{cols} ({path}) {coeffs:?} {steps} steps");
                let untouched = (0..input.len()).filter(|i| !ranges.iter().any(|r| r.contains(i))).all(|i| gpu[i].is_nan());
                assert!(untouched, "{what}: wrote outside its ranges");
                let inside = |out: &[f32]| ranges.iter().flat_map(|r| out[r.clone()].to_vec()).collect::<Vec<_>>();
                assert_close(&what, &inside(&gpu), &inside(&cpu), bound);
            }
        }
    }
}

#[test]
fn inverse_roots_and_diagonal_statistics() {
    let Some(g) = gpu("inverse_root") else { return };
    let mut rng = StdRng::seed_from_u64(6);
    // G·Gᵀ/k (+ shift·I) for each of `count` statistics of n×n.
    let mut statistics = |n: usize, k: usize, count: usize, shift: f32| -> Vec<Vec<f32>> {
        (0..count)
            .map(|_| {
                let gm = random(n * k, &mut rng);
                let mut a = vec![0.0; n * n];
                optlab::linalg::matmul(&mut a, &gm, &gm, n, k, n, false, true, 1.0 / k as f32, 0.0);
                (0..n).for_each(|i| a[i * n + i] += shift);
                a
            })
            .collect()
    };
    // Well-conditioned batches (k = 2n, + I/10) must converge on the device, to
    // 1e-3 of the CPU's f64 root's largest entry. Rank-deficient ones (k < n:
    // Shampoo's statistics early in training) may fall back to the CPU (counted).
    // Their bound is f32's: the coupled iteration's error grows with the damped
    // statistic's condition number, here 1/ε_rel. An f32 model of this iteration
    // (power iteration, scaling, stopping rule) was off by 8e-5 and 5e-4 at
    // ε_rel = 1e-4 and by 8e-3 at Shampoo's default 1e-6.
    let default_eps = ShampooConfig::default().epsilon;
    let well = Epsilon { absolute: 1e-6, relative: 1e-6 };
    let cases = [
        (1, 2, 1, 0.1, well, true, 1e-3),
        (5, 10, 3, 0.1, well, true, 1e-3),
        (64, 128, 4, 0.1, well, true, 1e-3),
        (256, 512, 2, 0.1, well, true, 1e-3),
        (64, 16, 4, 0.0, Epsilon { absolute: 1e-12, relative: 1e-4 }, false, 2e-3),
        (256, 32, 3, 0.0, Epsilon { absolute: 1e-12, relative: 1e-4 }, false, 2e-3),
        (64, 16, 4, 0.0, default_eps, false, 3e-2),
    ];
    for (n, k, count, shift, eps, must_converge, bound) in cases {
        let stats = statistics(n, k, count, shift);
        let fallbacks = g.root_fallbacks();
        let (cpu, gpu) = on_both!(&g, |b| {
            let uploaded: Vec<_> = stats.iter().map(|a| b.upload(a)).collect();
            let mut roots: Vec<_> = (0..count).map(|_| poisoned(b, n * n)).collect();
            let computed =
                b.inverse_roots(roots.iter_mut().map(|r| vm(b, r)).collect(), uploaded.iter().map(|a| v(b, a)).collect(), n, 4, eps);
            assert!(computed.unwrap().iter().all(|&c| c), "a root of every statistic");
            roots.iter().map(|r| b.download(v(b, r)).unwrap()).collect::<Vec<_>>()
        });
        let fell_back = g.root_fallbacks() - fallbacks;
        eprintln!("inverse 4th roots of {count} statistics {n}×{n} of rank ≤ {k}, {eps:?}: {fell_back} CPU fallbacks");
        assert!(!must_converge || fell_back == 0, "{n}×{n}, rank {k}: {fell_back} of {count} roots did not converge on the device");
        for (i, (gpu, cpu)) in gpu.iter().zip(&cpu).enumerate() {
            assert_close(&format!("inverse 4th root {i} of {count}, n={n}, rank ≤ {k}, {eps:?}"), gpu, cpu, bound);
        }
    }
    for (rows, cols) in [(1, 1), (7, 13), (300, 17)] {
        let x = random(rows * cols, &mut rng);
        let (cpu, gpu) = on_both!(&g, |b| {
            let xb = b.upload(&x);
            let mut rs = b.upload(&vec![0.5; rows]);
            let mut cs = b.upload(&vec![0.5; cols]);
            b.ema_square_sums(vm(b, &mut rs), v(b, &xb), rows, cols, true, 0.9, 0.1);
            b.ema_square_sums(vm(b, &mut cs), v(b, &xb), rows, cols, false, 1.0, 1.0);
            let mut y = b.upload(&x);
            b.scale_by_diagonal_root(vm(b, &mut y), v(b, &rs), rows, cols, true, 4, 1e-12);
            b.scale_by_diagonal_root(vm(b, &mut y), v(b, &cs), rows, cols, false, 4, 1e-12);
            [b.download(v(b, &rs)).unwrap(), b.download(v(b, &cs)).unwrap(), b.download(v(b, &y)).unwrap()].concat()
        });
        assert_close(&format!("diagonal statistics {rows}x{cols}"), &gpu, &cpu, 1e-5);
    }
}

#[test]
fn eigenbases_and_kept_bases_on_failure() {
    let Some(g) = gpu("sym_eigenvectors") else { return };
    let mut rng = StdRng::seed_from_u64(13);
    for n in [1, 5, 64] {
        let gm = random(n * 2 * n, &mut rng);
        let mut a = vec![0.0; n * n];
        optlab::linalg::matmul(&mut a, &gm, &gm, n, 2 * n, n, false, true, 1.0, 0.0);
        // The GPU decomposes on the host too: the same input gives the same signs.
        let (cpu, gpu) = on_both!(&g, |b| {
            let ab = b.upload(&a);
            let mut out = poisoned(b, n * n);
            assert!(b.sym_eigenvectors(vm(b, &mut out), v(b, &ab), n).unwrap());
            b.download(v(b, &out)).unwrap()
        });
        assert_close(&format!("eigenbasis n={n}"), &gpu, &cpu, 1e-6);
    }
    let (cpu, gpu) = on_both!(&g, |b| {
        let bad = b.upload(&[1.0, f32::NAN, 0.0, 1.0]);
        let mut out = b.upload(&[0.5; 4]);
        assert!(!b.sym_eigenvectors(vm(b, &mut out), v(b, &bad), 2).unwrap(), "no basis of a non-finite statistic");
        b.download(v(b, &out)).unwrap()
    });
    assert_eq!((cpu, gpu), (vec![0.5; 4], vec![0.5; 4]), "a failed decomposition must leave the old basis");
}

#[test]
fn mlp_training_steps_agree_across_backends() {
    let Some(g) = gpu("mlp training") else { return };
    let mut rng = StdRng::seed_from_u64(7);
    let config = MlpConfig { input: 784, hidden: vec![256, 256], classes: 10, activation: Activation::Relu };
    let (x, labels) = (random(64 * 784, &mut rng), (0..64).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let shampoo = ShampooConfig { precondition_frequency: 2, ..Default::default() };
    for opt in [
        OptimizerConfig::by_name("sgd").unwrap(),
        OptimizerConfig::by_name("adamw").unwrap(),
        OptimizerConfig::Muon(MuonConfig::default()),
        OptimizerConfig::Shampoo(shampoo),
        // K-FAC reads the layer taps; GDA2 mixes over the whole store; PSGD-Kron fits on the host.
        OptimizerConfig::by_name("kfac").unwrap(),
        OptimizerConfig::by_name("gda2").unwrap(),
        OptimizerConfig::by_name("psgd-kron").unwrap(),
    ] {
        let (cpu, gpu) = on_both!(&g, |b| {
            let mut model = Mlp::new(b, config.clone(), 3);
            let mut o = opt.build(b, &mut model.store);
            let mut losses = Vec::new();
            for _ in 0..5 {
                losses.push(model.loss_and_gradients(b, &x, &labels).unwrap().loss);
                o.step(b, &mut model.store, 1.0, None).unwrap();
            }
            (losses, b.download(v(b, &model.store.values)).unwrap())
        });
        // Muon's Newton-Schulz multiplies in bf16 on the GPU: a CPU emulation of that
        // moved these parameters by 1.9e-2 of max |p| from the f32 run (losses: 4e-6).
        let parameter_bound = if matches!(opt, OptimizerConfig::Muon(_)) { 5e-2 } else { 1e-3 };
        assert_close(&format!("{} losses", opt.name()), &gpu.0, &cpu.0, 1e-4);
        assert_close(&format!("{} parameters after 5 steps", opt.name()), &gpu.1, &cpu.1, parameter_bound);
    }
}

#[test]
fn transformer_training_steps_agree_across_backends() {
    let Some(g) = gpu("transformer training") else { return };
    let mut rng = StdRng::seed_from_u64(12);
    // A colour ViT with 16-wide heads and a GPT with 32-wide heads, causal.
    let vit = VitConfig {
        image: 8,
        channels: 3,
        patch: 4,
        classes: 10,
        body: TransformerConfig { dim: 32, depth: 2, heads: 2, mlp_ratio: 4, ..Default::default() },
    };
    let gpt =
        // SwiGLU and a tied head here, GELU in the ViT: both feed-forwards run on the device.
        GptConfig { vocab: 256, seq: 40, body: TransformerConfig { dim: 64, depth: 2, heads: 2, mlp_ratio: 4, feed_forward: FeedForward::Swiglu, ..Default::default() }, tie_embeddings: true };
    let (x, labels) = (random(16 * vit.image_values(), &mut rng), (0..16).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let ids: Vec<u32> = (0..3 * 40).map(|_| rng.random_range(0..256)).collect();
    let targets: Vec<u32> = (0..3 * 40).map(|_| rng.random_range(0..256)).collect();
    // Muon's Newton-Schulz reads bf16 operands on the GPU: its parameters agree less closely.
    for (opt, bound) in [(OptimizerConfig::by_name("adamw").unwrap(), 1e-3), (OptimizerConfig::Muon(MuonConfig::default()), 5e-2)] {
        let run = TrainingRun { vit: &vit, gpt: &gpt, x: &x, labels: &labels, ids: &ids, targets: &targets, opt: &opt };
        let (cpu, gpu) = (run.on(&Cpu), run.on(&g));
        assert_close(&format!("{} ViT and GPT losses", opt.name()), &gpu.0, &cpu.0, 1e-3);
        assert_close(&format!("{} ViT parameters after 3 steps", opt.name()), &gpu.1, &cpu.1, bound);
        assert_close(&format!("{} GPT parameters after 3 steps", opt.name()), &gpu.2, &cpu.2, bound);
    }
    // Every sum on the GPU has a fixed order (no atomics; cuBLAS's default is
    // deterministic): at the default tf32, with tensor-core attention, two runs
    // give the same bits.
    let g = g.with_precision(Precision::Tf32);
    let opt = OptimizerConfig::by_name("adamw").unwrap();
    let run = TrainingRun { vit: &vit, gpt: &gpt, x: &x, labels: &labels, ids: &ids, targets: &targets, opt: &opt };
    let bits =
        |(losses, vit, gpt): (Vec<f32>, Vec<f32>, Vec<f32>)| [losses, vit, gpt].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(run.on(&g)) == bits(run.on(&g)), "two tf32 GPU runs of the ViT and GPT steps differ");
}

/// Three training steps of a ViT and a GPT from the same seeds.
struct TrainingRun<'a> {
    vit: &'a VitConfig,
    gpt: &'a GptConfig,
    x: &'a [f32],
    labels: &'a [u8],
    ids: &'a [u32],
    targets: &'a [u32],
    opt: &'a OptimizerConfig,
}

impl TrainingRun<'_> {
    /// (losses, ViT parameters, GPT parameters) after three steps of each on `b`.
    fn on<B: Backend>(&self, b: &B) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut v_model, mut g_model) = (Vit::new(b, self.vit.clone(), 3), Gpt::new(b, self.gpt.clone(), 4));
        let (mut v_opt, mut g_opt) = (self.opt.build(b, &mut v_model.store), self.opt.build(b, &mut g_model.store));
        let mut losses = Vec::new();
        for _ in 0..3 {
            losses.push(v_model.loss_and_gradients(b, self.x, self.labels).unwrap().loss);
            v_opt.step(b, &mut v_model.store, 1.0, None).unwrap();
            losses.push(g_model.loss_and_gradients(b, self.ids, self.targets, 3).unwrap().loss);
            g_opt.step(b, &mut g_model.store, 1.0, None).unwrap();
        }
        (losses, b.download(v(b, &v_model.store.values)).unwrap(), b.download(v(b, &g_model.store.values)).unwrap())
    }
}

#[test]
fn layernorm_forward_and_backward() {
    let Some(g) = gpu("layernorm") else { return };
    let mut rng = StdRng::seed_from_u64(8);
    for (rows, dim) in [(1, 1), (5, 1), (3, 7), (64, 128), (33, 257), (300, 768)] {
        let n = rows * dim;
        // Rows with an offset and spread, so mean and rstd matter.
        let x: Vec<f32> = random(n, &mut rng).into_iter().enumerate().map(|(i, z)| 3.0 * z + (i / dim) as f32 * 0.1 - 1.0).collect();
        let (dy, gamma, beta) = (random(n, &mut rng), random(dim, &mut rng), random(dim, &mut rng));
        let (dgamma0, dbeta0) = (random(dim, &mut rng), random(dim, &mut rng));
        let (cpu, gpu) = on_both!(&g, |b| {
            let (xb, dyb, gb, bb) = (b.upload(&x), b.upload(&dy), b.upload(&gamma), b.upload(&beta));
            let (mut y, mut mean, mut rstd, mut dx) = (poisoned(b, n), poisoned(b, rows), poisoned(b, rows), poisoned(b, n));
            b.layernorm_forward(vm(b, &mut y), vm(b, &mut mean), vm(b, &mut rstd), v(b, &xb), v(b, &gb), v(b, &bb), 1e-5);
            // dgamma and dbeta accumulate onto what is there.
            let (mut dgamma, mut dbeta) = (b.upload(&dgamma0), b.upload(&dbeta0));
            b.layernorm_backward(
                vm(b, &mut dx),
                vm(b, &mut dgamma),
                vm(b, &mut dbeta),
                v(b, &dyb),
                v(b, &xb),
                v(b, &mean),
                v(b, &rstd),
                v(b, &gb),
            );
            [&y, &mean, &rstd, &dx, &dgamma, &dbeta].map(|t| b.download(v(b, t)).unwrap())
        });
        for (k, (what, bound)) in
            [("y", 1e-5), ("mean", 1e-6), ("rstd", 1e-6), ("dx", 1e-4), ("dgamma", 1e-4), ("dbeta", 1e-4)].into_iter().enumerate()
        {
            assert_close(&format!("layernorm {what} {rows}x{dim}"), &gpu[k], &cpu[k], bound);
        }
    }
}

#[test]
fn embedding_gather_and_scatter_add() {
    let Some(g) = gpu("embedding") else { return };
    let mut rng = StdRng::seed_from_u64(9);
    for (vocab, dim, count) in [(1, 1, 3), (10, 7, 50), (300, 128, 1000), (5, 768, 64)] {
        // More ids than rows: repeats are certain.
        let ids: Vec<u32> = (0..count).map(|_| rng.random_range(0..vocab) as u32).collect();
        let (table, dout) = (random(vocab * dim, &mut rng), random(count * dim, &mut rng));
        let (cpu, gpu) = on_both!(&g, |b| {
            let (tb, db) = (b.upload(&table), b.upload(&dout));
            let mut out = poisoned(b, count * dim);
            b.embedding_forward(vm(b, &mut out), v(b, &tb), &ids, dim);
            let mut dtable = b.upload(&table);
            b.embedding_backward(vm(b, &mut dtable), v(b, &db), &ids, dim);
            (b.download(v(b, &out)).unwrap(), b.download(v(b, &dtable)).unwrap())
        });
        assert_close(&format!("embedding forward {vocab}x{dim}, {count} ids"), &gpu.0, &cpu.0, 0.0);
        // Every id's rows summed in the CPU's order, without atomics: the same bits.
        assert!(gpu.1.iter().zip(&cpu.1).all(|(g, c)| g.to_bits() == c.to_bits()), "embedding backward {vocab}x{dim}, {count} ids");
    }
}

/// The q, k and v column blocks of a (batch·seq)×(3·width) matrix.
fn split_qkv(m: &[f32], width: usize) -> [Vec<f32>; 3] {
    std::array::from_fn(|part| m.chunks_exact(3 * width).flat_map(|row| &row[part * width..][..width]).copied().collect())
}

/// (out, lse, dqkv) of attention forward then backward on `b`, outputs poisoned.
fn attention_pass<B: Backend>(b: &B, qkv: &[f32], dout: &[f32], s: Attention) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qb, db) = (b.upload(qkv), b.upload(dout));
    let (mut out, mut lse) = (poisoned(b, dout.len()), poisoned(b, s.batch * s.heads * s.seq));
    b.attention_forward(vm(b, &mut out), vm(b, &mut lse), v(b, &qb), s);
    let mut dqkv = poisoned(b, qkv.len());
    b.attention_backward(vm(b, &mut dqkv), v(b, &db), v(b, &qb), v(b, &out), v(b, &lse), s);
    (b.download(v(b, &out)).unwrap(), b.download(v(b, &lse)).unwrap(), b.download(v(b, &dqkv)).unwrap())
}

#[test]
fn fused_attention_forward_and_backward() {
    let Some(g) = gpu("attention") else { return };
    let mut rng = StdRng::seed_from_u64(10);
    // (batch, seq, heads, head_dim): every supported head dim with seq 1, odd
    // lengths (ViT: 50, 65), tile edges (16, 17, 32, 33) and GPT's 256.
    let shapes = [
        (1, 1, 1, 16),
        (4, 17, 4, 16),
        (1, 65, 2, 16),
        (1, 1, 1, 32),
        (2, 17, 3, 32),
        (2, 50, 2, 32),
        (1, 256, 2, 32),
        (1, 1, 2, 64),
        (3, 16, 2, 64),
        (2, 33, 1, 64),
        (2, 65, 3, 64),
        (2, 256, 2, 64),
        (1, 1, 1, 128),
        (1, 17, 2, 128),
        (2, 50, 2, 128),
        (1, 65, 1, 128),
        (1, 256, 2, 128),
    ];
    for (batch, seq, heads, head_dim) in shapes {
        for causal in [false, true] {
            let s = Attention { batch, seq, heads, head_dim, causal };
            let rows = batch * seq;
            // Spread 3 makes the softmax peaked (scores of std ~3), so the running max matters.
            let qkv: Vec<f32> = random(rows * s.qkv_width(), &mut rng).into_iter().map(|z| 3.0 * z).collect();
            let dout = random(rows * s.width(), &mut rng);
            let (cpu, gpu) = (attention_pass(&Cpu, &qkv, &dout, s), attention_pass(&g, &qkv, &dout, s));
            let what = format!("batch {batch} seq {seq} heads {heads} head_dim {head_dim} causal {causal}");
            assert_close(&format!("attention out, {what}"), &gpu.0, &cpu.0, 1e-4);
            // lse is a log: its error is a relative error of the probabilities, so
            // the bound is absolute (scaled only when |lse| > 1).
            let lse_scale = cpu.1.iter().fold(1.0f32, |m, x| m.max(x.abs()));
            let lse_err = gpu.1.iter().zip(&cpu.1).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / lse_scale;
            assert!(gpu.1.iter().all(|x| x.is_finite()) && lse_err <= 1e-5, "attention lse, {what}: error {lse_err:.2e} > 1e-5");
            // dQ and dK are relative to the largest gradient entry of all three: with
            // seq 1 they are exactly 0 in theory, rounding noise of either backend.
            assert!(gpu.2.iter().all(|x| x.is_finite()), "attention dqkv, {what}: non-finite output (poison left or overflow)");
            let scale = cpu.2.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let (gq, cq) = (split_qkv(&gpu.2, s.width()), split_qkv(&cpu.2, s.width()));
            for (k, part) in ["dq", "dk", "dv"].into_iter().enumerate() {
                let err = gq[k].iter().zip(&cq[k]).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / scale;
                assert!(err <= 1e-4, "attention {part}, {what}: error {err:.2e} relative to max |dqkv| > 1e-4");
            }
        }
    }
    // No atomics: the backward gives the same bits on every run.
    let s = Attention { batch: 2, seq: 256, heads: 2, head_dim: 64, causal: true };
    let (qkv, dout) = (g.upload(&random(2 * 256 * s.qkv_width(), &mut rng)), g.upload(&random(2 * 256 * s.width(), &mut rng)));
    let (mut out, mut lse) = (g.zeros(2 * 256 * s.width()), g.zeros(2 * 2 * 256));
    g.attention_forward(vm(&g, &mut out), vm(&g, &mut lse), v(&g, &qkv), s);
    let gradient_bits = || {
        let mut dqkv = poisoned(&g, 2 * 256 * s.qkv_width());
        g.attention_backward(vm(&g, &mut dqkv), v(&g, &dout), v(&g, &qkv), v(&g, &out), v(&g, &lse), s);
        g.download(v(&g, &dqkv)).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
    };
    assert!(gradient_bits() == gradient_bits(), "attention backward is not bit-reproducible");
    // Head dims without a kernel are refused on the host, naming the supported ones.
    let s = Attention { batch: 1, seq: 4, heads: 1, head_dim: 48, causal: false };
    let qkv = g.upload(&random(4 * s.qkv_width(), &mut rng));
    let (mut out, mut lse) = (g.zeros(4 * s.width()), g.zeros(4));
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.attention_forward(vm(&g, &mut out), vm(&g, &mut lse), v(&g, &qkv), s);
    }))
    .expect_err("head_dim 48 must be refused");
    let msg = err.downcast_ref::<String>().map(String::as_str).unwrap_or("");
    assert!(msg.contains("16, 32, 64, 128"), "unhelpful message for head_dim 48: {msg:?}");
}

#[test]
fn tensor_core_attention_at_tf32_and_bf16() {
    // Operands with 11 (tf32) or 8 (bf16) significant bits, relative to
    // max(|want|, 1): twice the bounds of the emulated test
    // (src/backend/cuda/emulator.rs), which sums each product exactly where the
    // tensor cores' order and internal precision are unspecified.
    for (precision, bound) in [(Precision::Tf32, 4e-3), (Precision::Bf16, 3e-2)] {
        let Some(g) = gpu("tensor-core attention") else { return };
        let g = &g.with_precision(precision);
        let mut rng = StdRng::seed_from_u64(11);
        for (batch, seq, heads, head_dim) in
            [(1, 1, 1, 16), (4, 17, 4, 16), (2, 65, 3, 32), (2, 130, 2, 64), (2, 256, 2, 64), (1, 200, 2, 128)]
        {
            for causal in [false, true] {
                let s = Attention { batch, seq, heads, head_dim, causal };
                let rows = batch * seq;
                let qkv: Vec<f32> = random(rows * s.qkv_width(), &mut rng).into_iter().map(|z| 2.0 * z).collect();
                let dout = random(rows * s.width(), &mut rng);
                let (cpu, gpu) = (attention_pass(&Cpu, &qkv, &dout, s), attention_pass(g, &qkv, &dout, s));
                let what = format!("{precision} attention, batch {batch} seq {seq} heads {heads} head_dim {head_dim} causal {causal}");
                for (part, got, want) in [("out", &gpu.0, &cpu.0), ("lse", &gpu.1, &cpu.1), ("dqkv", &gpu.2, &cpu.2)] {
                    assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite {part}");
                    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                    let err = got.iter().zip(want).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max) / scale;
                    assert!(err <= bound, "{what}: {part} error {err:.2e} > {bound:.0e}");
                }
            }
        }
    }
}

#[test]
fn device_failures_are_errors_naming_the_op_and_the_backend_recovers() {
    let Some(g) = gpu("device failures") else { return };
    // Out of memory: 2⁴⁰ floats (4 TiB) cannot be allocated on any GPU made today.
    let huge = g.zeros(1 << 40);
    let small = g.upload(&[1.0, 2.0]);
    let e = g.sum_squares(Cuda::all(&small)).unwrap_err().to_string();
    assert!(e.contains("allocation of 1099511627776 floats"), "{e}");
    drop(huge);
    assert_eq!(g.download(Cuda::all(&small)).unwrap(), [1.0, 2.0], "the error is handed out once; the backend works on");
    // An attention shape without a compiled kernel is an error naming the shape, not a panic.
    let s = Attention { batch: 1, seq: 3, heads: 1, head_dim: 48, causal: false };
    let (qkv, mut out, mut lse) = (g.upload(&vec![0.1; 3 * s.qkv_width()]), g.zeros(3 * s.width()), g.zeros(3));
    g.attention_forward(Cuda::all_mut(&mut out), Cuda::all_mut(&mut lse), Cuda::all(&qkv), s);
    let e = g.download(Cuda::all(&out)).unwrap_err().to_string();
    assert!(e.contains("head_dim 16, 32, 64, 128 only, not 48"), "{e}");
    // Zero-size work launches nothing and fails nothing.
    let mut empty = g.zeros(0);
    g.fill(Cuda::all_mut(&mut empty), 1.0);
    assert!(g.download(Cuda::all(&empty)).unwrap().is_empty());
    assert_eq!(g.sum_squares(Cuda::all(&empty)).unwrap(), 0.0);
}
