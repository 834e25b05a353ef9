//! Inverse 4th roots of SPD statistics (Shampoo's preconditioners): f64
//! eigendecomposition on the CPU, coupled Newton iteration on the GPU.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use optlab::backend::{Backend, Cpu};
use optlab::linalg::{Epsilon, matmul};

fn roots_on<B: Backend>(c: &mut Criterion, b: &B, sizes: &[usize], sync: impl Fn()) {
    let mut group = c.benchmark_group(format!("inverse_root/{}", b.name()));
    group.sample_size(10);
    for &n in sizes {
        let g = common::random(n * 2 * n, 4);
        let mut a = vec![0.0; n * n];
        matmul(&mut a, &g, &g, n, 2 * n, n, false, true, 1.0 / (2 * n) as f32, 0.0);
        let (a, mut out) = (b.upload(&a), b.zeros(n * n));
        let eps = Epsilon { absolute: 1e-12, relative: 1e-6 };
        group.bench_function(format!("p4/{n}"), |bench| {
            bench.iter(|| {
                b.inverse_root(B::all_mut(&mut out), B::all(&a), n, 4, eps).unwrap();
                sync();
            })
        });
    }
}

fn shampoo(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    roots_on(c, &Cpu, &[256], || ());
    if let Some(g) = common::gpu() {
        roots_on(c, &g, &[256, 1024], || g.synchronize().expect("the CUDA work of a benchmark failed"));
    }
}

criterion_group!(benches, shampoo);
criterion_main!(benches);
