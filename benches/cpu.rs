//! CPU reference timings: the split-MNIST training step (compared with PyTorch
//! eager by `benches/compare_cpu.sh`) and the research ops the optimizers and
//! probes call. CUDA benches join when the CUDA backend lands.

use criterion::{Criterion, criterion_group, criterion_main};
use optlab::backend::{Activation, Cpu};
use optlab::linalg::{Epsilon, NsCoefficients, newton_schulz, sym_inverse_root};
use optlab::metrics::spectrum;
use optlab::models::{Mlp, MlpConfig};
use optlab::optim::OptimizerConfig;
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// One full step of the default study: forward, loss, backward, optimizer.
fn mlp_step(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let (x, labels) = (random(128 * 784, &mut rng), (0..128).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let config = MlpConfig { input: 784, hidden: vec![256, 256], classes: 10, activation: Activation::Relu };
    for name in ["sgd", "adamw"] {
        let mut model = Mlp::new(&Cpu, config.clone(), 0);
        let mut opt = OptimizerConfig::by_name(name).unwrap().build(&Cpu, &model.store);
        c.bench_function(&format!("mlp_step/{name}/784-256-256-10/b128"), |b| {
            b.iter(|| {
                model.loss_and_gradients(&Cpu, &x, &labels);
                opt.step(&Cpu, &mut model.store, 1.0, None);
            })
        });
    }
}

fn research_ops(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let g = random(256 * 256, &mut rng);
    c.bench_function("newton_schulz/keller5/256x256", |b| b.iter(|| newton_schulz(&g, 256, 256, 5, NsCoefficients::Keller)));
    let mut spd = vec![0.0; 256 * 256];
    optlab::linalg::matmul(&mut spd, &g, &g, 256, 256, 256, false, true, 1.0, 0.0);
    let eps = Epsilon { absolute: 1e-12, relative: 1e-6 };
    c.bench_function("inverse_root/p4/256", |b| b.iter(|| sym_inverse_root(&spd, 256, 4, eps).unwrap()));
    let w = random(256 * 784, &mut rng);
    c.bench_function("spectrum/256x784", |b| b.iter(|| spectrum(&w, 256, 784).unwrap()));
}

criterion_group!(benches, mlp_step, research_ops);
criterion_main!(benches);
