//! The fused multi-tensor optimizer steps, in GB/s of parameter-state traffic
//! (AdamW reads p, g, m, v and writes p, m, v: 28 bytes per parameter), beside
//! a plain copy of the same length (8 bytes per element) in the same run: the
//! bandwidth the step's target is a fraction of. Also the bias-gradient column
//! sums (4 bytes read per element).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use optlab::backend::{AdamParams, Backend, Cpu};

fn adamw_on<B: Backend>(c: &mut Criterion, b: &B, sync: impl Fn()) {
    let mut group = c.benchmark_group(format!("adamw_step/{}", b.name()));
    for n in [1 << 20, 1 << 24] {
        // GPT-like: a few hundred tensors of mixed sizes in one store.
        let ranges: Vec<_> = (0..n).step_by(n / 256).map(|s| s..(s + n / 256).min(n)).collect();
        let (mut p, g, mut m, mut v) = (b.upload(&common::random(n, 1)), b.upload(&common::random(n, 2)), b.zeros(n), b.zeros(n));
        let hp = AdamParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 10 };
        group.throughput(Throughput::Bytes(28 * n as u64));
        group.bench_function(format!("{n}"), |bench| {
            bench.iter(|| {
                b.adamw_step(&mut p, &g, &mut m, &mut v, &ranges, hp);
                sync();
            })
        });
        group.throughput(Throughput::Bytes(8 * n as u64));
        group.bench_function(format!("copy/{n}"), |bench| {
            bench.iter(|| {
                b.copy(B::all_mut(&mut m), B::all(&g));
                sync();
            })
        });
    }
    group.finish();
    // A GPT bias gradient: 2048 rows (batch × tokens) of 1024 columns.
    let (rows, cols) = (2048, 1024);
    let (x, mut out) = (b.upload(&common::random(rows * cols, 3)), b.zeros(cols));
    let mut group = c.benchmark_group(format!("column_sums/{}", b.name()));
    group.throughput(Throughput::Bytes(4 * (rows * cols) as u64));
    group.bench_function(format!("{rows}x{cols}"), |bench| {
        bench.iter(|| {
            b.accumulate_column_sums(B::all_mut(&mut out), B::all(&x));
            sync();
        })
    });
}

fn adamw(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    adamw_on(c, &Cpu, || ());
    if let Some(g) = common::gpu() {
        adamw_on(c, &g, || g.synchronize().expect("the CUDA work of a benchmark failed"));
    }
}

criterion_group!(benches, adamw);
criterion_main!(benches);
