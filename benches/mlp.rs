//! One full training step of the default split-MNIST study (forward, loss,
//! backward, optimizer) on the CPU reference and, when present, the GPU.
//! `benches/compare_cpu.sh` compares the CPU numbers with PyTorch eager.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use optlab::backend::{Activation, Backend, Cpu};
use optlab::models::{Classifier, Mlp, MlpConfig};
use optlab::optim::OptimizerConfig;

fn step_on<B: Backend>(c: &mut Criterion, b: &B, sync: impl Fn()) {
    let (x, labels) = (common::random(128 * 784, 0), (0..128).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let config = MlpConfig { input: 784, hidden: vec![256, 256], classes: 10, activation: Activation::Relu };
    for name in ["sgd", "adamw", "muon", "shampoo"] {
        let mut model = Mlp::new(b, config.clone(), 0);
        let mut opt = OptimizerConfig::by_name(name).unwrap().build(b, &mut model.store);
        let id = if b.name() == "cpu" {
            format!("mlp_step/{name}/784-256-256-10/b128")
        } else {
            format!("mlp_step_{}/{name}/784-256-256-10/b128", b.name())
        };
        c.bench_function(&id, |bench| {
            bench.iter(|| {
                model.loss_and_gradients(b, &x, &labels).unwrap();
                opt.step(b, &mut model.store, 1.0, None).unwrap();
                sync();
            })
        });
    }
}

fn mlp_step(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    step_on(c, &Cpu, || ());
    if let Some(g) = common::gpu() {
        step_on(c, &g, || g.synchronize().expect("the CUDA work of a benchmark failed"));
    }
}

criterion_group!(benches, mlp_step);
criterion_main!(benches);
