//! The CPU reference backend: plain f32 loops plus `linalg` (a blocked GEMM and
//! faer decompositions). Readable first; it is the oracle for every kernel test.

use std::ops::Range;

mod activation;
mod fast_math;
pub mod simd;
mod transformer;

use anyhow::Result;
use rayon::prelude::*;

use super::{Activation, AdamParams, Attention, Backend, DiagonalRule, Gemm, LossOut};
use crate::linalg::{self, Epsilon, NsCoefficients};

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Makes the calling thread worker 0 of rayon's global pool. Call it once, before
/// any parallel work, from the thread that drives training (`exp` and the
/// benches do); returns false, changing nothing, if the pool already exists.
///
/// A rayon call from a thread outside the pool queues its job for a worker and
/// sleeps until it is done: two cross-thread wake-ups per op, more than a small
/// op (a bias, an activation of one batch) takes. On the default MLP step they
/// were a quarter of its time (1.87 → 1.37 ms); inside the pool a one-chunk op
/// runs inline and a larger one is shared with the other workers.
pub fn join_thread_pool() -> bool {
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().is_ok()
}

/// Elementwise ops split into chunks of this many values across threads: large
/// enough that scheduling is noise, small enough to use both cores on a layer.
/// Reductions sum per-chunk partials in chunk order, so results do not depend
/// on the thread count.
const PAR_CHUNK: usize = 1 << 14;

/// Whole rows of length `row` per parallel chunk: about [`PAR_CHUNK`] values.
fn rows_per_chunk(row: usize) -> usize {
    (PAR_CHUNK / row.max(1)).max(1)
}

/// `f` over matching chunks of `y` and `x`, on all threads, `f` inlined.
fn par_zip(y: &mut [f32], x: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    assert_eq!(y.len(), x.len());
    y.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(y, x)| {
        simd::vectorized(
            #[inline(always)]
            || y.iter_mut().zip(x).for_each(|(y, &x)| f(y, x)),
        )
    });
}

/// `out = a·f(x)` on all threads, `f` inlined (a generic, not a `fn` pointer):
/// an activation's backward (`a` = dy, `f` = act') and a GLU's forward.
fn par_product(out: &mut [f32], a: &[f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    assert!(out.len() == a.len() && a.len() == x.len());
    let chunks = out.par_chunks_mut(PAR_CHUNK).zip(a.par_chunks(PAR_CHUNK)).zip(x.par_chunks(PAR_CHUNK));
    chunks.for_each(|((out, a), x)| {
        simd::vectorized(
            #[inline(always)]
            || out.iter_mut().zip(a).zip(x).for_each(|((o, &a), &x)| *o = a * f(x)),
        )
    });
}

/// The slices of a parameter-store range, cut into matching parallel chunks.
fn par_range<'a>(buf: &'a mut [f32], r: &Range<usize>) -> rayon::slice::ChunksMut<'a, f32> {
    buf[r.clone()].par_chunks_mut(PAR_CHUNK)
}

/// One coordinate of [`DiagonalRule`], in PyTorch's order of operations.
#[inline(always)]
fn diagonal(rule: DiagonalRule, p: &mut f32, g: f32, s0: &mut f32, s1: &mut f32, s2: &mut f32) {
    match rule {
        DiagonalRule::Adagrad { lr, eps, weight_decay } => {
            let g = g + weight_decay * *p;
            *s0 += g * g;
            *p -= lr * g / (s0.sqrt() + eps);
        }
        DiagonalRule::RmsProp { lr, alpha, eps, weight_decay, momentum, centered } => {
            let g = g + weight_decay * *p;
            *s0 = alpha * *s0 + (1.0 - alpha) * g * g;
            let d = if centered {
                *s2 = alpha * *s2 + (1.0 - alpha) * g;
                (*s0 - *s2 * *s2).sqrt() + eps
            } else {
                s0.sqrt() + eps
            };
            if momentum > 0.0 {
                *s1 = momentum * *s1 + g / d;
                *p -= lr * *s1;
            } else {
                *p -= lr * g / d;
            }
        }
        DiagonalRule::Adadelta { lr, rho, eps, weight_decay } => {
            let g = g + weight_decay * *p;
            *s0 = rho * *s0 + (1.0 - rho) * g * g;
            let delta = (*s1 + eps).sqrt() / (*s0 + eps).sqrt() * g;
            *s1 = rho * *s1 + (1.0 - rho) * delta * delta;
            *p -= lr * delta;
        }
        DiagonalRule::Adam { lr, beta1, beta2, eps, weight_decay, amsgrad, bias1, bias2 } => {
            let g = g + weight_decay * *p;
            *s0 = beta1 * *s0 + (1.0 - beta1) * g;
            *s1 = beta2 * *s1 + (1.0 - beta2) * g * g;
            let v = if amsgrad {
                *s2 = s2.max(*s1);
                *s2
            } else {
                *s1
            };
            *p -= lr * ((*s0 / bias1) / ((v / bias2).sqrt() + eps));
        }
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// The CPU model, the instruction set of our loops and the thread count.
    fn describe(&self) -> String {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        format!("cpu: {model}, {} loops, {} threads", simd::path(), rayon::current_num_threads())
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    fn upload(&self, host: &[f32]) -> Vec<f32> {
        host.to_vec()
    }
    fn download(&self, view: &[f32]) -> Result<Vec<f32>> {
        Ok(view.to_vec())
    }
    fn len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn view(buf: &Vec<f32>, range: Range<usize>) -> &[f32] {
        &buf[range]
    }
    fn view_mut(buf: &mut Vec<f32>, range: Range<usize>) -> &mut [f32] {
        &mut buf[range]
    }
    fn view_mut_pair(buf: &mut Vec<f32>, a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
        if a.end <= b.start {
            let (lo, hi) = buf.split_at_mut(b.start);
            (&mut lo[a], &mut hi[..b.len()])
        } else {
            assert!(b.end <= a.start, "view_mut_pair: ranges {a:?} and {b:?} overlap");
            let (lo, hi) = buf.split_at_mut(a.start);
            (&mut hi[..a.len()], &mut lo[b])
        }
    }
    fn copy(&self, dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn fill(&self, dst: &mut [f32], value: f32) {
        dst.fill(value);
    }

    fn matmul(&self, c: &mut [f32], a: &[f32], b: &[f32], s: Gemm, alpha: f32, beta: f32) {
        linalg::matmul(c, a, b, s.m, s.k, s.n, s.trans_a, s.trans_b, alpha, beta);
    }

    fn add_bias_rows(&self, y: &mut [f32], bias: &[f32]) {
        let n = bias.len();
        assert_eq!(y.len() % n, 0, "bias length must divide the matrix");
        y.par_chunks_mut(rows_per_chunk(n) * n).for_each(|rows| {
            simd::vectorized(
                #[inline(always)]
                || rows.chunks_exact_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b)),
            )
        });
    }

    fn accumulate_column_sums(&self, out: &mut [f32], x: &[f32]) {
        let n = out.len();
        assert_eq!(x.len() % n, 0, "column count must divide the matrix");
        if rows_per_chunk(n) == 1 {
            // Rows wider than a chunk (a 50k-token head's bias): the partials
            // below would be the rows themselves, a copy of all of x. Adding
            // the rows in order into column blocks gives the same bits.
            out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(block, out)| {
                let columns = block * PAR_CHUNK..block * PAR_CHUNK + out.len();
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for row in x.chunks_exact(n) {
                            out.iter_mut().zip(&row[columns.clone()]).for_each(|(o, x)| *o += x);
                        }
                    },
                )
            });
            return;
        }
        let partials: Vec<Vec<f32>> = x
            .par_chunks(rows_per_chunk(n) * n)
            .map(|rows| {
                let mut sums = vec![0.0; n];
                simd::vectorized(
                    #[inline(always)]
                    || rows.chunks_exact(n).for_each(|row| sums.iter_mut().zip(row).for_each(|(s, x)| *s += x)),
                );
                sums
            })
            .collect();
        partials.iter().for_each(|p| out.iter_mut().zip(p).for_each(|(o, s)| *o += s));
    }

    fn activation_forward(&self, kind: Activation, y: &mut [f32], x: &[f32]) {
        activation::with_activation!(kind, |f, _df| par_zip(y, x, |y, x| *y = f(x)))
    }

    fn activation_backward(&self, kind: Activation, dx: &mut [f32], dy: &[f32], x: &[f32]) {
        activation::with_activation!(kind, |_f, df| par_product(dx, dy, x, df))
    }

    fn glu_forward(&self, kind: Activation, out: &mut [f32], gate: &[f32], up: &[f32]) {
        activation::with_activation!(kind, |f, _df| par_product(out, up, gate, f))
    }

    fn glu_backward(&self, kind: Activation, dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        assert!(dgate.len() == dup.len() && dup.len() == dout.len() && dout.len() == gate.len() && gate.len() == up.len());
        let chunks = dgate.par_chunks_mut(PAR_CHUNK).zip(dup.par_chunks_mut(PAR_CHUNK));
        let chunks = chunks.zip(dout.par_chunks(PAR_CHUNK)).zip(gate.par_chunks(PAR_CHUNK)).zip(up.par_chunks(PAR_CHUNK));
        activation::with_activation!(kind, |f, df| chunks.for_each(|((((dgate, dup), dout), gate), up)| {
            simd::vectorized(
                #[inline(always)]
                || {
                    for ((((dg, du), &d), &g), &u) in dgate.iter_mut().zip(dup.iter_mut()).zip(dout).zip(gate).zip(up) {
                        *du = d * f(g);
                        *dg = d * u * df(g);
                    }
                },
            )
        }))
    }

    fn softmax_cross_entropy(
        &self,
        dlogits: &mut [f32],
        logits: &[f32],
        labels: &[impl Into<u32> + Copy + Sync],
        classes: usize,
    ) -> Result<LossOut> {
        assert_eq!(logits.len(), labels.len() * classes, "logits must be batch×classes");
        assert_eq!(dlogits.len(), logits.len());
        let inv_batch = 1.0 / labels.len() as f32;
        let n = rows_per_chunk(classes);
        let chunks = logits.par_chunks(n * classes).zip(dlogits.par_chunks_mut(n * classes)).zip(labels.par_chunks(n));
        // Per chunk of rows: (summed loss, correct predictions), added in order below.
        let partials: Vec<(f64, usize)> = chunks
            .map(|((logits, dlogits), labels)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        let (mut loss, mut correct) = (0.0f64, 0);
                        for ((row, drow), &label) in logits.chunks_exact(classes).zip(dlogits.chunks_exact_mut(classes)).zip(labels) {
                            let label = label.into() as usize;
                            assert!(label < classes, "label {label} out of range for {classes} classes");
                            let (argmax, max) =
                                row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                            correct += usize::from(argmax == label);
                            drow.iter_mut().zip(row).for_each(|(d, &z)| *d = fast_math::exp(z - max));
                            let sum = simd::sum(drow);
                            loss += f64::from(sum.ln() - (row[label] - max));
                            drow.iter_mut().for_each(|d| *d *= inv_batch / sum);
                            drow[label] -= inv_batch;
                        }
                        (loss, correct)
                    },
                )
            })
            .collect();
        let (loss, correct) = partials.into_iter().fold((0.0, 0), |(l, c), (pl, pc)| (l + pl, c + pc));
        Ok(LossOut { loss: (loss / labels.len() as f64) as f32, correct })
    }

    fn layernorm_forward(&self, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        transformer::layernorm_forward(y, mean, rstd, x, gamma, beta, eps);
    }
    fn layernorm_backward(
        &self,
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        dy: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        gamma: &[f32],
    ) {
        transformer::layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma);
    }
    fn attention_forward(&self, out: &mut [f32], lse: &mut [f32], qkv: &[f32], shape: Attention) {
        transformer::attention_forward(out, lse, qkv, shape);
    }
    fn attention_backward(&self, dqkv: &mut [f32], dout: &[f32], qkv: &[f32], out: &[f32], lse: &[f32], shape: Attention) {
        transformer::attention_backward(dqkv, dout, qkv, out, lse, shape);
    }
    fn embedding_forward(&self, out: &mut [f32], table: &[f32], ids: &[u32], dim: usize) {
        transformer::embedding_forward(out, table, ids, dim);
    }
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], dim: usize) {
        transformer::embedding_backward(dtable, dout, ids, dim);
    }

    fn sum_squares(&self, x: &[f32]) -> Result<f64> {
        Ok(simd::vectorized(
            #[inline(always)]
            || simd::sum_map(x, |v| f64::from(v) * f64::from(v)),
        ))
    }
    fn sum_squared_difference(&self, a: &[f32], b: &[f32]) -> Result<f64> {
        assert_eq!(a.len(), b.len());
        Ok(a.iter().zip(b).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum())
    }
    fn dot(&self, a: &[f32], b: &[f32]) -> Result<f64> {
        assert_eq!(a.len(), b.len());
        Ok(a.iter().zip(b).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum())
    }
    fn all_finite(&self, x: &[f32]) -> Result<bool> {
        Ok(x.iter().all(|v| v.is_finite()))
    }

    fn axpby(&self, y: &mut [f32], alpha: f32, x: &[f32], beta: f32) {
        par_zip(y, x, |y, x| *y = alpha * x + beta * *y);
    }
    fn scale(&self, x: &mut [f32], alpha: f32) {
        x.par_chunks_mut(PAR_CHUNK).for_each(|x| {
            simd::vectorized(
                #[inline(always)]
                || x.iter_mut().for_each(|v| *v *= alpha),
            )
        });
    }

    fn adamw_step(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        ranges: &[Range<usize>],
        hp: AdamParams,
    ) {
        let bias1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bias2 = 1.0 - hp.beta2.powi(hp.step as i32);
        let decay = 1.0 - hp.lr * hp.weight_decay;
        for r in ranges {
            let chunks = par_range(params, r).zip(grads[r.clone()].par_chunks(PAR_CHUNK)).zip(par_range(m, r)).zip(par_range(v, r));
            chunks.for_each(|(((p, g), m), v)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                            let update = (*m / bias1) / ((*v / bias2).sqrt() + hp.eps);
                            *p = *p * decay - hp.lr * update;
                        }
                    },
                )
            });
        }
    }

    fn sgd_step(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        momentum_buf: &mut Vec<f32>,
        ranges: &[Range<usize>],
        lr: f32,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    ) {
        for r in ranges {
            let chunks = par_range(params, r).zip(grads[r.clone()].par_chunks(PAR_CHUNK)).zip(par_range(momentum_buf, r));
            chunks.for_each(|((p, g), b)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                            let g = g + weight_decay * *p;
                            *b = momentum * *b + g;
                            *p -= lr * if nesterov { g + momentum * *b } else { *b };
                        }
                    },
                )
            });
        }
    }

    fn diagonal_step(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        state: [&mut Vec<f32>; 3],
        ranges: &[Range<usize>],
        rule: DiagonalRule,
    ) {
        let [s0, s1, s2] = state;
        for r in ranges {
            let chunks = par_range(params, r).zip(grads[r.clone()].par_chunks(PAR_CHUNK)).zip(par_range(s0, r)).zip(par_range(s1, r));
            chunks.zip(par_range(s2, r)).for_each(|((((p, g), s0), s1), s2)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for ((((p, &g), s0), s1), s2) in p.iter_mut().zip(g).zip(s0).zip(s1).zip(s2) {
                            diagonal(rule, p, g, s0, s1, s2);
                        }
                    },
                )
            });
        }
    }

    fn lion_step(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        ranges: &[Range<usize>],
        lr: f32,
        beta1: f32,
        beta2: f32,
        weight_decay: f32,
    ) {
        let decay = 1.0 - lr * weight_decay;
        for r in ranges {
            par_range(params, r).zip(grads[r.clone()].par_chunks(PAR_CHUNK)).zip(par_range(m, r)).for_each(|((p, g), m)| {
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for ((p, &g), m) in p.iter_mut().zip(g).zip(m) {
                            let c = beta1 * *m + (1.0 - beta1) * g;
                            // sign(0) = 0, as torch.sign: a zero gradient moves nothing.
                            let sign = if c > 0.0 {
                                1.0
                            } else if c < 0.0 {
                                -1.0
                            } else {
                                0.0
                            };
                            *p = *p * decay - lr * sign;
                            *m = beta2 * *m + (1.0 - beta2) * g;
                        }
                    },
                )
            });
        }
    }

    fn adam_direction(&self, out: &mut [f32], m: &[f32], v: &[f32], bias1: f32, bias2: f32, eps: f32) {
        assert!(out.len() == m.len() && m.len() == v.len());
        out.par_chunks_mut(PAR_CHUNK).zip(m.par_chunks(PAR_CHUNK)).zip(v.par_chunks(PAR_CHUNK)).for_each(|((o, m), v)| {
            simd::vectorized(
                #[inline(always)]
                || {
                    for ((o, &m), &v) in o.iter_mut().zip(m).zip(v) {
                        *o = (m / bias1) / ((v / bias2).sqrt() + eps);
                    }
                },
            )
        });
    }

    fn ema_square(&self, v: &mut [f32], g: &[f32], beta: f32) {
        par_zip(v, g, |v, g| *v = beta * *v + (1.0 - beta) * g * g);
    }

    fn newton_schulz_batched(
        &self,
        out: &mut Vec<f32>,
        input: &Vec<f32>,
        ranges: &[Range<usize>],
        rows: usize,
        cols: usize,
        steps: usize,
        coeffs: NsCoefficients,
    ) {
        // The matrices of a batch in parallel: each is too small to fill both cores.
        let results: Vec<Vec<f32>> =
            ranges.par_iter().map(|r| linalg::newton_schulz(&input[r.clone()], rows, cols, steps, coeffs)).collect();
        for (r, x) in ranges.iter().zip(results) {
            out[r.clone()].copy_from_slice(&x);
        }
    }

    fn inverse_root(&self, out: &mut [f32], a: &[f32], n: usize, p: u32, eps: Epsilon) -> Result<bool> {
        Ok(linalg::sym_inverse_root(a, n, p, eps).map(|root| out.copy_from_slice(&root)).is_ok())
    }

    fn sym_eigenvectors(&self, out: &mut [f32], a: &[f32], n: usize) -> Result<bool> {
        Ok(linalg::sym_eigenvectors(a, n).map(|basis| out.copy_from_slice(&basis)).is_ok())
    }

    fn scale_by_diagonal_root(&self, x: &mut [f32], d: &[f32], rows: usize, cols: usize, over_rows: bool, p: u32, eps: f32) {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(d.len(), if over_rows { rows } else { cols });
        let root: Vec<f32> = d.iter().map(|&d| (d.max(0.0) + eps).powf(-1.0 / p as f32)).collect();
        for (r, row) in x.chunks_exact_mut(cols).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v *= root[if over_rows { r } else { c }];
            }
        }
    }

    fn ema_square_sums(&self, out: &mut [f32], g: &[f32], rows: usize, cols: usize, over_rows: bool, beta: f32, weight: f32) {
        assert_eq!(g.len(), rows * cols);
        let mut sums = vec![0.0f32; if over_rows { rows } else { cols }];
        for (r, row) in g.chunks_exact(cols).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                sums[if over_rows { r } else { c }] += x * x;
            }
        }
        out.iter_mut().zip(&sums).for_each(|(o, &s)| *o = beta * *o + weight * s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_sums_add_rows_in_order_at_every_width() {
        // Narrow rows take per-chunk partials, rows wider than a chunk take
        // column blocks: both must add each column's rows in row order.
        for n in [3, 257, PAR_CHUNK + 5] {
            let rows = 7;
            let x: Vec<f32> = (0..rows * n).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
            let mut out: Vec<f32> = (0..n).map(|c| c as f32 * 1e-3).collect();
            let mut want = out.clone();
            for row in x.chunks_exact(n) {
                want.iter_mut().zip(row).for_each(|(w, v)| *w += v);
            }
            Cpu.accumulate_column_sums(&mut out, &x);
            if rows_per_chunk(n) == 1 {
                assert_eq!(out, want, "width {n}: the same bits as adding rows in order");
            } else {
                let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < 1e-5, "width {n}: {err}");
            }
        }
    }
}
