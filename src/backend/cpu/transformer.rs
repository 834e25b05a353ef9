//! CPU reference of the transformer ops: LayerNorm, multi-head attention,
//! embeddings. Attention runs per (batch element, head) on gathered contiguous
//! Q, K, V with GEMMs over blocks of query rows, batch elements in parallel.

use rayon::prelude::*;

use super::{fast_math, rows_per_chunk, simd};

use crate::backend::Attention;
use crate::linalg::matmul;

pub fn layernorm_forward(y: &mut [f32], mean: &mut [f32], rstd: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let dim = gamma.len();
    assert!(x.len() == y.len() && x.len() == mean.len() * dim && mean.len() == rstd.len() && beta.len() == dim, "layernorm shapes");
    let n = rows_per_chunk(dim);
    let chunks = y.par_chunks_mut(n * dim).zip(x.par_chunks(n * dim)).zip(mean.par_chunks_mut(n)).zip(rstd.par_chunks_mut(n));
    chunks.for_each(|(((y, x), mean), rstd)| {
        simd::vectorized(
            #[inline(always)]
            || {
                for (((yr, xr), m), r) in y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(mean).zip(rstd) {
                    let mu = simd::sum_map(xr, f64::from) / dim as f64;
                    let var = simd::sum_map(xr, |v| (f64::from(v) - mu).powi(2)) / dim as f64;
                    let rs = 1.0 / (var + f64::from(eps)).sqrt();
                    (*m, *r) = (mu as f32, rs as f32);
                    for (((y, &x), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                        *y = (x - *m) * *r * g + b;
                    }
                }
            },
        )
    });
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
) {
    let dim = gamma.len();
    assert!(
        dx.len() == x.len() && dy.len() == x.len() && x.len() == mean.len() * dim && dgamma.len() == dim && dbeta.len() == dim,
        "layernorm shapes"
    );
    let n = rows_per_chunk(dim);
    let chunks =
        dx.par_chunks_mut(n * dim).zip(dy.par_chunks(n * dim)).zip(x.par_chunks(n * dim)).zip(mean.par_chunks(n).zip(rstd.par_chunks(n)));
    // Each chunk of rows returns its share of dγ and dβ.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = chunks
        .map(|(((dx, dy), x), (mean, rstd))| {
            simd::vectorized(
                #[inline(always)]
                || {
                    let (mut dgamma, mut dbeta) = (vec![0.0; dim], vec![0.0; dim]);
                    let (mut xhat, mut g) = (vec![0.0; dim], vec![0.0; dim]);
                    for ((((dxr, dyr), xr), &m), &r) in
                        dx.chunks_exact_mut(dim).zip(dy.chunks_exact(dim)).zip(x.chunks_exact(dim)).zip(mean).zip(rstd)
                    {
                        // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ.
                        for c in 0..dim {
                            xhat[c] = (xr[c] - m) * r;
                            g[c] = dyr[c] * gamma[c];
                            dgamma[c] += dyr[c] * xhat[c];
                            dbeta[c] += dyr[c];
                        }
                        let (mean_g, mean_gx) = (simd::sum(&g) / dim as f32, simd::dot(&g, &xhat) / dim as f32);
                        for c in 0..dim {
                            dxr[c] = r * (g[c] - mean_g - xhat[c] * mean_gx);
                        }
                    }
                    (dgamma, dbeta)
                },
            )
        })
        .collect();
    for (pg, pb) in partials {
        dgamma.iter_mut().zip(pg).for_each(|(d, p)| *d += p);
        dbeta.iter_mut().zip(pb).for_each(|(d, p)| *d += p);
    }
}

/// Query rows per block: a causal block scores only the keys up to its last row,
/// which skips nearly half the work of long sequences.
const ROW_BLOCK: usize = 64;

/// Copies the `hd` columns from `col` of every `stride`-wide row of `rows` into `dst`.
fn gather(dst: &mut Vec<f32>, rows: &[f32], stride: usize, col: usize, hd: usize) {
    dst.clear();
    // One slice copy per row: extending from a flat_map went a value at a time
    // (a tenth of the GPT step's time).
    rows.chunks_exact(stride).for_each(|row| dst.extend_from_slice(&row[col..col + hd]));
}

/// Writes a rows×hd matrix into the `hd` columns from `col` of `stride`-wide rows.
fn scatter(rows: &mut [f32], src: &[f32], stride: usize, col: usize, hd: usize) {
    for (row, s) in rows.chunks_exact_mut(stride).zip(src.chunks_exact(hd)) {
        row[col..col + hd].copy_from_slice(s);
    }
}

/// One (batch element, head): Q, K, V gathered into contiguous seq×hd matrices,
/// plus a score block; kept across heads so a batch element allocates once.
#[derive(Default)]
struct Head {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

impl Head {
    fn load(&mut self, qkv_rows: &[f32], s: &Attention, h: usize) {
        let (w, hd) = (s.qkv_width(), s.head_dim);
        gather(&mut self.q, qkv_rows, w, h * hd, hd);
        gather(&mut self.k, qkv_rows, w, s.width() + h * hd, hd);
        gather(&mut self.v, qkv_rows, w, 2 * s.width() + h * hd, hd);
    }

    /// Fills `scores` with `Q·Kᵀ/sqrt(hd)` of the query rows `rows` against the
    /// keys they may see (the returned count; a causal block's last row sees all).
    fn score(&mut self, s: &Attention, rows: std::ops::Range<usize>) -> usize {
        let (hd, n) = (s.head_dim, rows.len());
        let keys = if s.causal { rows.end } else { s.seq };
        self.scores.resize(n * keys, 0.0);
        let q = &self.q[rows.start * hd..rows.end * hd];
        matmul(&mut self.scores, q, &self.k[..keys * hd], n, hd, keys, false, true, s.score_scale(), 0.0);
        keys
    }
}

/// Keys row `i` may attend to among the first `keys`.
fn visible(s: &Attention, i: usize, keys: usize) -> usize {
    if s.causal { i + 1 } else { keys }
}

fn row_blocks(seq: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..seq).step_by(ROW_BLOCK).map(move |r0| r0..(r0 + ROW_BLOCK).min(seq))
}

/// Each batch element in parallel, its heads in turn, its query rows in blocks:
/// `P = softmax(S)` row by row (saving `lse = max + ln Σ exp`), then `O = P·V`.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: Attention) {
    s.assert_lengths(qkv.len(), out.len(), lse.len());
    if out.is_empty() {
        return;
    }
    let t = s.seq;
    let per_batch = out.par_chunks_mut(t * s.width()).zip(lse.par_chunks_mut(s.heads * t)).zip(qkv.par_chunks(t * s.qkv_width()));
    per_batch.for_each(|((out_b, lse_b), qkv_b)| {
        simd::vectorized(
            #[inline(always)]
            || forward_batch(out_b, lse_b, qkv_b, &s),
        )
    });
}

/// [`attention_forward`] of one batch element (inlined into its vector wrapper).
#[inline(always)]
fn forward_batch(out_b: &mut [f32], lse_b: &mut [f32], qkv_b: &[f32], s: &Attention) {
    let (t, hd) = (s.seq, s.head_dim);
    let (mut head, mut o) = (Head::default(), vec![0.0; t * hd]);
    for h in 0..s.heads {
        head.load(qkv_b, s, h);
        for rows in row_blocks(t) {
            let keys = head.score(s, rows.clone());
            for (i, row) in rows.clone().zip(head.scores.chunks_exact_mut(keys)) {
                let (seen, hidden) = row.split_at_mut(visible(s, i, keys));
                let max = simd::max(seen);
                seen.iter_mut().for_each(|z| *z = fast_math::exp(*z - max));
                let sum = simd::sum(seen);
                seen.iter_mut().for_each(|z| *z /= sum);
                hidden.fill(0.0);
                lse_b[h * t + i] = max + sum.ln();
            }
            let n = rows.len();
            matmul(&mut o[rows.start * hd..rows.end * hd], &head.scores, &head.v[..keys * hd], n, keys, hd, false, false, 1.0, 0.0);
        }
        scatter(out_b, &o, s.width(), h * hd, hd);
    }
}

/// Recomputes `P` from the saved log-sum-exp per row block (as FlashAttention
/// does), so nothing seq×seq outlives a block: `dV += Pᵀ·dO`,
/// `dS = P ∘ (dO·Vᵀ − rowsum(dO ∘ O))`, `dQ = dS·K/sqrt(hd)`, `dK += dSᵀ·Q/sqrt(hd)`.
pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], out: &[f32], lse: &[f32], s: Attention) {
    s.assert_lengths(qkv.len(), out.len(), lse.len());
    assert!(dqkv.len() == qkv.len() && dout.len() == out.len(), "attention gradient shapes");
    if out.is_empty() {
        return;
    }
    let (t, width, w3) = (s.seq, s.width(), s.qkv_width());
    let per_batch = dqkv
        .par_chunks_mut(t * w3)
        .zip(qkv.par_chunks(t * w3))
        .zip(dout.par_chunks(t * width).zip(out.par_chunks(t * width)))
        .zip(lse.par_chunks(s.heads * t));
    per_batch.for_each(|(((dqkv_b, qkv_b), (dout_b, out_b)), lse_b)| {
        simd::vectorized(
            #[inline(always)]
            || backward_batch(dqkv_b, qkv_b, dout_b, out_b, lse_b, &s),
        )
    });
}

/// [`attention_backward`] of one batch element (inlined into its vector wrapper).
#[inline(always)]
fn backward_batch(dqkv_b: &mut [f32], qkv_b: &[f32], dout_b: &[f32], out_b: &[f32], lse_b: &[f32], s: &Attention) {
    let (t, hd, width, w3) = (s.seq, s.head_dim, s.width(), s.qkv_width());
    let scale = s.score_scale();
    let mut head = Head::default();
    let (mut d_o, mut o, mut dp) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dq, mut dk, mut dv) = (vec![0.0; t * hd], vec![0.0; t * hd], vec![0.0; t * hd]);
    for h in 0..s.heads {
        head.load(qkv_b, s, h);
        gather(&mut d_o, dout_b, width, h * hd, hd);
        gather(&mut o, out_b, width, h * hd, hd);
        let delta: Vec<f32> = d_o.chunks_exact(hd).zip(o.chunks_exact(hd)).map(|(a, b)| simd::dot(a, b)).collect();
        let lse_h = &lse_b[h * t..(h + 1) * t];
        dk.fill(0.0);
        dv.fill(0.0);
        for rows in row_blocks(t) {
            let n = rows.len();
            let d_o_rows = &d_o[rows.start * hd..rows.end * hd];
            let keys = head.score(s, rows.clone());
            for (i, row) in rows.clone().zip(head.scores.chunks_exact_mut(keys)) {
                let (seen, hidden) = row.split_at_mut(visible(s, i, keys));
                seen.iter_mut().for_each(|z| *z = fast_math::exp(*z - lse_h[i]));
                hidden.fill(0.0);
            }
            let p = &head.scores;
            matmul(&mut dv[..keys * hd], p, d_o_rows, keys, n, hd, true, false, 1.0, 1.0);
            dp.resize(n * keys, 0.0);
            matmul(&mut dp, d_o_rows, &head.v[..keys * hd], n, hd, keys, false, true, 1.0, 0.0);
            for ((ds_row, p_row), i) in dp.chunks_exact_mut(keys).zip(p.chunks_exact(keys)).zip(rows.clone()) {
                ds_row.iter_mut().zip(p_row).for_each(|(ds, &p)| *ds = p * (*ds - delta[i]));
            }
            matmul(&mut dq[rows.start * hd..rows.end * hd], &dp, &head.k[..keys * hd], n, keys, hd, false, false, scale, 0.0);
            matmul(&mut dk[..keys * hd], &dp, &head.q[rows.start * hd..rows.end * hd], keys, n, hd, true, false, scale, 1.0);
        }
        for (part, m) in [&dq, &dk, &dv].into_iter().enumerate() {
            scatter(dqkv_b, m, w3, part * width + h * hd, hd);
        }
    }
}

pub fn embedding_forward(out: &mut [f32], table: &[f32], ids: &[u32], dim: usize) {
    assert_eq!(out.len(), ids.len() * dim, "embedding output must be ids×dim");
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let id = id as usize;
        assert!((id + 1) * dim <= table.len(), "token id {id} outside a table of {} rows", table.len() / dim);
        row.copy_from_slice(&table[id * dim..][..dim]);
    }
}

pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], dim: usize) {
    assert_eq!(dout.len(), ids.len() * dim, "embedding gradient must be ids×dim");
    for (row, &id) in dout.chunks_exact(dim).zip(ids) {
        dtable[id as usize * dim..][..dim].iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
}
