//! CUDA transformer ops: LayerNorm and embeddings (`kernels/transformer.cu`) and
//! fused FlashAttention-style attention (`kernels/attention.cu`). The CPU
//! backend's ops of the same names (`cpu/transformer.rs`) are the reference.
//!
//! Per-call scratch (ids, partial sums, dQ and delta buffers) is freed when it
//! drops at the end of each op: cudarc frees with `cuMemFreeAsync` on the
//! backend's single stream (or synchronizes first), so the free is ordered after
//! the kernels that use it.

use cudarc::driver::LaunchConfig;

use super::ops::{Arg, ptr_of};
use super::{Cuda, DView, DViewMut, base_ptr, elementwise, offset};
use crate::backend::Attention;

/// Head dims with compiled attention kernels (`attention_{forward,backward}_<d>`),
/// each with the key tile of its backward kernel: must match the
/// `attention_backward_body<D, BK>` instances in kernels/attention.cu.
const ATTENTION_HEAD_DIMS: [(usize, usize); 4] = [(16, 32), (32, 32), (64, 32), (128, 16)];
/// Query rows per forward block (`FWD_BLOCK_Q` in kernels/attention.cu).
const FORWARD_QUERY_TILE: usize = 16;
/// Threads per attention block (`ATTN_THREADS`).
const ATTENTION_THREADS: u32 = 128;
/// Largest grid y dimension; the attention kernels grid-stride over tiles beyond it.
const MAX_GRID_Y: usize = 65_535;
/// Rows per chunk of LayerNorm's dgamma/dbeta partial sums (at most `MAX_CHUNKS` chunks).
const ROWS_PER_CHUNK: usize = 64;
const MAX_CHUNKS: usize = 1024;

/// One warp per row, 8 rows per 256-thread block (the kernels grid-stride over rows).
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(8).clamp(1, 65_535) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn as_i32(x: usize, what: &str) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{what} = {x} does not fit the kernels' 32-bit index"))
}

/// The backward key tile of a supported head dim; panics naming the supported ones.
fn backward_key_tile(s: &Attention) -> usize {
    ATTENTION_HEAD_DIMS.iter().find(|(d, _)| *d == s.head_dim).map(|&(_, bk)| bk).unwrap_or_else(|| {
        let dims: Vec<String> = ATTENTION_HEAD_DIMS.iter().map(|(d, _)| d.to_string()).collect();
        panic!("CUDA attention supports head_dim {} only, not {} ({s:?})", dims.join(", "), s.head_dim)
    })
}

/// The shape check every backend makes, plus the kernels' index limits.
fn check_attention(s: &Attention, qkv: usize, out: usize, lse: usize) {
    s.assert_lengths(qkv, out, lse);
    as_i32(s.seq, "attention seq");
    as_i32(s.batch * s.heads, "attention batch·heads");
    as_i32(s.width(), "attention heads·head_dim");
}

impl Cuda {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layernorm_forward_impl(
        &self,
        y: DViewMut<'_>,
        mean: DViewMut<'_>,
        rstd: DViewMut<'_>,
        x: DView<'_>,
        gamma: DView<'_>,
        beta: DView<'_>,
        eps: f32,
    ) {
        let dim = gamma.len;
        assert!(dim > 0, "layernorm over rows of length 0");
        assert!(x.len == y.len && x.len == mean.len * dim && mean.len == rstd.len && beta.len == dim, "layernorm shapes");
        let rows = mean.len;
        if rows == 0 {
            return;
        }
        let args = [
            (&y).into(),
            (&mean).into(),
            (&rstd).into(),
            x.into(),
            gamma.into(),
            beta.into(),
            eps.into(),
            as_i32(rows, "layernorm rows").into(),
            as_i32(dim, "layernorm dim").into(),
        ];
        self.launch("layernorm_forward", warp_per_row(rows), &args);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn layernorm_backward_impl(
        &self,
        dx: DViewMut<'_>,
        dgamma: DViewMut<'_>,
        dbeta: DViewMut<'_>,
        dy: DView<'_>,
        x: DView<'_>,
        mean: DView<'_>,
        rstd: DView<'_>,
        gamma: DView<'_>,
    ) {
        let dim = gamma.len;
        assert!(dim > 0, "layernorm over rows of length 0");
        assert!(
            dx.len == x.len && dy.len == x.len && x.len == mean.len * dim && mean.len == rstd.len && dgamma.len == dim && dbeta.len == dim,
            "layernorm shapes"
        );
        let rows = mean.len;
        if rows == 0 {
            return;
        }
        let (rows_i, dim_i) = (as_i32(rows, "layernorm rows"), as_i32(dim, "layernorm dim"));
        let args = [(&dx).into(), dy.into(), x.into(), mean.into(), rstd.into(), gamma.into(), rows_i.into(), dim_i.into()];
        self.launch("layernorm_backward_dx", warp_per_row(rows), &args);

        // dgamma/dbeta: per-chunk column sums into scratch, then summed over chunks.
        let per_chunk = rows.div_ceil(rows.div_ceil(ROWS_PER_CHUNK).min(MAX_CHUNKS));
        let chunks = rows.div_ceil(per_chunk);
        let partial = self.alloc::<f32>(2 * chunks * dim);
        let (pg, pb) = (base_ptr(&partial), offset(base_ptr(&partial), chunks * dim));
        let cfg = LaunchConfig { grid_dim: (dim.div_ceil(32) as u32, chunks as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let args = [
            Arg::Ptr(pg),
            Arg::Ptr(pb),
            dy.into(),
            x.into(),
            mean.into(),
            rstd.into(),
            rows_i.into(),
            dim_i.into(),
            as_i32(per_chunk, "layernorm rows per chunk").into(),
        ];
        self.launch("layernorm_backward_params", cfg, &args);
        for (out, part) in [(&dgamma, pg), (&dbeta, pb)] {
            let args = [out.into(), Arg::Ptr(part), (chunks as i32).into(), dim_i.into()];
            self.launch("accumulate_column_sums", elementwise(dim), &args);
        }
    }

    pub(super) fn attention_forward_impl(&self, out: DViewMut<'_>, lse: DViewMut<'_>, qkv: DView<'_>, s: Attention) {
        check_attention(&s, qkv.len, out.len, lse.len);
        backward_key_tile(&s); // rejects unsupported head dims
        if s.batch * s.heads * s.seq == 0 {
            return;
        }
        let cfg = LaunchConfig {
            grid_dim: ((s.batch * s.heads) as u32, s.seq.div_ceil(FORWARD_QUERY_TILE).min(MAX_GRID_Y) as u32, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let scale = s.score_scale();
        let args = [
            (&out).into(),
            (&lse).into(),
            qkv.into(),
            (s.seq as i32).into(),
            (s.heads as i32).into(),
            i32::from(s.causal).into(),
            scale.into(),
        ];
        self.launch(&format!("attention_forward_{}", s.head_dim), cfg, &args);
    }

    pub(super) fn attention_backward_impl(
        &self,
        dqkv: DViewMut<'_>,
        dout: DView<'_>,
        qkv: DView<'_>,
        out: DView<'_>,
        lse: DView<'_>,
        s: Attention,
    ) {
        check_attention(&s, qkv.len, out.len, lse.len);
        assert!(dqkv.len == qkv.len && dout.len == out.len, "attention gradient shapes");
        let key_tile = backward_key_tile(&s);
        if s.batch * s.heads * s.seq == 0 {
            return;
        }
        let (seq, heads, width) = (s.seq as i32, s.heads as i32, s.width());
        let rows = s.batch * s.heads * s.seq;
        // delta_i = rowsum(dO_i ∘ O_i), one warp per (batch, head, query).
        let delta = self.alloc::<f32>(rows);
        let args = [ptr_of(&delta), dout.into(), out.into(), (s.batch as i32).into(), seq.into(), heads.into(), (s.head_dim as i32).into()];
        self.launch("attention_backward_delta", warp_per_row(rows), &args);
        // dK, dV into dqkv; unscaled dQ accumulated (atomics) into a zeroed buffer.
        let dq = self.alloc::<f32>(s.batch * s.seq * width);
        let cfg = LaunchConfig {
            grid_dim: ((s.batch * s.heads) as u32, s.seq.div_ceil(key_tile).min(MAX_GRID_Y) as u32, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let scale = s.score_scale();
        let args = [
            (&dqkv).into(),
            ptr_of(&dq),
            dout.into(),
            qkv.into(),
            lse.into(),
            ptr_of(&delta),
            seq.into(),
            heads.into(),
            i32::from(s.causal).into(),
            scale.into(),
        ];
        self.launch(&format!("attention_backward_{}", s.head_dim), cfg, &args);
        // dQ = scale·dq into the q columns of dqkv.
        let n = s.batch * s.seq * width;
        self.launch("attention_backward_dq", elementwise(n), &[(&dqkv).into(), ptr_of(&dq), scale.into(), (width as i32).into(), n.into()]);
    }

    pub(super) fn embedding_forward_impl(&self, out: DViewMut<'_>, table: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(out.len, ids.len() * dim, "embedding output must be ids×dim");
        self.embedding_launch("embedding_forward", [(&out).into(), table.into()], ids, dim, table.len);
    }

    pub(super) fn embedding_backward_impl(&self, dtable: DViewMut<'_>, dout: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(dout.len, ids.len() * dim, "embedding gradient must be ids×dim");
        self.embedding_launch("embedding_backward", [(&dtable).into(), dout.into()], ids, dim, dtable.len);
    }

    /// Checks `ids` against a table of `table_len` values, uploads them, and runs
    /// `kernel(views[0], views[1], ids, dim, ids·dim)`.
    fn embedding_launch(&self, kernel: &str, views: [Arg; 2], ids: &[u32], dim: usize, table_len: usize) {
        assert!(dim > 0, "embedding rows of length 0");
        for &id in ids {
            assert!((id as usize + 1) * dim <= table_len, "token id {id} outside a table of {} rows", table_len / dim);
        }
        if ids.is_empty() {
            return;
        }
        let ids_dev = self.stream.clone_htod(ids).unwrap_or_else(|e| panic!("CUDA upload of token ids failed: {e:?}"));
        let n = ids.len() * dim;
        let [a, b] = views;
        self.launch(kernel, elementwise(n), &[a, b, ptr_of(&ids_dev), as_i32(dim, "embedding dim").into(), n.into()]);
    }
}
