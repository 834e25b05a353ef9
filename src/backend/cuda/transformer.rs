//! CUDA transformer ops: LayerNorm and embeddings (`kernels/transformer.cu`) and
//! fused FlashAttention-style attention (`kernels/attention.cu`, and on tensor
//! cores `kernels/attention_mma.cu`). The CPU
//! backend's ops of the same names (`cpu/transformer.rs`) are the reference.
//!
//! Per-call scratch (ids, partial sums, delta buffers) is freed when it
//! drops at the end of each op: cudarc frees with `cuMemFreeAsync` on the
//! backend's single stream (or synchronizes first), so the free is ordered after
//! the kernels that use it.

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::{LaunchConfig, sys};

use super::constants::{
    ATTN_BACKWARD_TILE_16, ATTN_BACKWARD_TILE_32, ATTN_BACKWARD_TILE_64, ATTN_BACKWARD_TILE_128, ATTN_FORWARD_QUERY_TILE,
    ATTN_MMA_LOOP_TILE_16, ATTN_MMA_LOOP_TILE_32, ATTN_MMA_LOOP_TILE_64, ATTN_MMA_LOOP_TILE_128, ATTN_MMA_TILE, ATTN_THREADS, MMA_PAD_BF16,
    MMA_PAD_TF32,
};
use super::launch::{Arg, Launch, blocks};
use super::ops::nn;
use super::{Cuda, DView, DViewMut, base_ptr, elementwise, offset};
use crate::backend::{Attention, Precision};

/// Tiles of the attention kernels at one head dim (`kernels/constants.cuh`).
struct HeadDimTiles {
    head_dim: usize,
    /// Keys (and queries) per tile of the f32 backward kernels.
    f32_backward: usize,
    /// Rows of the tiles the tensor-core backward kernels loop over.
    mma_loop: usize,
}

/// Head dims with compiled attention kernels (`attention_{forward,backward_*}_<d>`).
const ATTENTION_HEAD_DIMS: [HeadDimTiles; 4] = [
    HeadDimTiles { head_dim: 16, f32_backward: ATTN_BACKWARD_TILE_16, mma_loop: ATTN_MMA_LOOP_TILE_16 },
    HeadDimTiles { head_dim: 32, f32_backward: ATTN_BACKWARD_TILE_32, mma_loop: ATTN_MMA_LOOP_TILE_32 },
    HeadDimTiles { head_dim: 64, f32_backward: ATTN_BACKWARD_TILE_64, mma_loop: ATTN_MMA_LOOP_TILE_64 },
    HeadDimTiles { head_dim: 128, f32_backward: ATTN_BACKWARD_TILE_128, mma_loop: ATTN_MMA_LOOP_TILE_128 },
];
/// Largest grid y dimension; the attention kernels grid-stride over tiles beyond it.
const MAX_GRID_Y: usize = 65_535;
/// Rows per chunk of LayerNorm's dgamma/dbeta partial sums (at most `MAX_CHUNKS` chunks).
const ROWS_PER_CHUNK: usize = 64;
const MAX_CHUNKS: usize = 1024;

/// One warp per row, 8 rows per 256-thread block (the kernels grid-stride over rows).
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks(rows.div_ceil(8).min(65_535)), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The tiles of a supported head dim, or an error naming the supported ones or
/// a row too wide for the kernels' 32-bit offsets.
fn head_dim_tiles(s: &Attention) -> Result<&'static HeadDimTiles> {
    if i32::try_from(s.qkv_width()).is_err() {
        bail!("CUDA attention: {s:?} has rows of {} values, past the kernels' 32-bit index", s.qkv_width());
    }
    ATTENTION_HEAD_DIMS.iter().find(|t| t.head_dim == s.head_dim).with_context(|| {
        let dims: Vec<String> = ATTENTION_HEAD_DIMS.iter().map(|t| t.head_dim.to_string()).collect();
        format!("CUDA attention has kernels for head_dim {} only, not {} ({s:?})", dims.join(", "), s.head_dim)
    })
}

/// The precision the attention kernels run at: the tensor-core kernels store
/// their output in f32 pairs, so an output view not 8-byte aligned (an odd
/// offset into a buffer) takes the f32 kernels instead.
fn tensor_cores_for(precision: Precision, output: sys::CUdeviceptr) -> Precision {
    if output.is_multiple_of(8) { precision } else { Precision::F32 }
}

/// Dynamic shared memory of the tensor-core backward kernels: four operand
/// tiles and the loop tile's lse and delta (`BackwardShared` in
/// kernels/attention_mma.cu).
fn mma_backward_shared_bytes(tiles: &HeadDimTiles, precision: Precision) -> usize {
    let (pad, bytes) = if precision == Precision::Bf16 { (MMA_PAD_BF16, 2) } else { (MMA_PAD_TF32, 4) };
    (2 * ATTN_MMA_TILE + 2 * tiles.mma_loop) * (tiles.head_dim + pad) * bytes + 2 * tiles.mma_loop * 4
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

/// Attention forward, buffers [out, lse, qkv]: the f32 kernel
/// (`kernels/attention.cu`) at f32, else FlashAttention-2 on tensor cores with
/// `precision`'s operands (`kernels/attention_mma.cu`), which writes the same
/// out and lse.
pub(super) fn attention_forward_launch(buffers: [sys::CUdeviceptr; 3], s: &Attention, precision: Precision) -> Result<Launch> {
    head_dim_tiles(s)?;
    let (kernel, query_tile) = match tensor_cores_for(precision, buffers[0]) {
        Precision::F32 => (format!("attention_forward_{}", s.head_dim), ATTN_FORWARD_QUERY_TILE),
        tensor_cores => (format!("attention_forward_{tensor_cores}_{}", s.head_dim), ATTN_MMA_TILE),
    };
    let cfg = LaunchConfig {
        grid_dim: (blocks(s.batch * s.heads), blocks(s.seq.div_ceil(query_tile).min(MAX_GRID_Y)), 1),
        block_dim: (blocks(ATTN_THREADS), 1, 1),
        shared_mem_bytes: 0,
    };
    let scalars = [Arg::Index(s.seq), Arg::Index(s.heads), i32::from(s.causal).into(), s.score_scale().into()];
    Ok(Launch::new(kernel, cfg, buffers.map(Arg::Ptr).into_iter().chain(scalars).collect()))
}

/// Attention backward, buffers [dqkv, dout, qkv, out, lse, delta] with `delta`
/// scratch of one float per (batch, head, position): delta_i = rowsum(dO_i ∘ O_i)
/// (one warp per row), then dK and dV (a block per key tile) and dQ (a block per
/// query tile) into dqkv, without atomics: in f32 (`kernels/attention.cu`), or on
/// tensor cores with `precision`'s operands (`kernels/attention_mma.cu`).
pub(super) fn attention_backward_launches(buffers: [sys::CUdeviceptr; 6], s: &Attention, precision: Precision) -> Result<[Launch; 3]> {
    let tiles = head_dim_tiles(s)?;
    let [dqkv, dout, qkv, out, lse, delta] = buffers;
    let (seq, heads) = (Arg::Index(s.seq), Arg::Index(s.heads));
    let delta_args = [delta, dout, out].map(Arg::Ptr).into_iter().chain([Arg::Index(s.batch), seq, heads, Arg::Index(s.head_dim)]);
    let (kernels, tile, shared) = match tensor_cores_for(precision, dqkv) {
        Precision::F32 => (["dkdv", "dq"].map(|k| format!("attention_backward_{k}_{}", s.head_dim)), tiles.f32_backward, 0),
        tensor_cores => (
            ["dkdv", "dq"].map(|k| format!("attention_backward_{k}_{tensor_cores}_{}", s.head_dim)),
            ATTN_MMA_TILE,
            mma_backward_shared_bytes(tiles, tensor_cores),
        ),
    };
    let cfg = LaunchConfig {
        grid_dim: (blocks(s.batch * s.heads), blocks(s.seq.div_ceil(tile).min(MAX_GRID_Y)), 1),
        block_dim: (blocks(ATTN_THREADS), 1, 1),
        shared_mem_bytes: blocks(shared),
    };
    let args: Vec<Arg> = [dqkv, dout, qkv, lse, delta]
        .map(Arg::Ptr)
        .into_iter()
        .chain([seq, heads, i32::from(s.causal).into(), s.score_scale().into()])
        .collect();
    let [dkdv, dq] = kernels;
    Ok([
        Launch::new("attention_backward_delta", warp_per_row(s.batch * s.heads * s.seq), delta_args.collect()),
        Launch::new(dkdv, cfg, args.clone()),
        Launch::new(dq, cfg, args),
    ])
}

/// embedding_forward: out[i, :] = table[ids[i], :], buffers [out, table, ids (u32)].
pub(super) fn embedding_forward_launch(buffers: [sys::CUdeviceptr; 3], rows: usize, dim: usize) -> Launch {
    let n = rows * dim;
    Launch::new("embedding_forward", elementwise(n), buffers.map(Arg::Ptr).into_iter().chain([Arg::Index(dim), n.into()]).collect())
}

/// How many ids differ, and embedding_backward's table: the distinct ids in
/// ascending order, then where each one's rows start (one offset per id and the
/// end), then the rows of each id in ascending order, so that the kernel sums
/// every id's rows in the CPU's order.
pub(super) fn embedding_groups(ids: &[u32]) -> (usize, Vec<u32>) {
    let mut rows: Vec<u32> = (0..ids.len() as u32).collect();
    rows.sort_by_key(|&r| ids[r as usize]); // stable: rows stay ascending within an id
    let (mut distinct, mut starts) = (Vec::new(), Vec::new());
    for (k, &r) in rows.iter().enumerate() {
        if distinct.last() != Some(&ids[r as usize]) {
            distinct.push(ids[r as usize]);
            starts.push(k as u32);
        }
    }
    starts.push(rows.len() as u32);
    (distinct.len(), [distinct, starts, rows].concat())
}

/// embedding_backward over the `groups` of [`embedding_groups`] for ids of
/// which `distinct` differ: buffers [dtable, dout, groups].
pub(super) fn embedding_backward_launch(buffers: [sys::CUdeviceptr; 3], distinct: usize, dim: usize) -> Launch {
    let n = distinct * dim;
    let args = buffers.map(Arg::Ptr).into_iter().chain([Arg::Index(distinct), Arg::Index(dim), n.into()]).collect();
    Launch::new("embedding_backward", elementwise(n), args)
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
        if let Some(launch) = self.pending.keep(attention_forward_launch([out.ptr, lse.ptr, qkv.ptr], &s, self.precision)) {
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
        let unsupported = self.pending.keep(head_dim_tiles(&s)).is_none();
        if unsupported || s.batch * s.heads * s.seq == 0 || self.pending.is_set() {
            return;
        }
        let Some(delta) = self.pending.keep(self.alloc::<f32>(s.batch * s.heads * s.seq)) else { return };
        let buffers = [dqkv.ptr, dout.ptr, qkv.ptr, out.ptr, lse.ptr, base_ptr(&delta)];
        let Some(mut launches) = self.pending.keep(attention_backward_launches(buffers, &s, self.precision)) else { return };
        // Where the device's shared memory per block is too small, the f32 kernels run.
        if launches[1..].iter().any(|l| l.cfg.shared_mem_bytes as usize > self.dynamic_shared_limit(&l.kernel)) {
            launches = attention_backward_launches(buffers, &s, Precision::F32).expect("the f32 kernels take every shape the others take");
        }
        launches.iter().for_each(|l| self.launch(l));
    }

    pub(super) fn embedding_forward_impl(&self, out: DViewMut<'_>, table: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(out.len, ids.len() * dim, "embedding output must be ids×dim");
        if let Some(ids_dev) = self.upload_ids(ids, ids, dim, table.len) {
            self.launch(&embedding_forward_launch([out.ptr, table.ptr, base_ptr(&ids_dev)], ids.len(), dim));
        }
    }

    pub(super) fn embedding_backward_impl(&self, dtable: DViewMut<'_>, dout: DView<'_>, ids: &[u32], dim: usize) {
        assert_eq!(dout.len, ids.len() * dim, "embedding gradient must be ids×dim");
        let (distinct, groups) = embedding_groups(ids);
        if let Some(groups_dev) = self.upload_ids(&groups, ids, dim, dtable.len) {
            self.launch(&embedding_backward_launch([dtable.ptr, dout.ptr, base_ptr(&groups_dev)], distinct, dim));
        }
    }

    /// Checks `ids` against a table of `table_len` values and uploads `data`;
    /// `None` when there is nothing to do or a failure is pending.
    fn upload_ids(&self, data: &[u32], ids: &[u32], dim: usize, table_len: usize) -> Option<cudarc::driver::CudaSlice<u32>> {
        assert!(dim > 0, "embedding rows of length 0");
        for &id in ids {
            assert!((id as usize + 1) * dim <= table_len, "token id {id} outside a table of {} rows", table_len / dim);
        }
        if ids.is_empty() || self.pending.is_set() {
            return None;
        }
        let uploaded = self.stream.clone_htod(data).map_err(|e| anyhow!("CUDA upload of {} token ids failed: {e:?}", data.len()));
        self.pending.keep(uploaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_core_attention_needs_an_aligned_output_and_else_runs_in_f32() {
        let s = Attention { batch: 2, seq: 70, heads: 2, head_dim: 64, causal: true };
        let forward = |out, precision| attention_forward_launch([out, 0x1000, 0x2000], &s, precision).unwrap().kernel;
        assert_eq!(forward(0x3000, Precision::Bf16), "attention_forward_bf16_64");
        assert_eq!(forward(0x3004, Precision::Bf16), "attention_forward_64");
        assert_eq!(forward(0x3000, Precision::F32), "attention_forward_64");
        let backward = |dqkv, precision| attention_backward_launches([dqkv, 0, 0, 0, 0, 0], &s, precision).unwrap();
        let tf32 = backward(0x3000, Precision::Tf32);
        assert_eq!([&tf32[1].kernel, &tf32[2].kernel], ["attention_backward_dkdv_tf32_64", "attention_backward_dq_tf32_64"]);
        // Four operand tiles (64 + 64 + 32 + 32 rows of 64 + 4 floats) and 2 × 32 floats of lse and delta.
        assert_eq!(tf32[1].cfg.shared_mem_bytes as usize, 192 * 68 * 4 + 2 * 32 * 4);
        assert_eq!(backward(0x3004, Precision::Tf32)[1].kernel, "attention_backward_dkdv_64");
        assert!(attention_forward_launch([0; 3], &Attention { head_dim: 48, ..s }, Precision::Bf16).is_err());
    }
}
