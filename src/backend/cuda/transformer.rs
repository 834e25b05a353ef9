//! CUDA transformer ops: LayerNorm and embeddings (`kernels/transformer.cu`) and
//! fused FlashAttention-style attention (`kernels/attention.cu`). The CPU
//! backend's ops of the same names (`cpu/transformer.rs`) are the reference.
//!
//! Per-call scratch (ids, partial sums, dQ and delta buffers) is freed when it
//! drops at the end of each op: cudarc frees with `cuMemFreeAsync` on the
//! backend's single stream (or synchronizes first), so the free is ordered after
//! the kernels that use it.

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::{LaunchConfig, sys};

use super::launch::{Arg, Launch, blocks};
use super::ops::nn;
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
    LaunchConfig { grid_dim: (blocks(rows.div_ceil(8).min(65_535)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The backward key tile of a supported head dim, or an error naming the
/// supported ones or a row too wide for the kernels' 32-bit offsets.
fn backward_key_tile(s: &Attention) -> Result<usize> {
    if i32::try_from(s.qkv_width()).is_err() {
        bail!("CUDA attention: {s:?} has rows of {} values, past the kernels' 32-bit index", s.qkv_width());
    }
    ATTENTION_HEAD_DIMS.iter().find(|(d, _)| *d == s.head_dim).map(|&(_, bk)| bk).with_context(|| {
        let dims: Vec<String> = ATTENTION_HEAD_DIMS.iter().map(|(d, _)| d.to_string()).collect();
        format!("CUDA attention has kernels for head_dim {} only, not {} ({s:?})", dims.join(", "), s.head_dim)
    })
}

/// LayerNorm forward over `rows` rows of `dim`: buffers [y, mean, rstd, x, gamma, beta].
pub(super) fn layernorm_forward_launch(buffers: [sys::CUdeviceptr; 6], eps: f32, rows: usize, dim: usize) -> Launch {
    let args = buffers.map(Arg::Ptr).into_iter().chain([eps.into(), Arg::Index(rows), Arg::Index(dim)]).collect();
    Launch::new("layernorm_forward", warp_per_row(rows), args)
}

/// Rows per chunk and chunks of LayerNorm's dgamma/dbeta partial sums.
fn layernorm_chunks(rows: usize) -> (usize, usize) {
    let per_chunk = rows.div_ceil(rows.div_ceil(ROWS_PER_CHUNK).min(MAX_CHUNKS));
    (per_chunk, rows.div_ceil(per_chunk))
}

/// Floats of the scratch [`layernorm_backward_launches`] takes: both partial sums.
pub(super) fn layernorm_partial_len(rows: usize, dim: usize) -> usize {
    2 * layernorm_chunks(rows).1 * dim
}

/// LayerNorm backward: dx per row, then dgamma/dbeta as per-chunk column sums
/// into scratch summed over chunks (no atomics). Buffers [dx, dgamma, dbeta, dy,
/// x, mean, rstd, gamma, partial]; `partial` holds [`layernorm_partial_len`] floats.
pub(super) fn layernorm_backward_launches(buffers: [sys::CUdeviceptr; 9], rows: usize, dim: usize) -> [Launch; 4] {
    let [dx, dgamma, dbeta, dy, x, mean, rstd, gamma, partial] = buffers;
    let (rows_i, dim_i) = (Arg::Index(rows), Arg::Index(dim));
    let dx_args = [dx, dy, x, mean, rstd, gamma].map(Arg::Ptr).into_iter().chain([rows_i, dim_i]).collect();
    let (per_chunk, chunks) = layernorm_chunks(rows);
    let (pg, pb) = (partial, offset(partial, chunks * dim));
    let cfg = LaunchConfig { grid_dim: (blocks(dim.div_ceil(32)), blocks(chunks), 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let params_args = [pg, pb, dy, x, mean, rstd].map(Arg::Ptr).into_iter().chain([rows_i, dim_i, Arg::Index(per_chunk)]).collect();
    [
        Launch::new("layernorm_backward_dx", warp_per_row(rows), dx_args),
        Launch::new("layernorm_backward_params", cfg, params_args),
        nn::accumulate_column_sums(dgamma, pg, chunks, dim),
        nn::accumulate_column_sums(dbeta, pb, chunks, dim),
    ]
}

/// Attention forward, buffers [out, lse, qkv].
pub(super) fn attention_forward_launch(buffers: [sys::CUdeviceptr; 3], s: &Attention) -> Result<Launch> {
    // Checked here too: the forward pass has no tile of its own to look up.
    backward_key_tile(s)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks(s.batch * s.heads), blocks(s.seq.div_ceil(FORWARD_QUERY_TILE).min(MAX_GRID_Y)), 1),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let scalars = [Arg::Index(s.seq), Arg::Index(s.heads), i32::from(s.causal).into(), s.score_scale().into()];
    Ok(Launch::new(format!("attention_forward_{}", s.head_dim), cfg, buffers.map(Arg::Ptr).into_iter().chain(scalars).collect()))
}

/// Floats of attention backward's scratch: (delta, one per row; unscaled dQ, zeroed).
pub(super) fn attention_backward_scratch(s: &Attention) -> (usize, usize) {
    (s.batch * s.heads * s.seq, s.batch * s.seq * s.width())
}

/// Attention backward, buffers [dqkv, dout, qkv, out, lse, delta, dq] with the
/// scratch of [`attention_backward_scratch`]: delta_i = rowsum(dO_i ∘ O_i) (one
/// warp per row); dK and dV into dqkv with the unscaled dQ accumulated by
/// atomics into dq; then dQ = scale·dq into dqkv's q columns.
pub(super) fn attention_backward_launches(buffers: [sys::CUdeviceptr; 7], s: &Attention) -> Result<[Launch; 3]> {
    let key_tile = backward_key_tile(s)?;
    let [dqkv, dout, qkv, out, lse, delta, dq] = buffers;
    let (seq, heads, width, scale) = (Arg::Index(s.seq), Arg::Index(s.heads), s.width(), s.score_scale());
    let delta_args = [delta, dout, out].map(Arg::Ptr).into_iter().chain([Arg::Index(s.batch), seq, heads, Arg::Index(s.head_dim)]);
    let cfg = LaunchConfig {
        grid_dim: (blocks(s.batch * s.heads), blocks(s.seq.div_ceil(key_tile).min(MAX_GRID_Y)), 1),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let backward_args =
        [dqkv, dq, dout, qkv, lse, delta].map(Arg::Ptr).into_iter().chain([seq, heads, i32::from(s.causal).into(), scale.into()]);
    let n = s.batch * s.seq * width;
    let dq_args = vec![Arg::Ptr(dqkv), Arg::Ptr(dq), scale.into(), Arg::Index(width), n.into()];
    Ok([
        Launch::new("attention_backward_delta", warp_per_row(s.batch * s.heads * s.seq), delta_args.collect()),
        Launch::new(format!("attention_backward_{}", s.head_dim), cfg, backward_args.collect()),
        Launch::new("attention_backward_dq", elementwise(n), dq_args),
    ])
}

/// `kernel(a, b, ids, dim, rows·dim)`: embedding_forward (a = out, b = table)
/// or embedding_backward (a = dtable, b = dout) over `rows` ids (u32).
pub(super) fn embedding_launch(kernel: &str, buffers: [sys::CUdeviceptr; 3], rows: usize, dim: usize) -> Launch {
    let n = rows * dim;
    Launch::new(kernel, elementwise(n), buffers.map(Arg::Ptr).into_iter().chain([Arg::Index(dim), n.into()]).collect())
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
        self.launch(&layernorm_forward_launch([y.ptr, mean.ptr, rstd.ptr, x.ptr, gamma.ptr, beta.ptr], eps, rows, dim));
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
        let Some(partial) = self.pending.keep(self.alloc::<f32>(layernorm_partial_len(rows, dim))) else { return };
        let buffers = [dx.ptr, dgamma.ptr, dbeta.ptr, dy.ptr, x.ptr, mean.ptr, rstd.ptr, gamma.ptr, base_ptr(&partial)];
        for launch in layernorm_backward_launches(buffers, rows, dim) {
            self.launch(&launch);
        }
    }

    pub(super) fn attention_forward_impl(&self, out: DViewMut<'_>, lse: DViewMut<'_>, qkv: DView<'_>, s: Attention) {
        s.assert_lengths(qkv.len, out.len, lse.len);
        if let Some(launch) = self.pending.keep(attention_forward_launch([out.ptr, lse.ptr, qkv.ptr], &s)) {
            self.launch(&launch);
        }
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
        s.assert_lengths(qkv.len, out.len, lse.len);
        assert!(dqkv.len == qkv.len && dout.len == out.len, "attention gradient shapes");
        let unsupported = self.pending.keep(backward_key_tile(&s)).is_none();
        if unsupported || s.batch * s.heads * s.seq == 0 || self.pending.is_set() {
            return;
        }
        let (delta_len, dq_len) = attention_backward_scratch(&s);
        // dq must start at zero: the backward kernel accumulates into it.
        let scratch = || Ok((self.alloc::<f32>(delta_len)?, self.alloc::<f32>(dq_len)?));
        let Some((delta, dq)) = self.pending.keep(scratch()) else { return };
        let buffers = [dqkv.ptr, dout.ptr, qkv.ptr, out.ptr, lse.ptr, base_ptr(&delta), base_ptr(&dq)];
        if let Some(launches) = self.pending.keep(attention_backward_launches(buffers, &s)) {
            launches.iter().for_each(|l| self.launch(l));
        }
    }

    pub(super) fn embedding_forward_impl(&self, out: DViewMut<'_>, table: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(out.len, ids.len() * dim, "embedding output must be ids×dim");
        self.embedding_launch("embedding_forward", [out.ptr, table.ptr], ids, dim, table.len);
    }

    pub(super) fn embedding_backward_impl(&self, dtable: DViewMut<'_>, dout: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(dout.len, ids.len() * dim, "embedding gradient must be ids×dim");
        self.embedding_launch("embedding_backward", [dtable.ptr, dout.ptr], ids, dim, dtable.len);
    }

    /// Checks `ids` against a table of `table_len` values, uploads them, and runs
    /// `kernel(views[0], views[1], ids, dim, ids·dim)`.
    fn embedding_launch(&self, kernel: &str, views: [sys::CUdeviceptr; 2], ids: &[u32], dim: usize, table_len: usize) {
        assert!(dim > 0, "embedding rows of length 0");
        for &id in ids {
            assert!((id as usize + 1) * dim <= table_len, "token id {id} outside a table of {} rows", table_len / dim);
        }
        if ids.is_empty() || self.pending.is_set() {
            return;
        }
        let uploaded = self.stream.clone_htod(ids).map_err(|e| anyhow!("CUDA upload of {} token ids failed: {e:?}", ids.len()));
        let Some(ids_dev) = self.pending.keep(uploaded) else { return };
        self.launch(&embedding_launch(kernel, [views[0], views[1], base_ptr(&ids_dev)], ids.len(), dim));
    }
}
