//! Batched Newton-Schulz (5 quintic steps) at ViT/GPT shapes; throughput counts
//! FLOPs as elements (criterion prints them as elem/s).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use optlab::backend::{Backend, Cpu};
use optlab::linalg::NsCoefficients;

/// FLOPs of 5 steps on a batch of rows×cols matrices (s = short side, l = long):
/// per step X·Xᵀ (2s²l), the polynomial (2s³), and poly·X (2s²l).
fn flops(batch: usize, rows: usize, cols: usize) -> u64 {
    let (s, l) = (rows.min(cols) as u64, rows.max(cols) as u64);
    5 * batch as u64 * (4 * s * s * l + 2 * s * s * s)
}

fn ns_on<B: Backend>(c: &mut Criterion, b: &B, shapes: &[(usize, usize, usize)], sync: impl Fn()) {
    let mut group = c.benchmark_group(format!("newton_schulz/{}", b.name()));
    group.sample_size(10);
    for &(batch, rows, cols) in shapes {
        let len = rows * cols;
        let ranges: Vec<_> = (0..batch).map(|i| i * len..(i + 1) * len).collect();
        let (input, mut out) = (b.upload(&common::random(batch * len, 3)), b.zeros(batch * len));
        group.throughput(Throughput::Elements(flops(batch, rows, cols)));
        group.bench_function(format!("{batch}x{rows}x{cols}"), |bench| {
            bench.iter(|| {
                b.newton_schulz_batched(&mut out, &input, &ranges, rows, cols, 5, NsCoefficients::Keller);
                sync();
            })
        });
    }
}

fn newton_schulz(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    ns_on(c, &Cpu, &[(2, 256, 256), (1, 256, 1024)], || ());
    if let Some(g) = common::gpu() {
        ns_on(c, &g, &[(16, 64, 256), (24, 256, 1024), (4, 1024, 4096)], || g.synchronize().expect("the CUDA work of a benchmark failed"));
    }
}

criterion_group!(benches, newton_schulz);
criterion_main!(benches);
