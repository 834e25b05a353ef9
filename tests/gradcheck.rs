//! Every backward pass against central finite differences.
//!
//! The CPU backend is f32, so differences use h = 1e-2 on smooth functions and a
//! per-tensor relative bound ‖fd − analytic‖ / ‖analytic‖ ≤ 2e-3 — loose enough
//! for f32 round-off, three orders of magnitude below what a wrong sign, a missing
//! term or a transposed index produces.

use optlab::backend::{Activation, Attention, Backend, Cpu, Gemm};
use optlab::models::{Classifier, Mlp, MlpConfig, ParamStore, Role};
use optlab::nn::Linear;
use rand::{RngExt, SeedableRng, rngs::StdRng};

const H: f32 = 1e-2;
const BOUND: f64 = 2e-3;

fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Central differences of `f` at `x`, one coordinate at a time.
fn finite_differences(x: &[f32], mut f: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + H;
            let up = f(&x);
            x[i] = orig - H;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * f64::from(H))
        })
        .collect()
}

fn assert_close(name: &str, analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len());
    let norm: f64 = analytic.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
    let err: f64 = analytic.iter().zip(numeric).map(|(&a, &n)| (f64::from(a) - n).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 1e-6, "{name}: analytic gradient is ~0, the check would be vacuous");
    assert!(err / norm <= BOUND, "{name}: relative error {:.2e} > {BOUND:.0e} (‖analytic‖ = {norm:.3e})", err / norm);
}

/// Σ y·r for a fixed random r: a scalar whose gradient w.r.t. y is r.
fn dot(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&y, &r)| f64::from(y) * f64::from(r)).sum()
}

#[test]
fn activations() {
    let mut rng = StdRng::seed_from_u64(1);
    for kind in Activation::ALL {
        // Keep ReLU inputs away from its kink, where differences are meaningless.
        let x: Vec<f32> = random(37, &mut rng)
            .into_iter()
            .map(|v| if kind == Activation::Relu && v.abs() < 0.1 { v + 0.3 * v.signum() } else { 2.0 * v })
            .collect();
        let r = random(37, &mut rng);
        let f = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            Cpu.activation_forward(kind, &mut y, x);
            dot(&y, &r)
        };
        let mut dx = vec![f32::NAN; 37];
        Cpu.activation_backward(kind, &mut dx, &r, &x);
        assert_close(&format!("{kind:?}"), &dx, &finite_differences(&x, f));
    }
}

#[test]
fn gated_linear_units() {
    let mut rng = StdRng::seed_from_u64(11);
    for kind in Activation::ALL {
        let n = 37;
        // ReLU's gate away from its kink, as above.
        let gate: Vec<f32> = random(n, &mut rng).into_iter().map(|v| if v.abs() < 0.1 { v + 0.3 * v.signum() } else { 2.0 * v }).collect();
        let (up, r) = (random(n, &mut rng), random(n, &mut rng));
        let f = |gate: &[f32], up: &[f32]| {
            let mut y = vec![0.0; n];
            Cpu.glu_forward(kind, &mut y, gate, up);
            dot(&y, &r)
        };
        let (mut dgate, mut dup) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        Cpu.glu_backward(kind, &mut dgate, &mut dup, &r, &gate, &up);
        assert_close(&format!("{kind:?} GLU d gate"), &dgate, &finite_differences(&gate, |g| f(g, &up)));
        assert_close(&format!("{kind:?} GLU d up"), &dup, &finite_differences(&up, |u| f(&gate, u)));
    }
}

#[test]
fn softmax_cross_entropy() {
    let mut rng = StdRng::seed_from_u64(2);
    let (batch, classes) = (5, 7);
    let logits: Vec<f32> = random(batch * classes, &mut rng).into_iter().map(|v| 3.0 * v).collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i * 3 % classes) as u8).collect();
    let mut d = vec![f32::NAN; batch * classes];
    let out = Cpu.softmax_cross_entropy(&mut d, &logits, &labels, classes).unwrap();
    let numeric = finite_differences(&logits, |z| {
        let mut scratch = vec![0.0; z.len()];
        f64::from(Cpu.softmax_cross_entropy(&mut scratch, z, &labels, classes).unwrap().loss)
    });
    assert_close("softmax cross-entropy", &d, &numeric);
    // The loss itself against a direct evaluation.
    let direct: f64 = logits
        .chunks(classes)
        .zip(&labels)
        .map(|(row, &l)| {
            let lse = row.iter().map(|&z| f64::from(z).exp()).sum::<f64>().ln();
            lse - f64::from(row[l as usize])
        })
        .sum::<f64>()
        / batch as f64;
    assert!((f64::from(out.loss) - direct).abs() < 1e-5, "loss {} vs {direct}", out.loss);
}

#[test]
fn linear_layer_input_weight_and_bias() {
    let mut rng = StdRng::seed_from_u64(3);
    let (batch, din, dout) = (4, 5, 3);
    let layout = [("w".to_string(), dout, din, Role::HiddenMatrix), ("b".to_string(), 1, dout, Role::Vector)];
    let theta = random(dout * din + dout, &mut rng);
    let x = random(batch * din, &mut rng);
    let r = random(batch * dout, &mut rng);
    let layer = Linear { weight: 0, bias: 1, in_dim: din, out_dim: dout };
    let forward = |theta: &[f32], x: &[f32]| {
        let store = ParamStore::new(&Cpu, &layout, theta);
        let mut y = vec![0.0; batch * dout];
        layer.forward(&Cpu, &store, &mut y, &x.to_vec(), batch);
        dot(&y, &r)
    };
    let mut store = ParamStore::new(&Cpu, &layout, &theta);
    let mut dx = vec![f32::NAN; batch * din];
    layer.backward(&Cpu, &mut store, Some(&mut dx), &r, &x, batch);
    assert_close("linear dx", &dx, &finite_differences(&x, |x| forward(&theta, x)));
    assert_close("linear dθ", &store.grads, &finite_differences(&theta, |t| forward(t, &x)));
}

#[test]
fn whole_mlp_every_activation() {
    let mut rng = StdRng::seed_from_u64(4);
    for activation in Activation::ALL {
        let config = MlpConfig { input: 6, hidden: vec![7, 5], classes: 4, activation };
        let batch = 3;
        let x = random(batch * 6, &mut rng);
        let labels = [0u8, 3, 1];
        let theta: Vec<f32> = config.init(9).into_iter().map(|v| 3.0 * v).collect();
        let mut model = Mlp::from_values(&Cpu, config.clone(), &theta);
        model.loss_and_gradients(&Cpu, &x, &labels).unwrap();
        let analytic = model.store.grads.clone();
        let numeric = finite_differences(&theta, |t| {
            let mut m = Mlp::from_values(&Cpu, config.clone(), t);
            f64::from(m.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss)
        });
        // ReLU: a difference whose ±h perturbation flips a unit on or off crosses a
        // kink and is meaningless there; skip exactly those coordinates.
        let active_set = |t: &[f32]| {
            let mut m = Mlp::from_values(&Cpu, config.clone(), t);
            m.forward(&Cpu, &x, batch);
            m.hidden_activations(&Cpu).unwrap().concat().iter().map(|&a| a > 0.0).collect::<Vec<_>>()
        };
        let base = active_set(&theta);
        let smooth = |i: usize| {
            [H, -H].iter().all(|&d| {
                let mut t = theta.clone();
                t[i] += d;
                active_set(&t) == base
            })
        };
        let keep: Vec<usize> = (0..theta.len()).filter(|&i| activation != Activation::Relu || smooth(i)).collect();
        assert!(keep.len() > theta.len() * 3 / 4, "{activation:?}: too many coordinates cross a kink");
        let analytic: Vec<f32> = keep.iter().map(|&i| analytic[i]).collect();
        let numeric: Vec<f64> = keep.iter().map(|&i| numeric[i]).collect();
        assert_close(&format!("MLP {activation:?}"), &analytic, &numeric);
    }
}

#[test]
fn gemm_transposes_against_naive() {
    let mut rng = StdRng::seed_from_u64(5);
    for (m, k, n) in [(1, 1, 1), (3, 17, 5), (65, 9, 33)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(m * k, &mut rng);
            let b = random(k * n, &mut rng);
            let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
            let c0 = random(m * n, &mut rng);
            let mut c = c0.clone();
            Cpu.matmul(&mut c, &a, &b, Gemm { m, k, n, trans_a: ta, trans_b: tb }, 0.5, 2.0);
            for i in 0..m {
                for j in 0..n {
                    let want = 0.5 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>() + 2.0 * c0[i * n + j];
                    assert!((c[i * n + j] - want).abs() < 1e-4, "({m},{k},{n},{ta},{tb}) at ({i},{j})");
                }
            }
        }
    }
}

#[test]
fn layernorm_input_gain_and_bias() {
    let mut rng = StdRng::seed_from_u64(6);
    let (rows, dim) = (4, 7);
    let (x, gamma, beta, r) = (random(rows * dim, &mut rng), random(dim, &mut rng), random(dim, &mut rng), random(rows * dim, &mut rng));
    let f = |x: &[f32], gamma: &[f32], beta: &[f32]| {
        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows]);
        Cpu.layernorm_forward(&mut y, &mut mean, &mut rstd, x, gamma, beta, 1e-5);
        (dot(&y, &r), mean, rstd)
    };
    let (_, mean, rstd) = f(&x, &gamma, &beta);
    let (mut dx, mut dg, mut db) = (vec![f32::NAN; rows * dim], vec![0.0; dim], vec![0.0; dim]);
    Cpu.layernorm_backward(&mut dx, &mut dg, &mut db, &r, &x, &mean, &rstd, &gamma);
    assert_close("layernorm dx", &dx, &finite_differences(&x, |x| f(x, &gamma, &beta).0));
    assert_close("layernorm dγ", &dg, &finite_differences(&gamma, |g| f(&x, g, &beta).0));
    assert_close("layernorm dβ", &db, &finite_differences(&beta, |b| f(&x, &gamma, b).0));
}

#[test]
fn attention_causal_and_not() {
    let mut rng = StdRng::seed_from_u64(7);
    for causal in [false, true] {
        let s = Attention { batch: 2, seq: 5, heads: 2, head_dim: 3, causal };
        let rows = s.batch * s.seq;
        let qkv: Vec<f32> = random(rows * s.qkv_width(), &mut rng).into_iter().map(|v| 2.0 * v).collect();
        let r = random(rows * s.width(), &mut rng);
        let forward = |qkv: &[f32]| {
            let (mut out, mut lse) = (vec![0.0; rows * s.width()], vec![0.0; s.batch * s.heads * s.seq]);
            Cpu.attention_forward(&mut out, &mut lse, qkv, s);
            (out, lse)
        };
        let (out, lse) = forward(&qkv);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        Cpu.attention_backward(&mut dqkv, &r, &qkv, &out, &lse, s);
        assert_close(&format!("attention causal={causal}"), &dqkv, &finite_differences(&qkv, |q| dot(&forward(q).0, &r)));
        if causal {
            // The first position sees only itself: its output is its own value vector.
            let v0 = &qkv[2 * s.width()..][..s.head_dim];
            assert!(out[..s.head_dim].iter().zip(v0).all(|(o, v)| (o - v).abs() < 1e-6), "causal position 0 must copy v0");
        }
    }
}

#[test]
fn embedding_scatter_adds_repeated_ids() {
    let mut rng = StdRng::seed_from_u64(8);
    let (rows, dim, ids) = (6, 4, [1u32, 3, 1, 0, 5]);
    let (table, r) = (random(rows * dim, &mut rng), random(ids.len() * dim, &mut rng));
    let f = |t: &[f32]| {
        let mut out = vec![0.0; ids.len() * dim];
        Cpu.embedding_forward(&mut out, t, &ids, dim);
        dot(&out, &r)
    };
    let mut dtable = vec![0.0; rows * dim];
    Cpu.embedding_backward(&mut dtable, &r, &ids, dim);
    assert_close("embedding", &dtable, &finite_differences(&table, f));
}

#[test]
fn whole_vit_every_parameter() {
    use optlab::models::{TransformerConfig, Vit, VitConfig};
    let mut rng = StdRng::seed_from_u64(9);
    let body = TransformerConfig { dim: 8, depth: 2, heads: 2, mlp_ratio: 2, ..Default::default() };
    let config = VitConfig { image: 4, channels: 3, patch: 2, classes: 3, body };
    let (batch, labels) = (2, [2u8, 0]);
    let x = random(batch * config.image_values(), &mut rng);
    let theta: Vec<f32> = {
        let m = Vit::new(&Cpu, config.clone(), 5);
        // O(1) class token and positions: at their init scale (±0.02) the class
        // row is so small that LayerNorm's 1/σ makes h = 1e-2 differences meaningless.
        let mut t = m.store.values.clone();
        for s in m.store.specs.iter().filter(|s| s.name == "cls_token" || s.name == "pos_embed") {
            t[s.range()].iter_mut().for_each(|v| *v *= 50.0);
        }
        t
    };
    let mut model = Vit::from_values(&Cpu, config.clone(), &theta);
    model.loss_and_gradients(&Cpu, &x, &labels).unwrap();
    let analytic = model.store.grads.clone();
    let numeric = finite_differences(&theta, |t| {
        f64::from(Vit::from_values(&Cpu, config.clone(), t).loss_and_gradients(&Cpu, &x, &labels).unwrap().loss)
    });
    assert_close("ViT", &analytic, &numeric);
    // Every named parameter gets a gradient (nothing silently detached).
    for s in &model.store.specs {
        assert!(analytic[s.range()].iter().any(|g| g.abs() > 0.0), "{} has no gradient", s.name);
    }
}

#[test]
fn whole_gpt_every_parameter() {
    use optlab::models::{FeedForward, Gpt, GptConfig, TransformerConfig};
    for (feed_forward, tie_embeddings) in [(FeedForward::Gelu, false), (FeedForward::Swiglu, false), (FeedForward::Gelu, true)] {
        let body = TransformerConfig { dim: 8, depth: 2, heads: 2, mlp_ratio: 2, feed_forward, ..Default::default() };
        let config = GptConfig { vocab: 7, seq: 5, body, tie_embeddings };
        let (ids, targets) = ([3u32, 1, 4, 1, 5, 2, 6, 5], [1u32, 4, 1, 5, 6, 5, 3, 0]);
        let theta: Vec<f32> = {
            let m = Gpt::new(&Cpu, config.clone(), 5);
            // O(1) embeddings, for the same reason as in the ViT check.
            let mut t = m.store.values.clone();
            for s in m.store.specs.iter().filter(|s| s.name.ends_with("_embed")) {
                t[s.range()].iter_mut().for_each(|v| *v *= 30.0);
            }
            t
        };
        let loss =
            |t: &[f32]| f64::from(Gpt::from_values(&Cpu, config.clone(), t).loss_and_gradients(&Cpu, &ids, &targets, 2).unwrap().loss);
        let mut model = Gpt::from_values(&Cpu, config.clone(), &theta);
        model.loss_and_gradients(&Cpu, &ids, &targets, 2).unwrap();
        let what = format!("GPT ({feed_forward:?}, tied {tie_embeddings})");
        assert_close(&what, &model.store.grads, &finite_differences(&theta, loss));
        let ups = model.store.specs.iter().filter(|s| s.name.ends_with("mlp.up.weight")).count();
        assert_eq!(ups, if feed_forward == FeedForward::Swiglu { 2 } else { 0 }, "one up projection per SwiGLU block");
        let total: usize = model.store.specs.iter().map(|s| s.range().len()).sum();
        assert_eq!(total, config.parameter_count(), "{what}: parameter_count");
        assert_eq!(model.store.specs.iter().any(|s| s.name == "head.weight"), !tie_embeddings, "{what}");
        for s in &model.store.specs {
            assert!(model.store.grads[s.range()].iter().any(|g| g.abs() > 0.0), "{what}: {} has no gradient", s.name);
        }
        // Causality: changing the last token of a sequence cannot change earlier logits.
        let mut m = Gpt::from_values(&Cpu, config.clone(), &theta);
        let before = m.forward(&Cpu, &ids, 2).clone();
        let mut changed = ids;
        changed[3] = 0;
        let after = m.forward(&Cpu, &changed, 2).clone();
        assert_eq!(before[..3 * 7], after[..3 * 7], "logits of positions 0..3 must not see position 3");
        assert_ne!(before[3 * 7..4 * 7], after[3 * 7..4 * 7]);
    }
}
