//! CPU reference of the transformer ops: LayerNorm, multi-head attention,
//! embeddings. Attention runs per (batch, head) on gathered contiguous Q, K, V
//! with GEMMs, in parallel; backward recomputes the probabilities from the saved
//! log-sum-exp (as FlashAttention does), so nothing seq×seq outlives a head.

use rayon::prelude::*;

use crate::backend::Attention;
use crate::linalg::matmul;

pub fn layernorm_forward(y: &mut [f32], mean: &mut [f32], rstd: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let dim = gamma.len();
    assert!(x.len() == y.len() && x.len() == mean.len() * dim && mean.len() == rstd.len() && beta.len() == dim, "layernorm shapes");
    for (((yr, xr), m), r) in y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(mean.iter_mut()).zip(rstd.iter_mut()) {
        let mu = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
        let var = xr.iter().map(|&v| (f64::from(v) - mu).powi(2)).sum::<f64>() / dim as f64;
        let rs = 1.0 / (var + f64::from(eps)).sqrt();
        (*m, *r) = (mu as f32, rs as f32);
        for (((y, &x), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *y = (x - *m) * *r * g + b;
        }
    }
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
    for (row, ((dxr, dyr), xr)) in dx.chunks_exact_mut(dim).zip(dy.chunks_exact(dim)).zip(x.chunks_exact(dim)).enumerate() {
        let (m, r) = (mean[row], rstd[row]);
        // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ.
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        for c in 0..dim {
            let xhat = (xr[c] - m) * r;
            let g = dyr[c] * gamma[c];
            sum_g += g;
            sum_gx += g * xhat;
            dgamma[c] += dyr[c] * xhat;
            dbeta[c] += dyr[c];
        }
        let (mean_g, mean_gx) = (sum_g / dim as f32, sum_gx / dim as f32);
        for c in 0..dim {
            let xhat = (xr[c] - m) * r;
            dxr[c] = r * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx);
        }
    }
}

/// Copies head `h` of block `part` (0 = q, 1 = k, 2 = v) of batch `b` into a seq×hd matrix.
fn gather(qkv: &[f32], s: &Attention, b: usize, h: usize, part: usize) -> Vec<f32> {
    let (w, hd) = (s.qkv_width(), s.head_dim);
    let col = part * s.width() + h * hd;
    (0..s.seq).flat_map(|t| &qkv[(b * s.seq + t) * w + col..][..hd]).copied().collect()
}

/// The probabilities of one head: `P = exp(S − lse)` with `S = Q·Kᵀ/sqrt(hd)`,
/// masked above the diagonal when causal. With `lse = None`, computes and returns it.
fn probabilities(q: &[f32], k: &[f32], s: &Attention, lse: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let t = s.seq;
    let mut p = vec![0.0; t * t];
    matmul(&mut p, q, k, t, s.head_dim, t, false, true, 1.0 / (s.head_dim as f32).sqrt(), 0.0);
    let mut lse_out = vec![0.0; t];
    for (i, row) in p.chunks_exact_mut(t).enumerate() {
        let visible = if s.causal { i + 1 } else { t };
        let l = match lse {
            Some(l) => l[i],
            None => {
                let max = row[..visible].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                max + row[..visible].iter().map(|&z| (z - max).exp()).sum::<f32>().ln()
            }
        };
        lse_out[i] = l;
        row[..visible].iter_mut().for_each(|z| *z = (*z - l).exp());
        row[visible..].iter_mut().for_each(|z| *z = 0.0);
    }
    (p, lse_out)
}

/// Writes a seq×hd matrix into head `h` of a (batch·seq)×(stride) buffer at column `col0`.
fn scatter(dst: &mut [f32], src: &[f32], s: &Attention, b: usize, stride: usize, col0: usize) {
    for t in 0..s.seq {
        dst[(b * s.seq + t) * stride + col0..][..s.head_dim].copy_from_slice(&src[t * s.head_dim..][..s.head_dim]);
    }
}

fn check(s: &Attention, qkv: usize, out: usize, lse: usize) {
    let rows = s.batch * s.seq;
    assert!(
        qkv == rows * s.qkv_width() && out == rows * s.width() && lse == s.batch * s.heads * s.seq,
        "attention shapes do not match {s:?}"
    );
}

pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: Attention) {
    check(&s, qkv.len(), out.len(), lse.len());
    let heads: Vec<(usize, usize)> = (0..s.batch).flat_map(|b| (0..s.heads).map(move |h| (b, h))).collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = heads
        .par_iter()
        .map(|&(b, h)| {
            let (q, k, v) = (gather(qkv, &s, b, h, 0), gather(qkv, &s, b, h, 1), gather(qkv, &s, b, h, 2));
            let (p, l) = probabilities(&q, &k, &s, None);
            let mut o = vec![0.0; s.seq * s.head_dim];
            matmul(&mut o, &p, &v, s.seq, s.seq, s.head_dim, false, false, 1.0, 0.0);
            (o, l)
        })
        .collect();
    for (&(b, h), (o, l)) in heads.iter().zip(results) {
        scatter(out, &o, &s, b, s.width(), h * s.head_dim);
        lse[(b * s.heads + h) * s.seq..][..s.seq].copy_from_slice(&l);
    }
}

pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], out: &[f32], lse: &[f32], s: Attention) {
    check(&s, qkv.len(), out.len(), lse.len());
    assert!(dqkv.len() == qkv.len() && dout.len() == out.len(), "attention gradient shapes");
    let (t, hd) = (s.seq, s.head_dim);
    let heads: Vec<(usize, usize)> = (0..s.batch).flat_map(|b| (0..s.heads).map(move |h| (b, h))).collect();
    let grads: Vec<[Vec<f32>; 3]> = heads
        .par_iter()
        .map(|&(b, h)| {
            let (q, k, v) = (gather(qkv, &s, b, h, 0), gather(qkv, &s, b, h, 1), gather(qkv, &s, b, h, 2));
            let narrow = Attention { heads: 1, ..s };
            let col = |m: &[f32]| -> Vec<f32> { (0..t).flat_map(|i| &m[(b * t + i) * s.width() + h * hd..][..hd]).copied().collect() };
            let (d_o, o) = (col(dout), col(out));
            let (p, _) = probabilities(&q, &k, &narrow, Some(&lse[(b * s.heads + h) * t..][..t]));
            // dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ∘ (dP − rowsum(dO ∘ O)).
            let mut dv = vec![0.0; t * hd];
            matmul(&mut dv, &p, &d_o, t, t, hd, true, false, 1.0, 0.0);
            let mut ds = vec![0.0; t * t];
            matmul(&mut ds, &d_o, &v, t, hd, t, false, true, 1.0, 0.0);
            for i in 0..t {
                let d: f32 = (0..hd).map(|c| d_o[i * hd + c] * o[i * hd + c]).sum();
                for j in 0..t {
                    ds[i * t + j] = p[i * t + j] * (ds[i * t + j] - d);
                }
            }
            let scale = 1.0 / (hd as f32).sqrt();
            let (mut dq, mut dk) = (vec![0.0; t * hd], vec![0.0; t * hd]);
            matmul(&mut dq, &ds, &k, t, t, hd, false, false, scale, 0.0);
            matmul(&mut dk, &ds, &q, t, t, hd, true, false, scale, 0.0);
            [dq, dk, dv]
        })
        .collect();
    for (&(b, h), g) in heads.iter().zip(grads) {
        for (part, m) in g.iter().enumerate() {
            scatter(dqkv, m, &s, b, s.qkv_width(), part * s.width() + h * hd);
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
