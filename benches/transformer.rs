//! One full training step (forward, loss, backward, AdamW) of the default ViT and
//! GPT studies, and attention alone at the models' shapes, on the CPU reference
//! and, when present, the GPU; `benches/compare_cpu.sh` compares the CPU steps
//! with PyTorch eager, `benches/torch_kernels.py` the GPU attention with SDPA.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use optlab::backend::{Attention, Backend, Cpu, Precision};
use optlab::models::{Classifier, Gpt, GptConfig, TransformerConfig, Vit, VitConfig};
use optlab::optim::OptimizerConfig;

fn steps_on<B: Backend>(c: &mut Criterion, b: &B, sync: impl Fn()) {
    let suffix = if b.name() == "cpu" { String::new() } else { format!("_{}", b.name()) };
    let adamw = OptimizerConfig::by_name("adamw").unwrap();

    // exp vit: MNIST 28×28, patch 7, dim 64, depth 4, 4 heads; batch 128.
    let config = VitConfig {
        image: 28,
        channels: 1,
        patch: 7,
        classes: 10,
        body: TransformerConfig { dim: 64, depth: 4, heads: 4, mlp_ratio: 4, ..Default::default() },
    };
    let (x, labels) = (common::random(128 * 784, 0), (0..128).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let mut vit = Vit::new(b, config, 0);
    let mut opt = adamw.build(b, &mut vit.store);
    c.bench_function(&format!("vit_step{suffix}/adamw/d64-l4-p7/b128"), |bench| {
        bench.iter(|| {
            vit.loss_and_gradients(b, &x, &labels).unwrap();
            opt.step(b, &mut vit.store, 1.0, None).unwrap();
            sync();
        })
    });

    // exp gpt: bytes, dim 256, depth 4, 4 heads, seq 256; batch 8.
    let config = GptConfig { vocab: 256, seq: 256, body: TransformerConfig::default(), tie_embeddings: false };
    let ids: Vec<u32> = (0..8 * 256).map(|i| (i * 7 % 256) as u32).collect();
    let targets: Vec<u32> = (0..8 * 256).map(|i| i * 13 % 256).collect();
    let mut gpt = Gpt::new(b, config, 0);
    let mut opt = adamw.build(b, &mut gpt.store);
    let mut group = c.benchmark_group(format!("gpt_step{suffix}"));
    group.sample_size(10);
    group.bench_function("adamw/d256-l4-s256/b8", |bench| {
        bench.iter(|| {
            gpt.loss_and_gradients(b, &ids, &targets, 8).unwrap();
            opt.step(b, &mut gpt.store, 1.0, None).unwrap();
            sync();
        })
    });
}

/// The model shapes: GPT's, the default ViT's and a CIFAR ViT's (4×4 patches: 65 tokens).
const MODEL_ATTENTION: [(&str, Attention); 3] = [
    ("gpt", Attention { batch: 8, seq: 256, heads: 4, head_dim: 64, causal: true }),
    ("vit", Attention { batch: 128, seq: 17, heads: 4, head_dim: 16, causal: false }),
    ("vit_cifar", Attention { batch: 128, seq: 65, heads: 4, head_dim: 32, causal: false }),
];
/// The shape of the GPU target against SDPA's flash backend (head dim 64, seq
/// 1024; FlashAttention-2's benchmark shape at 8k tokens), not run on the CPU.
const REFERENCE_ATTENTION: [(&str, Attention); 2] = [
    ("reference", Attention { batch: 8, seq: 1024, heads: 16, head_dim: 64, causal: false }),
    ("reference_causal", Attention { batch: 8, seq: 1024, heads: 16, head_dim: 64, causal: true }),
];

/// Attention forward, and forward + backward, at `shapes`; `group` names the
/// backend and its precision.
fn attention_on<B: Backend>(c: &mut Criterion, b: &B, group: &str, shapes: &[(&str, Attention)], sync: impl Fn()) {
    let mut group = c.benchmark_group(group);
    for &(name, s) in shapes {
        let rows = s.batch * s.seq;
        let label = format!("{name}_b{}-h{}-t{}-d{}", s.batch, s.heads, s.seq, s.head_dim);
        let (qkv, dout) = (b.upload(&common::random(rows * s.qkv_width(), 1)), b.upload(&common::random(rows * s.width(), 2)));
        let (mut out, mut lse, mut dqkv) = (b.zeros(rows * s.width()), b.zeros(s.batch * s.heads * s.seq), b.zeros(rows * s.qkv_width()));
        group.bench_function(format!("forward/{label}"), |bench| {
            bench.iter(|| {
                b.attention_forward(B::all_mut(&mut out), B::all_mut(&mut lse), B::all(&qkv), s);
                sync();
            })
        });
        group.bench_function(format!("forward_backward/{label}"), |bench| {
            bench.iter(|| {
                b.attention_forward(B::all_mut(&mut out), B::all_mut(&mut lse), B::all(&qkv), s);
                b.attention_backward(B::all_mut(&mut dqkv), B::all(&dout), B::all(&qkv), B::all(&out), B::all(&lse), s);
                sync();
            })
        });
    }
}

fn transformer_steps(c: &mut Criterion) {
    optlab::backend::cpu::join_thread_pool();
    steps_on(c, &Cpu, || ());
    attention_on(c, &Cpu, "attention_cpu", &MODEL_ATTENTION, || ());
    if let Some(mut g) = common::gpu() {
        steps_on(c, &g, || g.synchronize().expect("the CUDA work of a benchmark failed"));
        // Forward at each precision (tf32 and bf16 on tensor cores); the backward is f32.
        for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            g = g.with_precision(precision);
            let shapes: Vec<_> = MODEL_ATTENTION.iter().chain(&REFERENCE_ATTENTION).copied().collect();
            attention_on(c, &g, &format!("attention_cuda_{precision}"), &shapes, || {
                g.synchronize().expect("the CUDA work of a benchmark failed")
            });
        }
    }
}

criterion_group!(benches, transformer_steps);
criterion_main!(benches);
