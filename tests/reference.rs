//! optlab's CPU backend against PyTorch (the llm.c pattern): loss, every gradient,
//! and 3-step optimizer trajectories of a small MLP, from the committed fixture
//! `tests/fixtures/torch_reference.safetensors` made by `tools/torch_reference.py`.

use std::path::Path;

use optlab::backend::{Activation, Attention, Backend, Cpu};
use optlab::models::{Classifier, Mlp, MlpConfig};
use optlab::optim::{AdamWConfig, MuonConfig, OptimizerConfig, SgdConfig};
use optlab::record::checkpoint::Checkpoint;

fn fixture() -> Checkpoint {
    Checkpoint::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_reference.safetensors")).unwrap()
}

fn config(activation: Activation) -> MlpConfig {
    MlpConfig { input: 20, hidden: vec![16, 12], classes: 10, activation }
}

fn batch(f: &Checkpoint) -> (Vec<f32>, Vec<u8>) {
    (f.tensor("x").unwrap().to_vec(), f.tensor("labels").unwrap().iter().map(|&l| l as u8).collect())
}

/// max |a − b| / max(max |b|, 1e-3): one bound for a whole tensor.
fn max_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let f = fixture();
    assert_eq!(f.meta("param_order").unwrap(), "fc1.weight,fc1.bias,fc2.weight,fc2.bias,fc3.weight,fc3.bias (weights out x in, row-major)");
    let (x, labels) = batch(&f);
    for (name, act) in [("relu", Activation::Relu), ("tanh", Activation::Tanh), ("gelu", Activation::Gelu)] {
        let mut model = Mlp::from_values(&Cpu, config(act), f.tensor(&format!("{name}.params")).unwrap());
        let loss = model.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss;
        let want = f.tensor(&format!("{name}.loss")).unwrap()[0];
        assert!((loss - want).abs() < 1e-5, "{name}: loss {loss} vs PyTorch {want}");
        let err = max_relative(&model.store.grads, f.tensor(&format!("{name}.grads")).unwrap());
        assert!(err < 1e-5, "{name}: gradients differ from PyTorch by {err:.2e} (relative to the largest)");
    }
}

#[test]
fn optimizer_trajectories_match_pytorch() {
    let f = fixture();
    let (x, labels) = batch(&f);
    let cases = [
        ("sgd", OptimizerConfig::Sgd(SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01 })),
        ("adamw", OptimizerConfig::AdamW(AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 })),
        (
            "muon",
            OptimizerConfig::Muon(MuonConfig { lr: 0.02, aux_adamw: AdamWConfig { lr: 1e-3, ..Default::default() }, ..Default::default() }),
        ),
    ];
    for (name, opt) in cases {
        let mut model = Mlp::from_values(&Cpu, config(Activation::Relu), f.tensor("relu.params").unwrap());
        let mut optimizer = opt.build(&Cpu, &mut model.store);
        for _ in 0..3 {
            model.loss_and_gradients(&Cpu, &x, &labels).unwrap();
            optimizer.step(&Cpu, &mut model.store, 1.0, None).unwrap();
        }
        let err = max_relative(&model.store.values, f.tensor(&format!("{name}.params_after3")).unwrap());
        assert!(err < 1e-5, "{name}: parameters after 3 steps differ from PyTorch by {err:.2e}");
    }
}

fn transformer_fixture() -> Checkpoint {
    Checkpoint::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_transformer.safetensors")).unwrap()
}

#[test]
fn attention_matches_scaled_dot_product_attention() {
    let f = transformer_fixture();
    // The long sequence spans several of the CPU backend's query-row blocks.
    let shapes = [("attention", 2, 7, 2, 4), ("attention_long", 1, 140, 2, 4)];
    let cases = shapes.into_iter().flat_map(|shape| [(shape, "full", false), (shape, "causal", true)]);
    for ((prefix, batch, seq, heads, head_dim), kind, causal) in cases {
        assert_eq!(f.meta(prefix).unwrap(), format!("batch={batch} seq={seq} heads={heads} head_dim={head_dim}"));
        let s = Attention { batch, seq, heads, head_dim, causal };
        let name = format!("{prefix}.{kind}");
        let t = |k: &str| f.tensor(&format!("{name}.{k}")).unwrap();
        let (mut out, mut lse) = (vec![f32::NAN; t("out").len()], vec![f32::NAN; batch * heads * seq]);
        Cpu.attention_forward(&mut out, &mut lse, t("qkv"), s);
        let err = max_relative(&out, t("out"));
        assert!(err < 1e-5, "{name}: attention output differs from PyTorch by {err:.2e}");
        let mut dqkv = vec![f32::NAN; t("qkv").len()];
        Cpu.attention_backward(&mut dqkv, t("dout"), t("qkv"), &out, &lse, s);
        let err = max_relative(&dqkv, t("dqkv"));
        assert!(err < 1e-5, "{name}: attention gradient differs from PyTorch by {err:.2e}");
    }
}

#[test]
fn layernorm_matches_pytorch() {
    let f = transformer_fixture();
    let t = |k: &str| f.tensor(&format!("layernorm.{k}")).unwrap();
    let (rows, dim) = (5, 9);
    let (mut y, mut mean, mut rstd) = (vec![f32::NAN; rows * dim], vec![0.0; rows], vec![0.0; rows]);
    Cpu.layernorm_forward(&mut y, &mut mean, &mut rstd, t("x"), t("gamma"), t("beta"), 1e-5);
    assert!(max_relative(&y, t("y")) < 1e-5, "layernorm output");
    let (mut dx, mut dg, mut db) = (vec![f32::NAN; rows * dim], vec![0.0; dim], vec![0.0; dim]);
    Cpu.layernorm_backward(&mut dx, &mut dg, &mut db, t("dy"), t("x"), &mean, &rstd, t("gamma"));
    for (what, ours, theirs) in [("dx", &dx, t("dx")), ("dgamma", &dg, t("dgamma")), ("dbeta", &db, t("dbeta"))] {
        let err = max_relative(ours, theirs);
        assert!(err < 1e-5, "layernorm {what} differs from PyTorch by {err:.2e}");
    }
}
