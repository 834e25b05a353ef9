//! Inverse 4th roots of SPD statistics (Shampoo's preconditioners): f64
//! eigendecomposition on the CPU, the batched coupled Newton iteration on the GPU.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use optlab::backend::{Backend, Cpu};
use optlab::linalg::{Epsilon, matmul};

/// `count` inverse 4th roots of n×n statistics G·Gᵀ/2n in one `inverse_roots`
/// call, for each (count, n), with Shampoo's default ε.
fn roots_on<B: Backend>(c: &mut Criterion, b: &B, shapes: &[(usize, usize)], sync: impl Fn()) {
    let mut group = c.benchmark_group(format!("inverse_root/{}", b.name()));
    group.sample_size(10);
    for &(count, n) in shapes {
        let g = common::random(n * 2 * n, 4);
        let mut a = vec![0.0; n * n];
        matmul(&mut a, &g, &g, n, 2 * n, n, false, true, 1.0 / (2 * n) as f32, 0.0);
        let stats: Vec<_> = (0..count).map(|_| b.upload(&a)).collect();
        let mut roots: Vec<_> = (0..count).map(|_| b.zeros(n * n)).collect();
        let eps = Epsilon { absolute: 1e-12, relative: 1e-6 };
        group.bench_function(format!("p4/{count}x{n}"), |bench| {
            bench.iter(|| {
                let views = stats.iter().map(|s| B::all(s)).collect();
                b.inverse_roots(roots.iter_mut().map(|r| B::all_mut(r)).collect(), views, n, 4, eps).unwrap();
                sync();
            })
        });
    }
}

fn shampoo(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    roots_on(c, &Cpu, &[(1, 256)], || ());
    if let Some(g) = common::gpu() {
        // Against torch_kernels.py's `inverse_root_eigh` at the same shapes.
        let shapes = [(1, 256), (8, 256), (1, 1024), (4, 1024), (1, 2048)];
        roots_on(c, &g, &shapes, || g.synchronize().expect("the CUDA work of a benchmark failed"));
    }
}

criterion_group!(benches, shampoo);
criterion_main!(benches);
