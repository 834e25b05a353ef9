//! Optimizers against cases with known answers, not only "loss goes down".

use optlab::backend::{Activation, Cpu};
use optlab::linalg::{NsCoefficients, matmul, singular_values};
use optlab::models::{Classifier, Mlp, MlpConfig, ParamStore, Role};
use optlab::optim::{
    AdadeltaConfig, AdagradConfig, AdamConfig, AdamWConfig, Gda2Config, Grafting, KfacConfig, LionConfig, Manifold, ManifoldMuonConfig,
    MuonConfig, OptimizerConfig, PsgdKronConfig, RmsPropConfig, SgdConfig, ShampooConfig, SoapConfig,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// A store holding one rows×cols matrix with the given role, values and gradient.
fn one_matrix(rows: usize, cols: usize, values: &[f32], grad: &[f32]) -> ParamStore<Cpu> {
    let mut store = ParamStore::new(&Cpu, &[("w".into(), rows, cols, Role::HiddenMatrix)], values);
    store.grads.copy_from_slice(grad);
    store
}

/// Applies one step of `config` and returns Δθ.
fn one_step(config: &OptimizerConfig, store: &mut ParamStore<Cpu>) -> Vec<f32> {
    let before = store.values.clone();
    config.build(&Cpu, store).step(&Cpu, store, 1.0, None).unwrap();
    store.values.iter().zip(&before).map(|(a, b)| a - b).collect()
}

/// Orthonormal columns (n×k, k ≤ n) by Gram-Schmidt of a random matrix, row-major.
fn orthonormal(n: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut cols: Vec<Vec<f64>> = Vec::new();
    while cols.len() < k {
        let mut v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for c in &cols {
            let d: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        cols.push(v.into_iter().map(|a| a / norm).collect());
    }
    (0..n * k).map(|i| cols[i % k][i / k] as f32).collect()
}

/// G = U·diag(s)·Vᵀ (rows×cols, rank min(rows, cols)) and its polar factor U·Vᵀ.
fn with_known_svd(rows: usize, cols: usize, s: &[f32], rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
    let k = rows.min(cols);
    let (u, v) = (orthonormal(rows, k, rng), orthonormal(cols, k, rng));
    let us: Vec<f32> = u.iter().enumerate().map(|(i, x)| x * s[i % k]).collect();
    let (mut g, mut polar) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
    matmul(&mut g, &us, &v, rows, k, cols, false, true, 1.0, 0.0);
    matmul(&mut polar, &u, &v, rows, k, cols, false, true, 1.0, 0.0);
    (g, polar)
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn adamw_first_step_moves_every_coordinate_by_lr() {
    let mut rng = StdRng::seed_from_u64(1);
    let (p, g) = (random(30, &mut rng), random(30, &mut rng));
    let c = AdamWConfig { lr: 0.01, weight_decay: 0.1, ..Default::default() };
    let mut store = one_matrix(5, 6, &p, &g);
    let delta = one_step(&OptimizerConfig::AdamW(c), &mut store);
    for ((d, p), g) in delta.iter().zip(&p).zip(&g) {
        // Bias correction makes m̂/√v̂ = g/|g| on step 1; decay is decoupled.
        let want = -p * 0.01 * 0.1 - 0.01 * g.signum();
        assert!((d - want).abs() < 1e-6, "{d} vs {want}");
    }
}

#[test]
fn sgd_momentum_and_nesterov_by_hand() {
    for nesterov in [false, true] {
        let c = SgdConfig { lr: 0.1, momentum: 0.9, nesterov, weight_decay: 0.0 };
        let mut store = one_matrix(1, 2, &[1.0, -1.0], &[0.5, 2.0]);
        let mut opt = OptimizerConfig::Sgd(c).build(&Cpu, &mut store);
        opt.step(&Cpu, &mut store, 1.0, None).unwrap();
        opt.step(&Cpu, &mut store, 1.0, None).unwrap();
        // Same gradient twice: buffers g then 1.9g; Nesterov steps along g + 0.9·buf.
        let total = if nesterov { 1.9 + (1.0 + 0.9 * 1.9) } else { 1.0 + 1.9 };
        let want = [1.0 - 0.1 * total * 0.5, -1.0 - 0.1 * total * 2.0];
        for (v, w) in store.values.iter().zip(want) {
            assert!((v - w).abs() < 1e-6, "nesterov={nesterov}: {v} vs {w}");
        }
    }
}

#[test]
fn lion_moves_by_exactly_lr_and_not_on_zero_gradient() {
    let c = LionConfig { lr: 0.003, ..Default::default() };
    let mut store = one_matrix(1, 4, &[0.5, 0.5, 0.5, 0.5], &[1e-9, -3.0, 0.0, 7.0]);
    let delta = one_step(&OptimizerConfig::Lion(c), &mut store);
    assert_eq!(delta.iter().map(|d| (d / 0.003).round()).collect::<Vec<_>>(), [-1.0, 1.0, 0.0, -1.0]);
}

#[test]
fn muon_step_is_the_scaled_polar_factor() {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (12, 7);
    let s: Vec<f32> = (0..7).map(|i| 0.1 + 0.15 * i as f32).collect();
    let (g, polar) = with_known_svd(rows, cols, &s, &mut rng);
    let lr = 0.02;
    let scale = (rows as f32 / cols as f32).sqrt();

    // Polar Express converges: the step is −lr·scale·U·Vᵀ (Nesterov's direction
    // on step 1 is a multiple of G, and NS ignores the scale).
    let c = MuonConfig { lr, coefficients: NsCoefficients::PolarExpress, ns_steps: 10, ..Default::default() };
    let delta = one_step(&OptimizerConfig::Muon(c), &mut one_matrix(rows, cols, &vec![0.0; rows * cols], &g));
    let want: Vec<f32> = polar.iter().map(|p| -lr * scale * p).collect();
    assert!(relative_error(&delta, &want) < 1e-2, "error {}", relative_error(&delta, &want));

    // Keller's quintic (5 steps) stops short of 1 by design: singular values in a band.
    let delta =
        one_step(&OptimizerConfig::Muon(MuonConfig { lr, ..Default::default() }), &mut one_matrix(rows, cols, &vec![0.0; rows * cols], &g));
    let sv = singular_values(&delta, rows, cols).unwrap();
    for v in sv {
        let v = v / (lr * scale);
        assert!((0.6..=1.25).contains(&v), "singular value {v} outside Keller's band");
    }
}

#[test]
fn muon_routes_by_role() {
    let config = MlpConfig { input: 8, hidden: vec![6, 6, 5], classes: 3, activation: Activation::Relu };
    let mut model = Mlp::new(&Cpu, config, 0);
    let specs = model.store.specs.clone();
    let names = |opt: &optlab::optim::Optimizer<Cpu>, group: &str| -> Vec<String> {
        let g = opt.groups.iter().find(|g| g.name == group).unwrap();
        g.params.iter().map(|&i| specs[i].name.clone()).collect()
    };
    let default = OptimizerConfig::Muon(MuonConfig::default()).build(&Cpu, &mut model.store);
    assert_eq!(names(&default, "muon"), ["fc2.weight", "fc3.weight"]);
    assert_eq!(names(&default, "adamw-aux").len(), 6); // fc1.weight, fc4.weight and four biases
    let all = OptimizerConfig::Muon(MuonConfig { all_matrices: true, ..Default::default() }).build(&Cpu, &mut model.store);
    assert_eq!(names(&all, "muon"), ["fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]);
}

#[test]
fn shampoo_first_step_is_the_polar_factor() {
    // L = GGᵀ, R = GᵀG ⇒ L^{-1/4}·G·R^{-1/4} = U·Vᵀ for full-rank G.
    let mut rng = StdRng::seed_from_u64(3);
    let s = [2.0, 1.5, 1.0, 0.8, 0.6, 0.5];
    let (g, polar) = with_known_svd(6, 6, &s, &mut rng);
    let c = ShampooConfig { lr: 0.1, beta1: 0.0, grafting: Grafting::None, precondition_frequency: 1, ..Default::default() };
    let delta = one_step(&OptimizerConfig::Shampoo(c), &mut one_matrix(6, 6, &[0.0; 36], &g));
    let want: Vec<f32> = polar.iter().map(|p| -0.1 * p).collect();
    assert!(relative_error(&delta, &want) < 1e-3, "error {}", relative_error(&delta, &want));
}

#[test]
fn shampoo_diagonal_fallback_matches_the_formula() {
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, cols) = (4, 5);
    let g = random(rows * cols, &mut rng);
    let c = ShampooConfig { lr: 1.0, beta1: 0.0, grafting: Grafting::None, max_preconditioner_dim: 0, ..Default::default() };
    let delta = one_step(&OptimizerConfig::Shampoo(c), &mut one_matrix(rows, cols, &vec![0.0; rows * cols], &g));
    let eps = c.epsilon.absolute as f32;
    for r in 0..rows {
        for k in 0..cols {
            let row: f32 = (0..cols).map(|j| g[r * cols + j].powi(2)).sum();
            let col: f32 = (0..rows).map(|i| g[i * cols + k].powi(2)).sum();
            let want = -g[r * cols + k] * (row + eps).powf(-0.25) * (col + eps).powf(-0.25);
            assert!((delta[r * cols + k] - want).abs() < 1e-5 * want.abs().max(1.0), "({r},{k})");
        }
    }
}

#[test]
fn shampoo_adam_grafting_takes_adams_step_norm() {
    let mut rng = StdRng::seed_from_u64(5);
    let g = random(20, &mut rng);
    let c = ShampooConfig { lr: 0.01, ..Default::default() };
    let delta = one_step(&OptimizerConfig::Shampoo(c), &mut one_matrix(4, 5, &[0.0; 20], &g));
    // Adam's first step is lr·sign(g) per coordinate: norm lr·sqrt(20).
    let norm = delta.iter().map(|d| f64::from(*d).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 0.01 * 20f64.sqrt()).abs() < 1e-5, "{norm}");
}

#[test]
fn shampoo_statistics_sum_over_steps() {
    let mut rng = StdRng::seed_from_u64(6);
    let (g1, g2) = (random(6, &mut rng), random(6, &mut rng));
    let mut store = one_matrix(2, 3, &[0.0; 6], &g1);
    let mut opt = OptimizerConfig::Shampoo(ShampooConfig::default()).build(&Cpu, &mut store);
    opt.step(&Cpu, &mut store, 1.0, None).unwrap();
    store.grads.copy_from_slice(&g2);
    opt.step(&Cpu, &mut store, 1.0, None).unwrap();
    let state = opt.groups[0].rule.state_mut();
    let left = state.into_iter().find(|(n, _)| n == "p0.left.stat").unwrap().1;
    for i in 0..2 {
        for j in 0..2 {
            let want: f32 = (0..3).map(|k| g1[i * 3 + k] * g1[j * 3 + k] + g2[i * 3 + k] * g2[j * 3 + k]).sum();
            assert!((left[i * 2 + j] - want).abs() < 1e-5);
        }
    }
}

/// Θ after each of `grads.len()` steps of `config` from `values` (one rows×cols matrix).
fn trajectory(config: &OptimizerConfig, (rows, cols): (usize, usize), values: &[f32], grads: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut store = one_matrix(rows, cols, values, &grads[0]);
    let mut opt = config.build(&Cpu, &mut store);
    grads
        .iter()
        .map(|g| {
            store.grads.copy_from_slice(g);
            opt.step(&Cpu, &mut store, 1.0, None).unwrap();
            store.values.clone()
        })
        .collect()
}

/// A·X·B for an m×n X and square A (m×m), B (n×n).
fn sandwich(a: &[f32], x: &[f32], b: &[f32], m: usize, n: usize) -> Vec<f32> {
    let (mut ax, mut axb) = (vec![0.0; m * n], vec![0.0; m * n]);
    matmul(&mut ax, a, x, m, m, n, false, false, 1.0, 0.0);
    matmul(&mut axb, &ax, b, m, n, n, false, false, 1.0, 0.0);
    axb
}

#[test]
fn soap_without_rotations_is_adamw_one_step_late() {
    // The first call only starts the statistics; then, with no side rotated,
    // each step is AdamW's step on the same gradient.
    let mut rng = StdRng::seed_from_u64(8);
    let (rows, cols) = (5, 7);
    let p = random(rows * cols, &mut rng);
    let grads: Vec<Vec<f32>> = (0..6).map(|_| random(rows * cols, &mut rng)).collect();
    let soap = SoapConfig { max_preconditioner_dim: 0, ..Default::default() };
    let adamw = AdamWConfig { lr: soap.lr, beta1: soap.beta1, beta2: soap.beta2, eps: soap.eps, weight_decay: soap.weight_decay };
    let soap = trajectory(&OptimizerConfig::Soap(soap), (rows, cols), &p, &grads);
    let adamw = trajectory(&OptimizerConfig::AdamW(adamw), (rows, cols), &p, &grads[1..]);
    assert_eq!(soap[0], p, "the first call must not move the matrix");
    for (t, (s, a)) in soap[1..].iter().zip(&adamw).enumerate() {
        let err = s.iter().zip(a).map(|(s, a)| (s - a).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-6, "step {}: max |SOAP − AdamW| = {err:e}", t + 2);
    }
}

#[test]
fn soap_is_equivariant_to_rotations_of_both_sides_and_adamw_is_not() {
    // With weights A·W·B and gradients A·G·B (A, B orthogonal), the statistics
    // are A·L·Aᵀ and Bᵀ·R·B, the bases A·Q_L and Bᵀ·Q_R, the rotated gradients
    // the same: the update is A·ΔW·B. Square, so that one gradient's statistics
    // already have distinct eigenvalues (a degenerate eigenspace has no unique
    // basis); bases refreshed every step.
    let mut rng = StdRng::seed_from_u64(9);
    let (m, n) = (5, 5);
    let (a, b) = (orthonormal(m, m, &mut rng), orthonormal(n, n, &mut rng));
    let w = random(m * n, &mut rng);
    let grads: Vec<Vec<f32>> = (0..4).map(|_| random(m * n, &mut rng)).collect();
    let turned: Vec<Vec<f32>> = grads.iter().map(|g| sandwich(&a, g, &b, m, n)).collect();
    let delta = |config: &OptimizerConfig, w: &[f32], grads: &[Vec<f32>]| -> Vec<f32> {
        trajectory(config, (m, n), w, grads).pop().unwrap().iter().zip(w).map(|(x, w)| x - w).collect()
    };
    let soap = OptimizerConfig::Soap(SoapConfig { precondition_frequency: 1, ..Default::default() });
    let adamw = OptimizerConfig::AdamW(AdamWConfig::default());
    let errors = [soap, adamw].map(|config| {
        let want = sandwich(&a, &delta(&config, &w, &grads), &b, m, n);
        relative_error(&delta(&config, &sandwich(&a, &w, &b, m, n), &turned), &want)
    });
    assert!(errors[0] < 3e-4, "SOAP: A·ΔW·B off by {:e}", errors[0]);
    assert!(errors[1] > 0.1, "AdamW should not be rotation equivariant: {:e}", errors[1]);
}

#[test]
fn soap_resumed_from_its_state_continues_exactly() {
    // A matrix (SOAP) and a bias (auxiliary AdamW); bases after calls 1, 4 and 7,
    // so the resumed steps 5–7 use the restored bases and step 8 a basis made
    // from the restored statistics.
    let mut rng = StdRng::seed_from_u64(10);
    let layout = [("w".to_string(), 6, 4, Role::HiddenMatrix), ("b".to_string(), 1, 6, Role::Vector)];
    let init = random(30, &mut rng);
    let grads: Vec<Vec<f32>> = (0..8).map(|_| random(30, &mut rng)).collect();
    let config = OptimizerConfig::Soap(SoapConfig { precondition_frequency: 3, ..Default::default() });
    let mut store = ParamStore::new(&Cpu, &layout, &init);
    let mut first = config.build(&Cpu, &mut store);
    for g in &grads[..4] {
        store.grads.copy_from_slice(g);
        first.step(&Cpu, &mut store, 1.0, None).unwrap();
    }
    let mut resumed_store = ParamStore::new(&Cpu, &layout, &store.values);
    let mut resumed = config.build(&Cpu, &mut resumed_store);
    resumed.steps = first.steps;
    for (from, to) in first.groups.iter_mut().zip(&mut resumed.groups) {
        let saved: Vec<(String, Vec<f32>)> = from.rule.state_mut().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let names: Vec<&str> = saved.iter().map(|(k, _)| k.as_str()).collect();
        let want: &[&str] = match from.name.as_str() {
            "soap" => &["m", "v", "p0.left.stat", "p0.left.basis", "p0.right.stat", "p0.right.basis"],
            _ => &["m", "v"],
        };
        assert_eq!(names, want, "group {}", from.name);
        for ((_, dst), (_, src)) in to.rule.state_mut().into_iter().zip(&saved) {
            dst.copy_from_slice(src);
        }
    }
    for g in &grads[4..] {
        store.grads.copy_from_slice(g);
        resumed_store.grads.copy_from_slice(g);
        first.step(&Cpu, &mut store, 1.0, None).unwrap();
        resumed.step(&Cpu, &mut resumed_store, 1.0, None).unwrap();
        assert_eq!(store.values, resumed_store.values, "step {}", first.steps);
    }
}

#[test]
fn soap_captures_the_direction_it_steps_along() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut store = one_matrix(5, 3, &random(15, &mut rng), &random(15, &mut rng));
    let c = SoapConfig { lr: 0.01, weight_decay: 0.0, ..Default::default() };
    let mut opt = OptimizerConfig::Soap(c).build(&Cpu, &mut store);
    let mut captures = Vec::new();
    opt.step(&Cpu, &mut store, 1.0, Some(&mut captures)).unwrap();
    assert!(captures.is_empty(), "the first call only gathers statistics");
    store.grads = random(15, &mut rng);
    let before = store.values.clone();
    opt.step(&Cpu, &mut store, 1.0, Some(&mut captures)).unwrap();
    assert_eq!(captures.iter().map(|c| (c.param, c.kind)).collect::<Vec<_>>(), [(0, "soap_direction")]);
    for ((after, before), d) in store.values.iter().zip(&before).zip(&captures[0].values) {
        assert!((after - before + 0.01 * d).abs() < 1e-6, "Δθ = {} but −lr·D = {}", after - before, -0.01 * d);
    }
}

#[test]
fn every_optimizer_fits_a_small_problem() {
    // Four separable Gaussian blobs in 10 dimensions.
    let mut rng = StdRng::seed_from_u64(7);
    let centers = random(40, &mut rng);
    let labels: Vec<u8> = (0..64).map(|i| (i % 4) as u8).collect();
    let x: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..10).map(|d| 3.0 * centers[l as usize * 10 + d] + 0.3 * rng.random_range(-1.0..1.0)).collect::<Vec<_>>())
        .collect();
    let config = MlpConfig { input: 10, hidden: vec![16, 16], classes: 4, activation: Activation::Relu };
    for name in optlab::optim::OPTIMIZER_NAMES {
        let mut model = Mlp::new(&Cpu, config.clone(), 1);
        let config = match OptimizerConfig::by_name(name).unwrap() {
            // Lion's default lr (1e-4) suits long runs; 150 steps need a larger one.
            OptimizerConfig::Lion(c) => OptimizerConfig::Lion(LionConfig { lr: 1e-3, ..c }),
            // muon-fast's lr (0.002) is document 001's for its ViT; Muon's suits 150 steps.
            OptimizerConfig::Muon(c) if name == "muon-fast" => OptimizerConfig::Muon(MuonConfig { lr: 0.02, ..c }),
            // PSGD-Kron's P starts at I, so its first steps are lr·m̂, not Adam's lr·sign-like ones.
            OptimizerConfig::PsgdKron(c) => OptimizerConfig::PsgdKron(PsgdKronConfig { lr: 0.01, ..c }),
            c => c,
        };
        let mut opt = config.build(&Cpu, &mut model.store);
        let first = model.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss;
        let mut last = first;
        for _ in 0..150 {
            last = model.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss;
            opt.step(&Cpu, &mut model.store, 1.0, None).unwrap();
        }
        assert!(last < 0.3 * first, "{name}: loss {first} → {last}");
    }
}

#[test]
fn unknown_optimizer_names_the_known_ones() {
    let err = OptimizerConfig::by_name("adamm").unwrap_err().to_string();
    for name in optlab::optim::OPTIMIZER_NAMES {
        assert!(err.contains(name), "{name} missing from {err}");
    }
    assert!(err.contains("adamm"), "{err}");
}

/// `torch.optim`'s per-coordinate optimizers transcribed line by line from
/// PyTorch's single-tensor code paths, in f64: the trajectory of one coordinate
/// from `p` under gradients `grads` (each step's gradient given the parameter).
fn torch_reference(config: &OptimizerConfig, mut p: f64, grads: &[f64]) -> Vec<f64> {
    let (mut s0, mut s1, mut s2) = (0.0f64, 0.0f64, 0.0f64);
    if let OptimizerConfig::Adagrad(c) = config {
        s0 = c.initial_accumulator_value as f64;
    }
    let mut out = Vec::new();
    for (k, &g0) in grads.iter().enumerate() {
        let t = (k + 1) as f64;
        match config {
            OptimizerConfig::Adagrad(c) => {
                let g = g0 + c.weight_decay as f64 * p;
                let clr = c.lr as f64 / (1.0 + (t - 1.0) * c.lr_decay as f64);
                s0 += g * g;
                let std = s0.sqrt() + c.eps as f64;
                p -= clr * g / std;
            }
            OptimizerConfig::RmsProp(c) => {
                let (alpha, eps) = (c.alpha as f64, c.eps as f64);
                let g = g0 + c.weight_decay as f64 * p;
                s0 = alpha * s0 + (1.0 - alpha) * g * g;
                let avg = if c.centered {
                    s2 = alpha * s2 + (1.0 - alpha) * g;
                    (s0 - s2 * s2).sqrt() + eps
                } else {
                    s0.sqrt() + eps
                };
                if c.momentum > 0.0 {
                    s1 = c.momentum as f64 * s1 + g / avg;
                    p -= c.lr as f64 * s1;
                } else {
                    p -= c.lr as f64 * g / avg;
                }
            }
            OptimizerConfig::Adadelta(c) => {
                let (rho, eps) = (c.rho as f64, c.eps as f64);
                let g = g0 + c.weight_decay as f64 * p;
                s0 = rho * s0 + (1.0 - rho) * g * g;
                let std = (s0 + eps).sqrt();
                let delta = (s1 + eps).sqrt() / std * g;
                s1 = rho * s1 + (1.0 - rho) * delta * delta;
                p -= c.lr as f64 * delta;
            }
            OptimizerConfig::Adam(c) => {
                let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
                let g = g0 + c.weight_decay as f64 * p;
                s0 = b1 * s0 + (1.0 - b1) * g;
                s1 = b2 * s1 + (1.0 - b2) * g * g;
                let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
                let v = if c.amsgrad {
                    s2 = s2.max(s1);
                    s2
                } else {
                    s1
                };
                let denom = v.sqrt() / bc2.sqrt() + c.eps as f64;
                p -= c.lr as f64 / bc1 * s0 / denom;
            }
            _ => unreachable!("not a per-coordinate optimizer"),
        }
        out.push(p);
    }
    out
}

#[test]
fn per_coordinate_optimizers_follow_pytorchs_algorithm() {
    let configs = [
        OptimizerConfig::Adagrad(AdagradConfig { lr: 0.1, lr_decay: 0.05, weight_decay: 0.01, initial_accumulator_value: 0.1, eps: 1e-10 }),
        OptimizerConfig::RmsProp(RmsPropConfig::default()),
        OptimizerConfig::RmsProp(RmsPropConfig { momentum: 0.9, centered: true, weight_decay: 0.01, ..RmsPropConfig::default() }),
        OptimizerConfig::Adadelta(AdadeltaConfig { weight_decay: 0.01, ..AdadeltaConfig::default() }),
        OptimizerConfig::Adam(AdamConfig { weight_decay: 0.1, ..AdamConfig::default() }),
        OptimizerConfig::by_name("amsgrad").unwrap(),
    ];
    let mut rng = StdRng::seed_from_u64(11);
    let (rows, cols) = (3, 5);
    let start = random(rows * cols, &mut rng);
    // Gradients that shrink, so AMSGrad's maximum differs from Adam's average.
    let grads: Vec<Vec<f32>> = (0..8).map(|t| random(rows * cols, &mut rng).into_iter().map(|g| g / (1.0 + t as f32)).collect()).collect();
    for config in &configs {
        let ours = trajectory(config, (rows, cols), &start, &grads);
        for k in 0..rows * cols {
            let column: Vec<f64> = grads.iter().map(|g| g[k] as f64).collect();
            let want = torch_reference(config, start[k] as f64, &column);
            for (t, (got, want)) in ours.iter().map(|p| p[k] as f64).zip(want).enumerate() {
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{config:?} coordinate {k} step {}: {got} vs {want}", t + 1);
            }
        }
    }
}

#[test]
fn per_coordinate_optimizers_on_a_constant_gradient_in_closed_form() {
    let g = 0.5f32;
    let constant = vec![vec![g; 4]; 6];
    let run =
        |config: OptimizerConfig| trajectory(&config, (2, 2), &[1.0; 4], &constant).into_iter().map(|p| p[0] as f64).collect::<Vec<_>>();
    // AdaGrad: Σg² = t·g², so step t is lr/√t whatever g.
    let lr = 0.1;
    let adagrad = run(OptimizerConfig::Adagrad(AdagradConfig { lr, ..Default::default() }));
    // The parameter after each of 6 steps of the given lengths, from 1.
    let walk = |step: &dyn Fn(i32) -> f64| -> Vec<f64> {
        (1..=6)
            .scan(1.0, |p, t| {
                *p -= step(t);
                Some(*p)
            })
            .collect()
    };
    let want = walk(&|t| lr as f64 / f64::from(t).sqrt());
    assert!(adagrad.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "{adagrad:?} vs {want:?}");
    // RMSProp: E[g²] = (1 − αᵗ)·g², so step t is lr/√(1 − αᵗ).
    let rms = run(OptimizerConfig::RmsProp(RmsPropConfig::default()));
    let want = walk(&|t| 0.01 / (1.0 - 0.99f64.powi(t)).sqrt());
    assert!(rms.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5), "{rms:?} vs {want:?}");
    // Adadelta's first step is √ε/√((1−ρ)g² + ε)·g: tiny, whatever the scale of g.
    let ada = run(OptimizerConfig::Adadelta(AdadeltaConfig::default()));
    let first = (1e-6f64).sqrt() / (0.1 * 0.25f64 + 1e-6).sqrt() * 0.5;
    assert!((1.0 - ada[0] - first).abs() < 1e-7, "{} vs {first}", 1.0 - ada[0]);
    // Adam's steps on a constant gradient are lr each (bias correction makes m̂ = g, v̂ = g²).
    let adam = run(OptimizerConfig::Adam(AdamConfig::default()));
    assert!(adam.iter().enumerate().all(|(t, p)| (p - (1.0 - 1e-3 * (t + 1) as f64)).abs() < 1e-6), "{adam:?}");
}

#[test]
fn adams_coupled_l2_is_normalised_away_and_adamws_is_not() {
    // Zero gradient, weight decay 0.1: Adam's first step is lr·sign(p) (the L2 term is
    // normalised like a gradient), AdamW's is lr·wd·p (decoupled).
    let values = [2.0, -0.5, 0.25, -4.0];
    let mut store = one_matrix(2, 2, &values, &[0.0; 4]);
    let adam = one_step(&OptimizerConfig::Adam(AdamConfig { weight_decay: 0.1, ..Default::default() }), &mut store);
    let mut store = one_matrix(2, 2, &values, &[0.0; 4]);
    let adamw = one_step(&OptimizerConfig::AdamW(AdamWConfig { weight_decay: 0.1, ..Default::default() }), &mut store);
    for k in 0..4 {
        assert!((adam[k] + 1e-3 * values[k].signum()).abs() < 1e-7, "Adam Δ = {}", adam[k]);
        // (Within f32 round-off of p·(1 − lr·wd) for |p| up to 4.)
        assert!((adamw[k] + 1e-3 * 0.1 * values[k]).abs() < 1e-6, "AdamW Δ = {}", adamw[k]);
    }
}

#[test]
fn adam_without_weight_decay_is_adamw_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(5);
    let start = random(12, &mut rng);
    let grads: Vec<Vec<f32>> = (0..5).map(|_| random(12, &mut rng)).collect();
    let adam = trajectory(&OptimizerConfig::by_name("adam").unwrap(), (3, 4), &start, &grads);
    let adamw = trajectory(&OptimizerConfig::by_name("adamw").unwrap(), (3, 4), &start, &grads);
    assert_eq!(adam, adamw);
}

#[test]
fn muon_fast_scales_by_the_spectral_condition_and_its_penalty() {
    // A 64×16 matrix: spectral scaling √(64/16) = 2; the penalty (16/256)² = 1/256.
    let (rows, cols) = (64, 16);
    let mut rng = StdRng::seed_from_u64(9);
    let g = random(rows * cols, &mut rng);
    let step = |c: MuonConfig| one_step(&OptimizerConfig::Muon(c), &mut one_matrix(rows, cols, &vec![0.0; rows * cols], &g));
    let plain = step(MuonConfig { lr: 1.0, scaling: optlab::optim::MuonScaling::None, ..Default::default() });
    let fast = MuonConfig { lr: 1.0, ..MuonConfig::muon_fast() };
    let spectral = step(fast);
    let extra = step(MuonConfig { scale_extra: 0.5, ..fast });
    let penalised = step(MuonConfig { small_matrix_penalty: 2.0, ..fast });
    for k in 0..rows * cols {
        assert!((spectral[k] - 2.0 * plain[k]).abs() < 1e-5, "spectral");
        assert!((extra[k] - plain[k]).abs() < 1e-5, "scale_extra");
        assert!((penalised[k] - 2.0 / 256.0 * plain[k]).abs() < 1e-7, "penalty");
    }
    // A side of 256 or more is not penalised.
    assert_eq!(MuonConfig { small_matrix_penalty: 2.0, ..fast }.step_scale(256, 256), 1.0);
    // muon-fast orthogonalizes every matrix, the head and the first layer included.
    let mut model = Mlp::new(&Cpu, MlpConfig { input: 6, hidden: vec![5], classes: 3, activation: Activation::Relu }, 0);
    let opt = OptimizerConfig::by_name("muon-fast").unwrap().build(&Cpu, &mut model.store);
    assert_eq!(opt.groups[0].params.len(), 2, "fc1 and fc2 weights");
}

#[test]
fn ns_tol_stops_each_matrix_at_the_first_settled_step() {
    use optlab::linalg::newton_schulz;
    // Polar Express converges (Keller's quintic oscillates by design, so its iterates
    // never settle). Two matrices of one shape (one batched call): one well conditioned, one not,
    // so they settle at different steps.
    let (rows, cols) = (12, 8);
    let mut rng = StdRng::seed_from_u64(3);
    let (easy, _) = with_known_svd(rows, cols, &[1.0; 8], &mut rng);
    let (hard, _) = with_known_svd(rows, cols, &[1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003], &mut rng);
    let tol = 0.05f32;
    // The reference: each matrix's iterates by the plain function, stopped by the same rule.
    let settled = |g: &[f32]| -> (usize, Vec<f32>) {
        let mut previous = newton_schulz(g, rows, cols, 1, NsCoefficients::PolarExpress);
        for k in 2..=10 {
            let next = newton_schulz(g, rows, cols, k, NsCoefficients::PolarExpress);
            let change: f32 = next.iter().zip(&previous).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
            let norm: f32 = previous.iter().map(|a| a * a).sum::<f32>().sqrt();
            if change < tol * norm {
                return (k, next);
            }
            previous = next;
        }
        (10, previous)
    };
    let ((k_easy, want_easy), (k_hard, want_hard)) = (settled(&easy), settled(&hard));
    assert!(k_easy < k_hard && k_hard < 10, "the test needs different early stops: {k_easy}, {k_hard}");
    let specs = [("a".to_string(), rows, cols, Role::HiddenMatrix), ("b".to_string(), rows, cols, Role::HiddenMatrix)];
    let mut store = ParamStore::new(&Cpu, &specs, &vec![0.0; 2 * rows * cols]);
    store.grads.copy_from_slice(&[easy, hard].concat());
    let config = MuonConfig {
        lr: 1.0,
        momentum: 0.0,
        nesterov: false,
        ns_steps: 10,
        ns_tol: tol,
        coefficients: NsCoefficients::PolarExpress,
        scaling: optlab::optim::MuonScaling::None,
        ..Default::default()
    };
    let mut opt = OptimizerConfig::Muon(config).build(&Cpu, &mut store);
    opt.step(&Cpu, &mut store, 1.0, None).unwrap();
    let got: Vec<f32> = store.values.iter().map(|v| -v).collect();
    let errors = (relative_error(&got[..rows * cols], &want_easy), relative_error(&got[rows * cols..], &want_hard));
    assert!(errors.0 < 1e-6 && errors.1 < 1e-6, "stopped at {k_easy} and {k_hard}: errors {errors:?}");
    let stops = opt.groups[0].rule.diagnostics();
    assert_eq!(stops, [("muon_ns_early_stops", 2.0)], "both stopped before 10 steps");
}

/// ‖x‖ after `steps` of `config` on f(x) = ½·Σ aᵢ·xᵢ² from x = 1 (one 2×2 matrix).
fn on_a_quadratic(config: &OptimizerConfig, curvature: [f32; 4], steps: usize) -> f64 {
    let mut store = one_matrix(2, 2, &[1.0; 4], &curvature);
    let mut opt = config.build(&Cpu, &mut store);
    for _ in 0..steps {
        let g: Vec<f32> = store.values.iter().zip(curvature).map(|(x, a)| a * x).collect();
        store.grads.copy_from_slice(&g);
        opt.step(&Cpu, &mut store, 1.0, None).unwrap();
    }
    store.values.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

#[test]
fn anderson_gda_with_full_memory_solves_a_quadratic_like_gmres() {
    // Four distinct curvatures: GMRES (= Anderson with memory ≥ 4 on a linear
    // fixed point, Walker & Ni 2011) is exact after at most 5 steps; GD at lr 0.05
    // still holds 95% of the slowest coordinate per step.
    let curvature = [1.0, 2.0, 5.0, 10.0];
    let anderson = |memory| OptimizerConfig::AndersonGda(optlab::optim::AndersonGdaConfig { lr: 0.05, memory, ..Default::default() });
    let gd = on_a_quadratic(&OptimizerConfig::Sgd(SgdConfig { lr: 0.05, momentum: 0.0, ..Default::default() }), curvature, 6);
    let full = on_a_quadratic(&anderson(4), curvature, 6);
    let short = on_a_quadratic(&anderson(1), curvature, 6);
    assert!(gd > 0.7 && full < 1e-3, "GD {gd}, Anderson(4) {full}");
    assert!(short > full && short < gd, "memory 1 lies between: {short}");
    // Memory 1 from step 1 is plain GD: no difference is held yet.
    assert_eq!(
        on_a_quadratic(&anderson(1), curvature, 1),
        on_a_quadratic(&OptimizerConfig::Sgd(SgdConfig { lr: 0.05, momentum: 0.0, ..Default::default() }), curvature, 1)
    );
}

#[test]
fn normuon_follows_the_authors_update() {
    use optlab::linalg::newton_schulz;
    let (rows, cols) = (6, 10);
    let mut rng = StdRng::seed_from_u64(21);
    let (g1, g2) = (random(rows * cols, &mut rng), random(rows * cols, &mut rng));
    let config = MuonConfig { lr: 1.0, ..MuonConfig::normuon() };
    let steps = trajectory(&OptimizerConfig::Muon(config), (rows, cols), &vec![0.0; rows * cols], &[g1.clone(), g2.clone()]);
    // The authors' normuon_update in f64 from the same Newton-Schulz output (f32, as ours).
    let (beta, beta2) = (0.95f32, 0.95f64);
    let mut momentum = vec![0.0f32; rows * cols];
    let mut v = vec![0.0f64; rows];
    let mut p = vec![0.0f64; rows * cols];
    let mut want = Vec::new();
    for g in [&g1, &g2] {
        momentum.iter_mut().zip(g).for_each(|(m, &g)| *m = beta * *m + (1.0 - beta) * g);
        let nesterov: Vec<f32> = g.iter().zip(&momentum).map(|(&g, &m)| (1.0 - beta) * g + beta * m).collect();
        let o: Vec<f64> = newton_schulz(&nesterov, rows, cols, 5, NsCoefficients::Keller).into_iter().map(f64::from).collect();
        let norm = o.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (r, v) in v.iter_mut().enumerate() {
            let mean = o[r * cols..(r + 1) * cols].iter().map(|x| x * x).sum::<f64>() / cols as f64;
            *v = beta2 * *v + (1.0 - beta2) * mean;
        }
        let scaled: Vec<f64> = o.iter().enumerate().map(|(k, x)| x / (v[k / cols].sqrt() + 1e-10)).collect();
        let new_norm = scaled.iter().map(|x| x * x).sum::<f64>().sqrt();
        // Keller's scale max(1, 6/10)^½ = 1.
        p.iter_mut().zip(&scaled).for_each(|(p, s)| *p -= s * norm / (new_norm + 1e-10));
        want.push(p.clone());
    }
    for (got, want) in steps.iter().zip(&want) {
        let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        assert!(relative_error(got, &want) < 1e-5, "{}", relative_error(got, &want));
    }
    // The first step: every row (output neuron) moves by the same amount, and the
    // step keeps Muon's Frobenius norm.
    let first = &steps[0];
    let row_norms: Vec<f32> = first.chunks(cols).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
    assert!(row_norms.iter().all(|n| (n - row_norms[0]).abs() < 1e-4 * row_norms[0]), "{row_norms:?}");
    let muon =
        trajectory(&OptimizerConfig::Muon(MuonConfig { lr: 1.0, ..Default::default() }), (rows, cols), &vec![0.0; rows * cols], &[g1]);
    let norm = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm(first) - norm(&muon[0])).abs() < 1e-4 * norm(&muon[0]));
}

/// A row-major a×b times b×c product in f64.
fn product(x: &[f64], y: &[f64], a: usize, b: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; a * c];
    for i in 0..a {
        for k in 0..b {
            for j in 0..c {
                out[i * c + j] += x[i * b + k] * y[k * c + j];
            }
        }
    }
    out
}

fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols).map(|k| x[(k % rows) * cols + k / rows]).collect()
}

#[test]
fn dion_follows_the_reference_update_and_feeds_back_the_error() {
    use optlab::optim::{DionConfig, UpdateRule};
    // A wide 5×8 matrix at rank 3: the reference transposes it (B = Mᵀ, 8×5).
    let (rows, cols, rank) = (5, 8, 3);
    let mut rng = StdRng::seed_from_u64(2);
    let g = random(rows * cols, &mut rng);
    let config = DionConfig { lr: 0.1, rank_fraction: 0.6, weight_decay: 0.0, ..Default::default() };
    let mut store = one_matrix(rows, cols, &vec![0.0; rows * cols], &g);
    let mut dion = optlab::optim::Dion::new(&Cpu, &store, &[0], config);
    let q0: Vec<f64> = dion.state_mut().into_iter().find(|(n, _)| n == "q.0").unwrap().1.iter().map(|&v| f64::from(v)).collect();
    dion.step(&Cpu, &mut store, &[0], 0.1, 1, None).unwrap();
    // The reference in f64: B = Mᵀ (8×5), P = orth(B·Q) by Gram-Schmidt, R = Bᵀ·P, Q' = colnorm(R), ΔW = −lr·√(5/8)·(Q'·Pᵀ).
    let b = transpose(&g.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), rows, cols);
    let mut p = product(&b, &q0, cols, rows, rank);
    for j in 0..rank {
        for k in 0..j {
            let d: f64 = (0..cols).map(|i| p[i * rank + j] * p[i * rank + k]).sum();
            (0..cols).for_each(|i| p[i * rank + j] -= d * p[i * rank + k]);
        }
        let n = (0..cols).map(|i| p[i * rank + j].powi(2)).sum::<f64>().sqrt();
        (0..cols).for_each(|i| p[i * rank + j] /= n);
    }
    let r = product(&transpose(&b, cols, rows), &p, rows, cols, rank);
    let mut q = r.clone();
    for j in 0..rank {
        let n = (0..rows).map(|i| r[i * rank + j].powi(2)).sum::<f64>().sqrt();
        (0..rows).for_each(|i| q[i * rank + j] = r[i * rank + j] / (n + 1e-8));
    }
    let want: Vec<f32> =
        product(&q, &transpose(&p, cols, rank), rows, rank, cols).iter().map(|v| (-0.1 * (5.0f64 / 8.0).sqrt() * v) as f32).collect();
    assert!(relative_error(&store.values, &want) < 1e-5, "{}", relative_error(&store.values, &want));
    // The step has rank 3; the momentum keeps the rest: M = G − (1−μ)·R·Pᵀ.
    let sv = singular_values(&store.values, rows, cols).unwrap();
    assert!(sv[rank] < 1e-5 * sv[0], "{sv:?}");
    let feedback: Vec<f32> = product(&r, &transpose(&p, cols, rank), rows, rank, cols)
        .iter()
        .zip(&g)
        .map(|(rp, &g)| (f64::from(g) - 0.05 * rp) as f32)
        .collect();
    let momentum = dion.state_mut().into_iter().find(|(n, _)| n == "momentum").unwrap().1.clone();
    assert!(relative_error(&momentum, &feedback) < 1e-5);
    // At full rank the captured part is all of B, so the momentum decays by μ.
    let mut store = one_matrix(rows, cols, &vec![0.0; rows * cols], &g);
    let mut full = optlab::optim::Dion::new(&Cpu, &store, &[0], DionConfig { rank_fraction: 1.0, ..config });
    full.step(&Cpu, &mut store, &[0], 0.1, 1, None).unwrap();
    let decayed: Vec<f32> = g.iter().map(|v| 0.95 * v).collect();
    assert!(relative_error(&full.state_mut()[0].1.clone(), &decayed) < 1e-5);
}

/// 1,000 steps of `config` on random gradients, on an MLP 6 → `hidden` → 3: the
/// store after them, and the largest value any step reported as `report`.
fn thousand_random_steps(config: &OptimizerConfig, hidden: Vec<usize>, report: &str, seed: u64) -> (ParamStore<Cpu>, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = Mlp::new(&Cpu, MlpConfig { input: 6, hidden, classes: 3, activation: Activation::Relu }, 0).store;
    let mut opt = config.build(&Cpu, &mut store);
    let mut worst = 0.0f64;
    for _ in 0..1000 {
        let g = random(store.len(), &mut rng);
        store.grads.copy_from_slice(&g);
        opt.step(&Cpu, &mut store, 1.0, None).unwrap();
        worst = opt.groups.iter().flat_map(|g| g.rule.last_step()).filter(|r| r.name == report).fold(worst, |w, r| w.max(r.value));
    }
    (store, worst)
}

#[test]
fn oblique_keeps_unit_columns_for_a_thousand_steps_on_any_base() {
    use optlab::optim::ObliqueConfig;
    for base in [OptimizerConfig::by_name("adamw").unwrap(), OptimizerConfig::Muon(MuonConfig { all_matrices: true, ..Default::default() })]
    {
        let config = OptimizerConfig::Oblique(ObliqueConfig { base: Box::new(base.clone()) });
        let (store, worst) = thousand_random_steps(&config, vec![7, 5], "oblique_drift", 13);
        // fc2 is the one hidden matrix (5×7): every column has unit norm, at round-off.
        let i = store.specs.iter().position(|s| s.name == "fc2.weight").unwrap();
        let w = store.value(i);
        let (rows, cols) = (store.specs[i].rows, store.specs[i].cols);
        for c in 0..cols {
            let norm = (0..rows).map(|r| f64::from(w[r * cols + c]).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "{base:?}: column {c} has norm {norm}");
        }
        assert!(worst < 1e-6, "recorded drift {worst}");
    }
}

#[test]
fn oblique_removes_the_radial_part_of_a_step() {
    use optlab::optim::oblique::project_and_retract;
    // W with unit columns; a step along each column itself changes nothing…
    let w = [0.6f32, 0.0, 0.8, 1.0];
    let radial: Vec<f32> = w.iter().map(|x| x * 1.3).collect();
    let (kept, drift) = project_and_retract(&w, &radial, 2, 2);
    assert!(kept.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-7) && drift < 1e-7, "{kept:?}");
    // …and a tangent step of length θ ≪ 1 turns a column by about θ.
    let tangent = [0.6 - 0.8 * 0.01, 0.0, 0.8 + 0.6 * 0.01, 1.0];
    let (kept, _) = project_and_retract(&w, &tangent, 2, 2);
    let cos = 0.6 * kept[0] + 0.8 * kept[2];
    assert!((f64::from(cos).acos() - 0.01).abs() < 1e-4, "{kept:?}");
}

/// A row-major rows×cols matrix as a faer matrix.
fn mat(x: &[f32], rows: usize, cols: usize) -> faer::Mat<f64> {
    faer::Mat::from_fn(rows, cols, |i, j| f64::from(x[i * cols + j]))
}

/// Σσ of a faer matrix (the nuclear norm).
fn nuclear(m: &faer::Mat<f64>) -> f64 {
    let x: Vec<f32> = (0..m.nrows() * m.ncols()).map(|k| m[(k / m.ncols(), k % m.ncols())] as f32).collect();
    singular_values(&x, m.nrows(), m.ncols()).unwrap().iter().map(|&s| f64::from(s)).sum()
}

/// ‖m‖₂, the largest singular value (f64).
fn spectral(m: &faer::Mat<f64>) -> f64 {
    m.singular_values().unwrap().into_iter().fold(0.0, f64::max)
}

fn inner(a: &faer::Mat<f64>, b: &faer::Mat<f64>) -> f64 {
    (0..a.nrows()).flat_map(|i| (0..a.ncols()).map(move |j| (i, j))).map(|(i, j)| a[(i, j)] * b[(i, j)]).sum()
}

#[test]
fn stiefel_step_on_a_square_matrix_is_the_closed_form() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(21);
    let n = 6;
    let (w, g) = (mat(&orthonormal(n, n, &mut rng), n, n), mat(&random(n * n, &mut rng), n, n));
    let step = manifold_step(w.as_ref(), g.as_ref(), &ManifoldMuonConfig::default()).unwrap();
    // On the orthogonal group the best step is W·msign(skew(WᵀG)), worth ‖skew(WᵀG)‖_*:
    // the dual ascent's start is already optimal.
    let wtg = w.transpose() * &g;
    let skew = (&wtg - wtg.transpose()) * faer::Scale(0.5);
    assert_eq!(step.dual_steps, 1);
    assert!((inner(&g, &step.direction) - nuclear(&skew)).abs() < 1e-5, "{} vs {}", inner(&g, &step.direction), nuclear(&skew));
    // W is orthogonal to f32 round-off only.
    assert!(step.tangent_residual < 1e-6, "{}", step.tangent_residual);
    let sigma = nuclear(&step.direction) / n as f64;
    assert!((sigma - 1.0).abs() < 1e-6, "a full-rank step has all singular values 1: mean {sigma}");
}

#[test]
fn stiefel_dual_ascent_reaches_the_tangent_space_of_a_tall_matrix() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(22);
    let (n, p) = (9, 4);
    let (w, unit) = (mat(&random(n * p, &mut rng), n, p).qr().compute_thin_Q(), mat(&random(n * p, &mut rng), n, p));
    // The reference's α = 0.01 is an absolute step, suited to gradients of entries
    // near 1e-2 (its CIFAR MLP at batch 1024). Subgradient ascent is slow: K = 100
    // iterations take the residual down by 10⁴; given more, it stops at the tolerance.
    let g = &unit * faer::Scale(0.01);
    let config = ManifoldMuonConfig::default();
    let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
    let longer = ManifoldMuonConfig { dual_steps: 1000, ..config };
    let converged = manifold_step(w.as_ref(), g.as_ref(), &longer).unwrap();
    assert!(
        converged.dual_steps < 1000 && converged.tangent_residual < 1e-6,
        "{} steps, {}",
        converged.dual_steps,
        converged.tangent_residual
    );
    // On gradients 100× larger the same α is too small for K steps, and the
    // residual (recorded in `optimizer_steps`) says so; it still falls.
    let large = manifold_step(w.as_ref(), unit.as_ref(), &config).unwrap();
    let start = {
        let wtg = w.transpose() * &unit;
        let lambda = (&wtg + wtg.transpose()) * faer::Scale(-0.25);
        let z = &unit + &w * &lambda * faer::Scale(2.0);
        let svd = z.thin_svd().unwrap();
        let a = svd.U() * svd.V().transpose();
        let h = w.transpose() * &a;
        (&h + h.transpose()).norm_l2() / p as f64
    };
    assert!(step.tangent_residual < start * 1e-4, "{start} → {}", step.tangent_residual);
    assert!(large.dual_steps == config.dual_steps && large.tangent_residual < start / 2.0, "{start} → {}", large.tangent_residual);
    assert!(inner(&g, &step.direction) > 0.0, "the step ascends ⟨G, A⟩ (W moves along −A)");
    assert!((nuclear(&step.direction) / p as f64 - 1.0).abs() < 1e-6, "‖A‖₂ = 1 with all singular values 1");
}

#[test]
fn grassmann_step_is_the_projected_msign_and_square_matrices_take_the_stiefel_step() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(23);
    let grassmann = ManifoldMuonConfig { manifold: Manifold::Grassmann, ..Default::default() };
    let (n, p) = (8, 3);
    let (w, g) = (mat(&orthonormal(n, p, &mut rng), n, p), mat(&random(n * p, &mut rng), n, p));
    let step = manifold_step(w.as_ref(), g.as_ref(), &grassmann).unwrap();
    // Horizontal (WᵀA = 0), and worth ‖(I − WWᵀ)G‖_*, the most any unit step is.
    let horizontal = (w.transpose() * &step.direction).norm_l2();
    assert!(horizontal < 1e-6, "WᵀA = {horizontal} (W is orthonormal to f32 round-off)");
    let projected = &g - &w * (w.transpose() * &g);
    assert!((inner(&g, &step.direction) - nuclear(&projected)).abs() < 1e-5);
    let square = (mat(&orthonormal(5, 5, &mut rng), 5, 5), mat(&random(25, &mut rng), 5, 5));
    let on_grassmann = manifold_step(square.0.as_ref(), square.1.as_ref(), &grassmann).unwrap();
    let on_stiefel = manifold_step(square.0.as_ref(), square.1.as_ref(), &ManifoldMuonConfig::default()).unwrap();
    assert!((&on_grassmann.w - &on_stiefel.w).norm_l2() < 1e-12);
}

/// max |WᵀW − I| of a tall W (|WWᵀ − I| of a wide one), in f64.
fn orthonormality_error(w: &faer::Mat<f64>) -> f64 {
    let gram = if w.nrows() >= w.ncols() { w.transpose() * w } else { w * w.transpose() };
    let p = gram.nrows();
    (0..p * p).map(|k| (gram[(k / p, k % p)] - f64::from(u8::from(k / p == k % p))).abs()).fold(0.0, f64::max)
}

#[test]
fn manifold_muon_keeps_orthonormal_frames_for_a_thousand_steps() {
    let l1 = OptimizerConfig::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::L1Stiefel, rotations: 2, ..Default::default() });
    for config in [OptimizerConfig::by_name("stiefel").unwrap(), OptimizerConfig::by_name("grassmann").unwrap(), l1.clone()] {
        let (store, worst) = thousand_random_steps(&config, vec![7, 5], "manifold_drift", 24);
        // fc2 (5×7, wide: its rows are orthonormal) is the one hidden matrix.
        let i = store.specs.iter().position(|s| s.name == "fc2.weight").unwrap();
        let err = orthonormality_error(&mat(store.value(i), 5, 7));
        assert!(err < 1e-6 && worst < 1e-6, "{}: |WWᵀ − I| = {err}, recorded drift {worst}", config.name());
    }
    // L1-Stiefel turns fc2 along its 7 columns: two planes move 4 of them.
    let (_, density) = thousand_random_steps(&l1, vec![7, 5], "manifold_step_density", 24);
    assert_eq!(density, 4.0 / 7.0);
}

#[test]
fn sl_muon_at_the_identity_steps_along_signs_about_the_median() {
    use optlab::optim::manifold_muon::manifold_step;
    // At W = I the tangent space is the traceless matrices; for G = diag(g) the best
    // unit step is diag(sign(g − median g)), worth Σ|g − median|.
    let g = [0.3, -1.2, 0.8, 2.0, -0.1];
    let (w, gm) = (faer::Mat::<f64>::identity(5, 5), faer::Mat::from_fn(5, 5, |i, j| if i == j { g[i] } else { 0.0 }));
    let config = ManifoldMuonConfig { manifold: Manifold::SpecialLinear, ..Default::default() };
    let step = manifold_step(w.as_ref(), gm.as_ref(), &config).unwrap();
    let expected = [0.0, -1.0, 1.0, 1.0, -1.0];
    for (i, &on_diagonal) in expected.iter().enumerate() {
        for j in 0..5 {
            let want = if i == j { on_diagonal } else { 0.0 };
            assert!((step.direction[(i, j)] - want).abs() < 1e-6, "A[{i},{j}] = {} ≠ {want}", step.direction[(i, j)]);
        }
    }
    assert!((inner(&gm, &step.direction) - 4.1).abs() < 1e-6 && step.tangent_residual < 1e-9);
}

/// A random n×n matrix scaled (and its first row negated if need be) to det 1.
fn unit_determinant(n: usize, rng: &mut StdRng) -> faer::Mat<f64> {
    let w = mat(&random(n * n, rng), n, n) + faer::Mat::<f64>::identity(n, n) * faer::Scale(2.0);
    let det = w.determinant();
    let scale = det.abs().powf(-1.0 / n as f64);
    faer::Mat::from_fn(n, n, |i, j| w[(i, j)] * scale * if i == 0 { det.signum() } else { 1.0 })
}

#[test]
fn sl_muon_step_is_tangent_unit_and_beats_the_projected_gradient() {
    use faer::linalg::solvers::Solve;
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(31);
    let config = ManifoldMuonConfig { manifold: Manifold::SpecialLinear, lr: 0.05, ..Default::default() };
    for n in [2, 6, 17] {
        let w = unit_determinant(n, &mut rng);
        let g = mat(&random(n * n, &mut rng), n, n);
        let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
        // Ω = W⁻¹A: traceless (tangent), of unit spectral norm (the left-invariant norm).
        let omega = w.partial_piv_lu().solve(&step.direction);
        let trace = omega.diagonal().column_vector().sum();
        assert!(trace.abs() < 1e-8, "n={n}: tr(W⁻¹A) = {trace}");
        assert!(spectral(&omega) < 1.0 + 1e-9, "n={n}: ‖W⁻¹A‖₂ = {}", spectral(&omega));
        // S = WᵀG with its trace removed, scaled to unit spectral norm, is feasible
        // too, and worth no more.
        let s = w.transpose() * &g;
        let shifted = &s - faer::Mat::<f64>::identity(n, n) * faer::Scale(s.diagonal().column_vector().sum() / n as f64);
        assert!(inner(&g, &step.direction) >= inner(&s, &shifted) / spectral(&shifted) - 1e-9, "n={n}: not the steepest");
        assert!((step.w.determinant() - 1.0).abs() < 1e-9, "n={n}: det after the retraction {}", step.w.determinant());
        // The retraction W·exp(−lr·Ω) moves W by lr·Ω relative to itself, up to
        // exp's second-order term ‖(lr·Ω)²‖_F/2 ≤ lr²·n/2.
        let lr = f64::from(0.05f32);
        let relative = w.partial_piv_lu().solve(&(&w - &step.w));
        let second_order = (&relative - &omega * faer::Scale(lr)).norm_l2();
        assert!(second_order <= lr * lr * n as f64 / 2.0 && second_order > 0.0, "n={n}: {second_order}");
    }
    // A non-square matrix takes W − lr·msign(G).
    let (w, g) = (mat(&random(12, &mut rng), 4, 3), mat(&random(12, &mut rng), 4, 3));
    let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
    let svd = g.thin_svd().unwrap();
    let msign = svd.U() * svd.V().transpose();
    let gap = (&step.w - (&w - &msign * faer::Scale(f64::from(0.05f32)))).norm_l2();
    assert!(gap < 1e-12, "{gap}");
}

#[test]
fn sl_muon_solves_a_minibatch_gradients_dual_at_its_kink_in_few_evaluations() {
    use faer::linalg::solvers::Solve;
    use optlab::optim::manifold_muon::manifold_step;
    // A minibatch gradient of a square layer has rank ≤ batch < n, so S = WᵀG is
    // singular and ψ(λ) = tr msign(S − λI)/√n jumps at λ = 0: the dual's root is
    // a kink, where |ψ| never falls below the tolerance.
    let mut rng = StdRng::seed_from_u64(43);
    let (n, batch) = (48, 12);
    let config = ManifoldMuonConfig { manifold: Manifold::SpecialLinear, lr: 0.02, ..Default::default() };
    let w = unit_determinant(n, &mut rng);
    let g = mat(&random(n * batch, &mut rng), n, batch) * mat(&random(batch * n, &mut rng), batch, n);
    let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
    let omega = w.partial_piv_lu().solve(&step.direction);
    let trace = omega.diagonal().column_vector().sum();
    let norm = spectral(&omega);
    assert!(trace.abs() < 1e-8 && norm < 1.0 + 1e-9, "tr Ω = {trace}, ‖Ω‖₂ = {norm}");
    // Weak duality: every feasible Ω is worth at most min_λ ‖S − λI‖_* (convex in
    // λ, minimised here by golden section); the step must reach that bound.
    let s = w.transpose() * &g;
    let dual =
        |lambda: f64| -> f64 { (&s - faer::Mat::<f64>::identity(n, n) * faer::Scale(lambda)).singular_values().unwrap().iter().sum() };
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (-s.norm_l2(), s.norm_l2());
    for _ in 0..120 {
        let (c, d) = (b - ratio * (b - a), a + ratio * (b - a));
        if dual(c) < dual(d) { b = d } else { a = c }
    }
    let (bound, value) = (dual((a + b) / 2.0), inner(&g, &step.direction));
    assert!(value <= bound * (1.0 + 1e-9) && value >= bound * (1.0 - 1e-6), "⟨G, A⟩ = {value}, dual bound {bound}");
    // Certified by the bracket's own dual values in a few evaluations (regula
    // falsi on ψ took 21 here, the budget is 100).
    assert!(step.dual_steps <= 10, "{} evaluations", step.dual_steps);
}

#[test]
fn sl_muon_keeps_unit_determinant_for_a_thousand_steps() {
    let config = OptimizerConfig::ManifoldMuon(ManifoldMuonConfig { manifold: Manifold::SpecialLinear, lr: 0.01, ..Default::default() });
    let (store, worst) = thousand_random_steps(&config, vec![7, 7], "manifold_drift", 32);
    let i = store.specs.iter().position(|s| s.name == "fc2.weight").unwrap();
    let det = mat(store.value(i), 7, 7).determinant();
    assert!((det - 1.0).abs() < 1e-5 && worst < 1e-5, "det {det}, recorded drift {worst}");
}

/// J·X·… helpers for the symplectic form J = [[0, I], [−I, 0]] of size n.
fn symplectic_form(n: usize) -> faer::Mat<f64> {
    let k = n / 2;
    faer::Mat::from_fn(n, n, |i, j| {
        if j == i + k {
            1.0
        } else if i == j + k {
            -1.0
        } else {
            0.0
        }
    })
}

#[test]
fn symplectic_step_at_the_identity_is_the_projected_gradient_and_stays_symplectic() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(41);
    let n = 6;
    let (w, g, j) = (faer::Mat::<f64>::identity(n, n), mat(&random(n * n, &mut rng), n, n), symplectic_form(n));
    let config = ManifoldMuonConfig { manifold: Manifold::Symplectic, lr: 0.1, ..Default::default() };
    let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
    // Ω in sp(6) (JΩ symmetric) with unit spectral norm, along P(G) = (G + JGᵀJ)/2:
    // ⟨G, Ω⟩ = ‖P(G)‖²_F/‖P(G)‖₂.
    let omega = &step.direction;
    let jo = &j * omega;
    assert!((&jo - jo.transpose()).norm_l2() < 1e-12 && step.tangent_residual < 1e-12);
    let projected = (&g + &j * g.transpose() * &j) * faer::Scale(0.5);
    assert!((spectral(omega) - 1.0).abs() < 1e-12);
    let expected = inner(&projected, &projected) / spectral(&projected);
    assert!((inner(&g, omega) - expected).abs() < 1e-9, "{} vs {expected}", inner(&g, omega));
    // The Cayley retraction is exactly symplectic.
    let form = step.w.transpose() * &j * &step.w;
    assert!((&form - &j).norm_l2() < 1e-12, "WᵀJW − J = {}", (&form - &j).norm_l2());
    // An odd-sized matrix is not constrained: W − lr·msign(G).
    let (w, g) = (faer::Mat::<f64>::identity(5, 5), mat(&random(25, &mut rng), 5, 5));
    let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
    let svd = g.thin_svd().unwrap();
    let moved = &w - svd.U() * svd.V().transpose() * faer::Scale(f64::from(0.1f32));
    assert!((&step.w - &moved).norm_l2() < 1e-12);
}

#[test]
fn symplectic_keeps_its_form_for_a_thousand_steps() {
    let (store, worst) = thousand_random_steps(&OptimizerConfig::by_name("symplectic").unwrap(), vec![8, 8], "manifold_drift", 42);
    let i = store.specs.iter().position(|s| s.name == "fc2.weight").unwrap();
    let (w, j) = (mat(store.value(i), 8, 8), symplectic_form(8));
    // Sp(8) is not compact: ‖W‖ wanders, and f32 storage perturbs WᵀJW by
    // ~ε_f32·‖W‖², which the Cayley steps carry along (no exact projection undoes it).
    let err = (w.transpose() * &j * &w - &j).norm_l2();
    let scale = w.norm_l2().powi(2);
    assert!(err < 1e-6 * scale * 1000f64.sqrt() && worst < err.max(1e-6), "‖WᵀJW − J‖ = {err} at ‖W‖² {scale}, recorded drift {worst}");
}

#[test]
fn block_stiefel_keeps_every_attention_head_on_its_own_stiefel_manifold() {
    use optlab::models::{TransformerConfig, Vit, VitConfig};
    let body = TransformerConfig { dim: 8, depth: 1, heads: 2, mlp_ratio: 2, ..Default::default() };
    let vit = || Vit::new(&Cpu, VitConfig { image: 4, channels: 1, patch: 2, classes: 3, body }, 0).store;
    let run = |name: &str| {
        let mut rng = StdRng::seed_from_u64(51);
        let mut store = vit();
        let mut opt = OptimizerConfig::by_name(name).unwrap().build(&Cpu, &mut store);
        for _ in 0..50 {
            let g = random(store.len(), &mut rng);
            store.grads.copy_from_slice(&g);
            opt.step(&Cpu, &mut store, 1.0, None).unwrap();
        }
        store
    };
    // |B·Bᵀ − I| of a block with orthonormal rows (or BᵀB for columns).
    let deviation = |b: &faer::Mat<f64>| {
        let gram = if b.nrows() <= b.ncols() { b * b.transpose() } else { b.transpose() * b };
        (&gram - faer::Mat::<f64>::identity(gram.nrows(), gram.ncols())).norm_l2()
    };
    let (blocked, whole) = (run("block-stiefel"), run("stiefel"));
    let param = |store: &ParamStore<Cpu>, name: &str| {
        let i = store.specs.iter().position(|s| s.name == name).unwrap();
        mat(store.value(i), store.specs[i].rows, store.specs[i].cols)
    };
    // qkv is 24×8: six 4×8 row blocks (Q, K, V of two heads); proj 8×8: two 8×4 column blocks.
    let (qkv, proj) = (param(&blocked, "blocks.0.attn.qkv.weight"), param(&blocked, "blocks.0.attn.proj.weight"));
    for h in 0..6 {
        let b = qkv.as_ref().subrows(4 * h, 4).to_owned();
        assert!(deviation(&b) < 1e-6, "qkv row block {h}: {}", deviation(&b));
    }
    for h in 0..2 {
        let b = proj.as_ref().subcols(4 * h, 4).to_owned();
        assert!(deviation(&b) < 1e-6, "proj column block {h}: {}", deviation(&b));
    }
    // Plain Stiefel constrains qkv as a whole (orthonormal columns), not per head.
    let whole_qkv = param(&whole, "blocks.0.attn.qkv.weight");
    assert!(deviation(&whole_qkv) < 1e-6 && deviation(&whole_qkv.as_ref().subrows(0, 4).to_owned()) > 0.1);
    // A matrix without declared blocks (the MLP's) takes the same steps in both.
    assert_eq!(param(&blocked, "blocks.0.mlp.fc.weight"), param(&whole, "blocks.0.mlp.fc.weight"));
}

/// K-FAC's config with clipping off and no momentum: one step is `−lr·V`.
fn plain_kfac(lr: f32, damping: f64) -> OptimizerConfig {
    OptimizerConfig::Kfac(KfacConfig { lr, momentum: 0.0, damping, kl_clip: 1e12, ..Default::default() })
}

#[test]
fn kfac_step_solves_the_damped_kronecker_system() {
    use faer::linalg::solvers::Solve;
    // The step of each matrix must be −lr·V with (G + √γ/π·I)·V·(A + π√γ·I) = ∇W,
    // solved here as one dense (m·n)×(m·n) system built from the layer taps.
    let mut rng = StdRng::seed_from_u64(3);
    let (batch, lr, damping) = (16, 0.1, 0.05);
    let mut model = Mlp::new(&Cpu, MlpConfig { input: 5, hidden: vec![4], classes: 3, activation: Activation::Tanh }, 0);
    let x = random(batch * 5, &mut rng);
    let labels: Vec<u8> = (0..batch).map(|i| (i % 3) as u8).collect();
    let mut opt = plain_kfac(lr, damping).build(&Cpu, &mut model.store);
    model.loss_and_gradients(&Cpu, &x, &labels).unwrap();
    let store = &model.store;
    let expected: Vec<(usize, Vec<f32>)> = [0, 2]
        .into_iter()
        .map(|w| {
            let (m, n) = (store.specs[w].rows, store.specs[w].cols);
            let tap = store.taps.get(w).expect("K-FAC asked for every matrix");
            let (inputs, grads) = (mat(&tap.inputs, tap.rows, n), mat(&tap.output_grads, tap.rows, m));
            let a = inputs.transpose() * &inputs * faer::Scale(1.0 / tap.rows as f64);
            let g = grads.transpose() * &grads * faer::Scale(store.taps.loss_terms as f64);
            let trace = |x: &faer::Mat<f64>| (0..x.nrows()).map(|i| x[(i, i)]).sum::<f64>() / x.nrows() as f64;
            let pi = (trace(&a) / trace(&g)).sqrt();
            let a = a + faer::Mat::<f64>::identity(n, n) * faer::Scale(pi * damping.sqrt());
            let g = g + faer::Mat::<f64>::identity(m, m) * faer::Scale(damping.sqrt() / pi);
            // Row-major vec: (G·V·A)[i][j] = Σ G[i][k]·A[j][l]·V[k][l] (A symmetric).
            let kron = faer::Mat::from_fn(m * n, m * n, |r, c| g[(r / n, c / n)] * a[(r % n, c % n)]);
            let grad = faer::Mat::from_fn(m * n, 1, |r, _| f64::from(store.grad(w)[r]));
            let v = kron.partial_piv_lu().solve(&grad);
            (w, (0..m * n).map(|r| store.value(w)[r] - lr * v[(r, 0)] as f32).collect())
        })
        .collect();
    opt.step(&Cpu, &mut model.store, 1.0, None).unwrap();
    for (w, want) in expected {
        let err = relative_error(model.store.value(w), &want);
        assert!(err < 1e-5, "{}: relative error {err}", model.store.specs[w].name);
    }
}

#[test]
fn kfac_steps_are_invariant_to_an_invertible_transform_of_the_inputs() {
    use faer::linalg::solvers::Solve;
    // Martens & Grosse §10: with inputs x' = M·x and first weights W' = W·M⁻¹ the
    // network computes the same function, and undamped K-FAC's step on W' is its
    // step on W times M⁻¹ (KL-clipping is invariant too). SGD's is not, which the
    // test checks so that it can fail. One step: over several, f32 round-off in
    // the softmax head's null direction (G·1 = 0, amplified by 1/damping) grows.
    let mut rng = StdRng::seed_from_u64(11);
    // More classes than hidden units: the hidden layer's G is then well
    // conditioned, so the damping (whose π correction is not invariant) is negligible.
    let (batch, input, hidden, classes) = (64, 6, 4, 10);
    let config = MlpConfig { input, hidden: vec![hidden], classes, activation: Activation::Tanh };
    let x = random(batch * input, &mut rng);
    let labels: Vec<u8> = (0..batch).map(|i| (i % classes) as u8).collect();
    let m = faer::Mat::from_fn(input, input, |i, j| if i == j { 2.0 } else { 0.0 } + f64::from(rng.random_range(-1.0f32..1.0)));
    let m_inverse = m.partial_piv_lu().solve(faer::Mat::<f64>::identity(input, input));
    let moved_x: Vec<f32> = (0..batch * input)
        .map(|k| (0..input).map(|l| m[(k % input, l)] * f64::from(x[k / input * input + l])).sum::<f64>() as f32)
        .collect();
    let original = Mlp::new(&Cpu, config.clone(), 2);
    let mut moved_values = original.store.values.clone();
    let w1 = mat(original.store.value(0), hidden, input) * &m_inverse;
    (0..hidden * input).for_each(|k| moved_values[k] = w1[(k / input, k % input)] as f32);
    // The first weights after one step (W'·M for the moved model).
    let first_weights = |optimizer: &OptimizerConfig, values: &[f32], x: &[f32], back: &faer::Mat<f64>| {
        let mut model = Mlp::from_values(&Cpu, config.clone(), values);
        let mut opt = optimizer.build(&Cpu, &mut model.store);
        model.loss_and_gradients(&Cpu, x, &labels).unwrap();
        opt.step(&Cpu, &mut model.store, 1.0, None).unwrap();
        let w = mat(model.store.value(0), hidden, input) * back;
        (0..hidden * input).map(|k| w[(k / input, k % input)] as f32).collect::<Vec<f32>>()
    };
    let identity = faer::Mat::<f64>::identity(input, input);
    let difference = |optimizer: &OptimizerConfig| {
        let (a, b) =
            (first_weights(optimizer, &original.store.values, &x, &identity), first_weights(optimizer, &moved_values, &moved_x, &m));
        let changed = relative_error(&a, &original.store.values[..hidden * input]);
        assert!(changed > 1e-3, "the step must move the weights (relative change {changed})");
        relative_error(&b, &a)
    };
    let undamped = OptimizerConfig::Kfac(KfacConfig { lr: 0.5, damping: 1e-12, ..Default::default() });
    let (kfac, sgd) = (difference(&undamped), difference(&OptimizerConfig::Sgd(SgdConfig { lr: 0.5, ..Default::default() })));
    assert!(kfac < 1e-4 && sgd > 1e-2, "relative difference of the stepped weights: K-FAC {kfac}, SGD {sgd}");
}

#[test]
fn kfac_takes_the_transformers_tokens_as_rows() {
    // Every matrix of a ViT and a GPT is tapped with its batch × tokens rows
    // (the heads: one row per class token or position), and K-FAC lowers the loss.
    use optlab::models::{Gpt, GptConfig, TransformerConfig, Vit, VitConfig};
    let body = TransformerConfig { dim: 8, depth: 1, heads: 2, mlp_ratio: 2, ..Default::default() };
    let mut rng = StdRng::seed_from_u64(5);
    let kfac = OptimizerConfig::Kfac(KfacConfig { lr: 0.05, kl_clip: 0.01, damping: 1e-3, ..Default::default() });
    let check = |store: &ParamStore<Cpu>, [input_rows, body_rows, head_rows]: [usize; 3], terms: usize| {
        assert_eq!(store.taps.loss_terms, terms);
        for (i, s) in store.specs.iter().enumerate().filter(|(_, s)| s.role.is_matrix()) {
            let tap = store.taps.get(i).unwrap_or_else(|| panic!("{} not tapped", s.name));
            let rows = match s.role {
                Role::InputMatrix => input_rows,
                Role::OutputHead => head_rows,
                _ => body_rows,
            };
            assert_eq!((tap.rows, tap.inputs.len(), tap.output_grads.len()), (rows, rows * s.cols, rows * s.rows), "{}", s.name);
        }
    };
    // ViT: 4×4 images in 2×2 patches: 4 patches and a class token.
    let mut vit = Vit::new(&Cpu, VitConfig { image: 4, channels: 1, patch: 2, classes: 3, body }, 0);
    let (x, labels) = (random(6 * 16, &mut rng), [0u8, 1, 2, 0, 1, 2]);
    let mut opt = kfac.build(&Cpu, &mut vit.store);
    let first = vit.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss;
    for _ in 0..30 {
        vit.loss_and_gradients(&Cpu, &x, &labels).unwrap();
        opt.step(&Cpu, &mut vit.store, 1.0, None).unwrap();
    }
    let last = vit.loss_and_gradients(&Cpu, &x, &labels).unwrap().loss;
    // The patch embedding sees the patches only; the head, the class tokens.
    check(&vit.store, [6 * 4, 6 * 5, 6], 6);
    assert!(last < 0.5 * first, "ViT loss {first} → {last}");
    // GPT: every position is a loss term.
    let mut gpt = Gpt::new(&Cpu, GptConfig { vocab: 7, seq: 5, body, tie_embeddings: false }, 0);
    let ids: Vec<u32> = (0..10).map(|i| i % 7).collect();
    let targets: Vec<u32> = ids.iter().map(|&i| (i + 1) % 7).collect();
    let mut opt = kfac.build(&Cpu, &mut gpt.store);
    let first = gpt.loss_and_gradients(&Cpu, &ids, &targets, 2).unwrap().loss;
    for _ in 0..30 {
        gpt.loss_and_gradients(&Cpu, &ids, &targets, 2).unwrap();
        opt.step(&Cpu, &mut gpt.store, 1.0, None).unwrap();
    }
    let last = gpt.loss_and_gradients(&Cpu, &ids, &targets, 2).unwrap().loss;
    // The GPT's token embedding is a lookup table, not a tapped linear map.
    check(&gpt.store, [10, 10, 10], 10);
    assert!(last < 0.5 * first, "GPT loss {first} → {last}");
}

/// One GDA2 step: Δθ, Adam's step r for the same gradients, and GDA2's reports.
struct Gda2Step {
    taken: Vec<f32>,
    adam: Vec<f32>,
    reports: Vec<optlab::optim::StepReport>,
}

/// Runs `config` on f(x) = ½·Σ dᵢ·xᵢ² (plus `noise` on the gradient) beside
/// PyTorch-semantics Adam fed the same gradients, whose step is GDA2's residual r.
fn beside_adam(config: Gda2Config, steps: usize, noise: f32) -> Vec<Gda2Step> {
    let n = 12;
    let d: Vec<f32> = (0..n).map(|i| 10f32.powf(i as f32 / (n - 1) as f32 * 2.0)).collect();
    let mut rng = StdRng::seed_from_u64(17);
    let mut gda2 = one_matrix(3, 4, &random(n, &mut rng), &vec![0.0; n]);
    let mut adam = one_matrix(3, 4, &vec![0.0; n], &vec![0.0; n]);
    let adam_config = AdamConfig { lr: config.lr, beta1: config.beta1, beta2: config.beta2, eps: config.eps, ..Default::default() };
    let (mut g_opt, mut a_opt) =
        (OptimizerConfig::Gda2(config).build(&Cpu, &mut gda2), OptimizerConfig::Adam(adam_config).build(&Cpu, &mut adam));
    let mut out = Vec::new();
    for _ in 0..steps {
        let g: Vec<f32> = gda2.values.iter().zip(&d).map(|(x, d)| d * x + noise * rng.random_range(-1.0f32..1.0)).collect();
        gda2.grads.copy_from_slice(&g);
        adam.grads.copy_from_slice(&g);
        let (before, adam_before) = (gda2.values.clone(), adam.values.clone());
        g_opt.step(&Cpu, &mut gda2, 1.0, None).unwrap();
        a_opt.step(&Cpu, &mut adam, 1.0, None).unwrap();
        let delta = |now: &[f32], then: &[f32]| now.iter().zip(then).map(|(a, b)| a - b).collect::<Vec<f32>>();
        out.push(Gda2Step {
            taken: delta(&gda2.values, &before),
            adam: delta(&adam.values, &adam_before),
            reports: g_opt.groups[0].rule.last_step(),
        });
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

#[test]
fn gda2_steps_stay_inside_its_trust_region_and_descend_along_adam() {
    // Every applied step s: ‖s‖ ≤ trust_ratio·‖r‖ and ⟨s, r⟩ ≥ μ·‖r‖²·(trust scale),
    // with r Adam's step for the same gradients; step 1 (no history) is Adam's.
    let config = Gda2Config { lr: 0.01, trust_ratio: 1.1, descent_margin: 0.3, ..Default::default() };
    let steps = beside_adam(config, 300, 0.5);
    assert!(relative_error(&steps[0].taken, &steps[0].adam) < 1e-6, "step 1 must be Adam's");
    let report = |k: usize, name: &str| steps[k].reports.iter().find(|r| r.name == name).unwrap().value;
    for (k, Gda2Step { taken: s, adam: r, .. }) in steps.iter().enumerate() {
        let (s_norm, r_norm2) = (dot(s, s).sqrt(), dot(r, r));
        assert!(s_norm <= config.trust_ratio * r_norm2.sqrt() * (1.0 + 1e-4), "step {k}: ‖s‖ {s_norm} outside the trust region");
        let margin = config.descent_margin * r_norm2 * report(k, "gda2_trust_scale");
        assert!(dot(s, r) >= margin * (1.0 - 1e-4), "step {k}: ⟨s, r⟩ {} below {margin}", dot(s, r));
    }
    // The safeguards are not idle: steps were mixed, some rejected, some clipped.
    let count = |name: &str, hit: &dyn Fn(f64) -> bool| (0..steps.len()).filter(|&k| hit(report(k, name))).count();
    let (mixed, rejected, clipped) =
        (count("gda2_mixing_norm", &|v| v > 0.0), count("gda2_rejected", &|v| v == 1.0), count("gda2_trust_scale", &|v| v < 1.0));
    assert!(mixed > 100 && rejected > 0 && clipped > 0, "mixed {mixed}, rejected {rejected}, clipped {clipped}");
}

#[test]
fn gda2_accelerates_adam_on_an_ill_conditioned_quadratic() {
    // Curvatures 1…100, exact gradients: Anderson mixing over Adam's steps must
    // reach a lower loss than Adam alone in the same number of steps.
    let n = 12;
    let d: Vec<f32> = (0..n).map(|i| 10f32.powf(i as f32 / (n - 1) as f32 * 2.0)).collect();
    let loss_after = |config: OptimizerConfig| {
        let mut rng = StdRng::seed_from_u64(17);
        let mut store = one_matrix(3, 4, &random(n, &mut rng), &vec![0.0; n]);
        let mut opt = config.build(&Cpu, &mut store);
        for _ in 0..150 {
            let g: Vec<f32> = store.values.iter().zip(&d).map(|(x, d)| d * x).collect();
            store.grads.copy_from_slice(&g);
            opt.step(&Cpu, &mut store, 1.0, None).unwrap();
        }
        store.values.iter().zip(&d).map(|(x, d)| 0.5 * f64::from(d * x * x)).sum::<f64>()
    };
    let adam = loss_after(OptimizerConfig::Adam(AdamConfig { lr: 0.05, ..Default::default() }));
    let gda2 = loss_after(OptimizerConfig::Gda2(Gda2Config { lr: 0.05, ..Default::default() }));
    assert!(gda2 < 0.2 * adam, "loss after 150 steps: Adam {adam}, GDA2 {gda2}");
}

#[test]
fn psgd_kron_fits_the_whitening_preconditioner() {
    // PSGD's criterion fitted on pairs (V ~ N(0, I), G) has its fixed point where
    // P = QᵀQ whitens G (Li 2018). For G = S_L·Z·S_R with Z ~ N(0, 1) entries the
    // Kronecker factors satisfy P_L·S_L²·P_L ∝ I, so P_L ∝ S_L⁻¹ and P_R ∝ S_R⁻¹
    // (each up to the scale the Kronecker product leaves free). A small fitting
    // step over many draws averages out the fit's own noise.
    use rand_distr::{Distribution, StandardNormal};
    let (s_left, s_right) = ([1.0f32, 2.0, 4.0, 8.0], [0.5f32, 1.0, 1.0, 2.0, 3.0, 6.0]);
    let (m, n) = (s_left.len(), s_right.len());
    let mut store = one_matrix(m, n, &vec![0.0; m * n], &vec![0.0; m * n]);
    let config = PsgdKronConfig {
        lr: 1e-12,
        beta1: 0.0,
        precond_lr: 0.005,
        update_probability_min: 1.0,
        update_probability_max: 1.0,
        ..Default::default()
    };
    let mut opt = OptimizerConfig::PsgdKron(config).build(&Cpu, &mut store);
    let mut rng = StdRng::seed_from_u64(23);
    for _ in 0..60_000 {
        let g: Vec<f32> = (0..m * n)
            .map(|k| {
                let z: f32 = StandardNormal.sample(&mut rng);
                s_left[k / n] * z * s_right[k % n]
            })
            .collect();
        store.grads.copy_from_slice(&g);
        opt.step(&Cpu, &mut store, 1.0, None).unwrap();
    }
    let mut state = opt.groups[0].rule.state_mut();
    let q = |name: &str, state: &mut Vec<(String, &mut Vec<f32>)>| state.iter().find(|(k, _)| k == name).map(|(_, q)| q.to_vec()).unwrap();
    for (name, s) in [("p0.left", &s_left[..]), ("p0.right", &s_right[..])] {
        let (q, d) = (q(name, &mut state), s.len());
        let p = mat(&q, d, d).transpose() * mat(&q, d, d);
        // Compare P·S (which should be c·I) with its mean diagonal.
        let ps = faer::Mat::from_fn(d, d, |i, j| p[(i, j)] * f64::from(s[j]));
        let c = (0..d).map(|i| ps[(i, i)]).sum::<f64>() / d as f64;
        let err = (&ps - faer::Mat::<f64>::identity(d, d) * faer::Scale(c)).norm_l2() / (c * (d as f64).sqrt());
        assert!(err < 0.1, "{name}: ‖P·S − c·I‖/‖c·I‖ = {err}; P·S = {ps:?}");
    }
}

/// W with rows i and j turned by θ in their plane: exp(−θ(eᵢeⱼᵀ − eⱼeᵢᵀ))·W.
fn givens(w: &faer::Mat<f64>, i: usize, j: usize, theta: f64) -> faer::Mat<f64> {
    let mut turned = w.clone();
    for c in 0..w.ncols() {
        turned[(i, c)] = theta.cos() * w[(i, c)] - theta.sin() * w[(j, c)];
        turned[(j, c)] = theta.sin() * w[(i, c)] + theta.cos() * w[(j, c)];
    }
    turned
}

#[test]
fn l1_stiefel_step_is_the_steepest_givens_rotation() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(25);
    let config = ManifoldMuonConfig { manifold: Manifold::L1Stiefel, lr: 0.1, ..Default::default() };
    for (n, p) in [(7, 3), (5, 5)] {
        let (w, g) = (mat(&orthonormal(n, p, &mut rng), n, p), mat(&random(n * p, &mut rng), n, p));
        // Every unit-ℓ1 direction of so(n) acting on W is a mix of the plane
        // generators eᵢeⱼᵀ − eⱼeᵢᵀ, so the steepest is the single best one (as for
        // coordinate descent), found here by trying every plane and both turns.
        let gain = |i: usize, j: usize| {
            let first_order = (&givens(&w, i, j, 1e-6) - &givens(&w, i, j, -1e-6)) * faer::Scale(0.5e6);
            -inner(&g, &first_order)
        };
        let (i, j) = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .max_by(|a, b| gain(a.0, a.1).abs().total_cmp(&gain(b.0, b.1).abs()))
            .unwrap();
        // W moves along −A, turning against the gain.
        let expected = givens(&w, i, j, 0.1 * gain(i, j).signum());
        let step = manifold_step(w.as_ref(), g.as_ref(), &config).unwrap();
        // Up to the correction of W's f32 round-off (see the last check).
        assert!((&step.w - &expected).norm_max() < 1e-6, "{n}×{p}: not the rotation of rows {i}, {j}");
        assert!((inner(&g, &step.direction) - gain(i, j).abs()).abs() < 1e-6, "the step ascends ⟨G, A⟩ by the best plane's gain");
        // Two rows change beyond round-off, and the frame is orthonormal in f64
        // where W came orthonormal at f32 round-off.
        let changed = (0..n).filter(|&r| (0..p).any(|c| (step.w[(r, c)] - w[(r, c)]).abs() > 1e-6)).count();
        let drift = orthonormality_error(&step.w);
        assert!(changed == 2 && drift < 1e-12, "{changed} rows changed, |WᵀW − I| = {drift}");
    }
}

#[test]
fn l1_stiefel_turns_disjoint_planes_greedily() {
    use optlab::optim::manifold_muon::manifold_step;
    let mut rng = StdRng::seed_from_u64(26);
    let (n, p) = (9, 4);
    let (w, g) = (mat(&orthonormal(n, p, &mut rng), n, p), mat(&random(n * p, &mut rng), n, p));
    let one = ManifoldMuonConfig { manifold: Manifold::L1Stiefel, lr: 0.05, ..Default::default() };
    let first = manifold_step(w.as_ref(), g.as_ref(), &one).unwrap();
    let many = manifold_step(w.as_ref(), g.as_ref(), &ManifoldMuonConfig { rotations: 3, ..one }).unwrap();
    let rows = |a: &faer::Mat<f64>| (0..n).filter(|&r| (0..p).any(|c| a[(r, c)] != 0.0)).collect::<Vec<_>>();
    // Six rows: three disjoint planes, the steepest among them.
    let (first_rows, many_rows) = (rows(&first.direction), rows(&many.direction));
    assert_eq!(many_rows.len(), 6, "{many_rows:?}");
    assert!(first_rows.iter().all(|r| many_rows.contains(r)), "{first_rows:?} within {many_rows:?}");
    // Disjoint rotations commute: every plane is turned as if alone, each worth its gain.
    assert!(inner(&g, &many.direction) > inner(&g, &first.direction));
    let drift = orthonormality_error(&many.w);
    assert!(drift < 1e-6, "|WᵀW − I| = {drift}");
    // A zero gradient turns nothing.
    let still = manifold_step(w.as_ref(), faer::Mat::<f64>::zeros(n, p).as_ref(), &ManifoldMuonConfig { rotations: 3, ..one }).unwrap();
    assert!(still.direction.norm_l2() == 0.0 && (&still.w - &w).norm_max() < 1e-6);
}

#[test]
fn special_linear_drift_is_the_determinants_distance_from_one() {
    use optlab::optim::manifold_muon::special_linear_drift;
    let mut rng = StdRng::seed_from_u64(28);
    for n in [1, 2, 5, 8] {
        let x = random(n * n, &mut rng);
        let det = mat(&x, n, n).determinant();
        assert!((special_linear_drift(&x, n) - (det - 1.0).abs()).abs() < 1e-9 * (1.0 + det.abs()), "{n}: det {det}");
    }
    // Row swaps: a 3-cycle is even, a transposition odd.
    let cycle = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let swap = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    assert_eq!((special_linear_drift(&cycle, 3), special_linear_drift(&swap, 3)), (0.0, 2.0));
}
