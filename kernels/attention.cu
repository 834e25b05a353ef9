// Fused multi-head attention, FlashAttention-style, in f32 (no tensor cores):
// online softmax over key tiles held in shared memory, so no seq x seq matrix
// ever reaches global memory. Mirrors Backend::attention_forward/backward; the
// CPU reference is src/backend/cpu/transformer.rs.
//
// Layouts as the CPU's (attention.cuh). Scores are (q.k)*scale with scale =
// 1/sqrt(D); causal rows i see keys j <= i only.
//
// Forward: a block (4 warps) owns 16 query rows of one (batch, head), 4 rows per
// warp; for each tile of 32 keys, lane j computes the scores of key j against
// the warp's 4 rows, the warp updates the running max/sum (online softmax) and
// every lane accumulates D/32 output columns (lanes >= D idle when D = 16).
// Writes out and lse = m + log(l).
//
// Backward: attention_backward_delta computes delta_i = rowsum(dO_i * O_i); then
// attention_backward_dkdv_<D> gives a block a tile of BK keys of one (batch,
// head), keeping dK/dV in registers while looping over query tiles (P recomputed
// from lse), and attention_backward_dq_<D> gives a block a tile of queries,
// keeping dQ in registers while looping over key tiles (P and dS recomputed).
// No atomics: every gradient is summed in a fixed order, so a run reproduces
// bit for bit.
//
// Tile sizes and the block size are in constants.cuh, shared with the launches.
#include "attention.cuh"
#include "common.cuh"
#include "constants.cuh"

#define ATTN_WARPS (ATTN_THREADS / 32)
#define FWD_BLOCK_Q ATTN_FORWARD_QUERY_TILE         // query rows per block
#define FWD_ROWS (FWD_BLOCK_Q / ATTN_WARPS)         // query rows per warp
#define FWD_BLOCK_K 32                         // keys per tile: one per lane
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float attn_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ float attn_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// grid = (batch*heads, ceil(seq/FWD_BLOCK_Q) or fewer: query tiles are grid-strided).
template <int D>
__device__ __forceinline__ void attention_forward_body(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    static_assert(D == 16 || D % 32 == 0, "head dim must be 16 or a multiple of 32");
    constexpr int C = (D + 31) / 32;  // output columns per lane
    const bool lane_has_column = D % 32 == 0 || (threadIdx.x & 31) < D;  // all lanes but for D = 16
    __shared__ float qs[FWD_BLOCK_Q][D];
    __shared__ float ks[FWD_BLOCK_K][D + 1];  // padded: lane j reads row j, conflict-free
    __shared__ float vs[FWD_BLOCK_K][D];

    const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = warp * FWD_ROWS;  // this warp's first row within the block's tile
    const long long w3 = 3LL * heads * D, wo = (long long)heads * D;
    const float* base = qkv + (long long)b * seq * w3 + (long long)h * D;  // q of row t at base + t*w3
    const long long k_off = (long long)heads * D, v_off = 2LL * heads * D;

    for (int q0 = blockIdx.y * FWD_BLOCK_Q; q0 < seq; q0 += gridDim.y * FWD_BLOCK_Q) {
        __syncthreads();  // the previous query tile's shared data is consumed
        for (int e = threadIdx.x; e < FWD_BLOCK_Q * D; e += ATTN_THREADS) {
            const int r = e / D, d = e % D, t = q0 + r;
            qs[r][d] = t < seq ? base[t * w3 + d] : 0.0f;
        }
        float m[FWD_ROWS], l[FWD_ROWS], acc[FWD_ROWS][C];
#pragma unroll
        for (int r = 0; r < FWD_ROWS; ++r) {
            m[r] = -OPTLAB_INFINITY;
            l[r] = 0.0f;
#pragma unroll
            for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
        }
        const int q_end = min(q0 + FWD_BLOCK_Q, seq);
        const int k_end = causal ? q_end : seq;  // no row of this tile sees keys >= k_end
        for (int k0 = 0; k0 < k_end; k0 += FWD_BLOCK_K) {
            __syncthreads();  // previous key tile consumed (and qs written)
            for (int e = threadIdx.x; e < FWD_BLOCK_K * D; e += ATTN_THREADS) {
                const int r = e / D, d = e % D, t = k0 + r;
                const bool ok = t < seq;
                ks[r][d] = ok ? base[t * w3 + k_off + d] : 0.0f;
                vs[r][d] = ok ? base[t * w3 + v_off + d] : 0.0f;
            }
            __syncthreads();
            const int j = k0 + lane;  // this lane's key
            float s[FWD_ROWS];
#pragma unroll
            for (int r = 0; r < FWD_ROWS; ++r) s[r] = 0.0f;
#pragma unroll 8
            for (int d = 0; d < D; ++d) {
                const float kd = ks[lane][d];
#pragma unroll
                for (int r = 0; r < FWD_ROWS; ++r) s[r] = fmaf(qs[row0 + r][d], kd, s[r]);
            }
            float p[FWD_ROWS];
#pragma unroll
            for (int r = 0; r < FWD_ROWS; ++r) {
                const int i = q0 + row0 + r;
                const bool visible = j < seq && (!causal || j <= i);
                const float z = visible ? s[r] * scale : -OPTLAB_INFINITY;
                const float mn = fmaxf(m[r], attn_warp_max(z));
                // Key 0 is visible to every row, so mn is finite from the first tile
                // on; the guards only keep a fully masked prefix from making NaNs.
                p[r] = visible ? expf(z - mn) : 0.0f;
                const float alpha = m[r] == -OPTLAB_INFINITY ? 0.0f : expf(m[r] - mn);
                l[r] = l[r] * alpha + attn_warp_sum(p[r]);
                m[r] = mn;
#pragma unroll
                for (int c = 0; c < C; ++c) acc[r][c] *= alpha;
            }
#pragma unroll 4
            for (int jj = 0; jj < FWD_BLOCK_K; ++jj) {
                float vj[C];
#pragma unroll
                for (int c = 0; c < C; ++c) vj[c] = lane_has_column ? vs[jj][lane + 32 * c] : 0.0f;
#pragma unroll
                for (int r = 0; r < FWD_ROWS; ++r) {
                    const float pj = __shfl_sync(FULL_MASK, p[r], jj);
#pragma unroll
                    for (int c = 0; c < C; ++c) acc[r][c] = fmaf(pj, vj[c], acc[r][c]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < FWD_ROWS; ++r) {
            const int i = q0 + row0 + r;
            if (i < seq && lane_has_column) {
                const float inv = 1.0f / l[r];
                float* o = out + ((long long)b * seq + i) * wo + (long long)h * D;
#pragma unroll
                for (int c = 0; c < C; ++c) o[lane + 32 * c] = acc[r][c] * inv;
                if (lane == 0) lse[(long long)bh * seq + i] = m[r] + logf(l[r]);  // lane 0 has a column
            }
        }
    }
}

extern "C" __global__ void attention_forward_16(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_body<16>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_32(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_body<32>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_64(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_body<64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_128(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_body<128>(out, lse, qkv, seq, heads, causal, scale);
}

// delta[(b*heads + h)*seq + i] = sum_c dout[row, h*D + c] * out[row, h*D + c] with
// row = b*seq + i: one warp per (b, h, i), grid-strided.
extern "C" __global__ void attention_backward_delta(float* delta, const float* dout, const float* out, int batch, int seq, int heads, int head_dim) {
    const long long rows = (long long)batch * heads * seq;
    const long long wo = (long long)heads * head_dim;
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (long long row = (long long)blockIdx.x * warps + (threadIdx.x >> 5); row < rows; row += (long long)gridDim.x * warps) {
        const long long bh = row / seq;
        const int i = (int)(row % seq), b = (int)(bh / heads), h = (int)(bh % heads);
        const long long off = ((long long)b * seq + i) * wo + (long long)h * head_dim;
        float s = 0.0f;
        for (int c = lane; c < head_dim; c += 32) s = fmaf(dout[off + c], out[off + c], s);
        s = attn_warp_sum(s);
        if (lane == 0) delta[row] = s;
    }
}

// The shared tiles of both backward kernels: BK keys (K, V) and BQ queries (Q,
// dO, lse, delta), and the P and dS of every (query, key) pair between them.
template <int D, int BQ, int BK>
struct BackwardTiles {
    float ks[BK][D + 1];
    float vs[BK][D + 1];
    float qs[BQ][D];
    float dos[BQ][D];
    float ps[BQ][BK + 1];
    float dss[BQ][BK + 1];
    float lse[BQ];
    float delta[BQ];
};

template <int D, int BQ, int BK>
__device__ __forceinline__ void load_key_tile(BackwardTiles<D, BQ, BK>& s, const float* qkv, const Head& hd, int k0, int seq) {
    const float* base = qkv + hd.qkv_offset;
    for (int e = threadIdx.x; e < BK * D; e += ATTN_THREADS) {
        const int c = e / D, d = e % D, t = k0 + c;
        const bool ok = t < seq;
        s.ks[c][d] = ok ? base[t * hd.w3 + hd.k_off + d] : 0.0f;
        s.vs[c][d] = ok ? base[t * hd.w3 + hd.v_off + d] : 0.0f;
    }
}

template <int D, int BQ, int BK>
__device__ __forceinline__ void load_query_tile(BackwardTiles<D, BQ, BK>& s, const float* qkv, const float* dout, const float* lse,
                                                const float* delta, const Head& hd, int q0, int seq) {
    for (int e = threadIdx.x; e < BQ * D; e += ATTN_THREADS) {
        const int r = e / D, d = e % D, t = q0 + r;
        const bool ok = t < seq;
        s.qs[r][d] = ok ? qkv[hd.qkv_offset + t * hd.w3 + d] : 0.0f;
        s.dos[r][d] = ok ? dout[hd.rows_offset + t * hd.wo + d] : 0.0f;
    }
    for (int r = threadIdx.x; r < BQ; r += ATTN_THREADS) {
        const int t = q0 + r;
        s.lse[r] = t < seq ? lse[hd.stats_offset + t] : 0.0f;
        s.delta[r] = t < seq ? delta[hd.stats_offset + t] : 0.0f;
    }
}

// P_ij = exp(s_ij - lse_i), dS_ij = P_ij (dO_i . v_j - delta_i), 0 where masked,
// for the loaded tiles (queries from q0, keys from k0).
template <int D, int BQ, int BK>
__device__ __forceinline__ void score_gradients(BackwardTiles<D, BQ, BK>& s, int q0, int k0, int seq, int causal, float scale) {
    for (int e = threadIdx.x; e < BQ * BK; e += ATTN_THREADS) {
        const int r = e / BK, c = e % BK, i = q0 + r, j = k0 + c;
        float z = 0.0f, dp = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) {
            z = fmaf(s.qs[r][d], s.ks[c][d], z);
            dp = fmaf(s.dos[r][d], s.vs[c][d], dp);
        }
        const bool visible = i < seq && j < seq && (!causal || j <= i);
        const float p = visible ? expf(z * scale - s.lse[r]) : 0.0f;
        s.ps[r][c] = p;
        s.dss[r][c] = visible ? p * (dp - s.delta[r]) : 0.0f;
    }
}

// dK and dV: grid = (batch*heads, key tiles; grid-strided). A block owns BK keys
// and keeps their dK/dV in registers while looping over query tiles of BQ.
template <int D, int BK>
__device__ __forceinline__ void attention_backward_dkdv_body(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                             const float* delta, int seq, int heads, int causal, float scale) {
    static_assert(D == 16 || D % 32 == 0, "head dim must be 16 or a multiple of 32");
    static_assert((BK * D) % ATTN_THREADS == 0, "key tile must split evenly over the block");
    constexpr int BQ = BK;
    constexpr int PER = BK * D / ATTN_THREADS;  // dK (and dV) entries per thread
    __shared__ BackwardTiles<D, BQ, BK> s;
    const Head hd(seq, heads, D);
    float* dbase = dqkv + hd.qkv_offset;

    for (int k0 = blockIdx.y * BK; k0 < seq; k0 += gridDim.y * BK) {
        __syncthreads();  // the previous key tile's shared data is consumed
        load_key_tile(s, qkv, hd, k0, seq);
        float dk[PER], dv[PER];
#pragma unroll
        for (int k = 0; k < PER; ++k) dk[k] = dv[k] = 0.0f;
        // Causal: queries before k0 see none of these keys.
        const int q_start = causal ? (k0 / BQ) * BQ : 0;
        for (int q0 = q_start; q0 < seq; q0 += BQ) {
            __syncthreads();  // previous query tile consumed (and the key tile written)
            load_query_tile(s, qkv, dout, lse, delta, hd, q0, seq);
            __syncthreads();
            score_gradients(s, q0, k0, seq, causal, scale);
            __syncthreads();
            // dV_j += sum_i P_ij dO_i; dK_j += sum_i dS_ij q_i (scaled at the end).
#pragma unroll
            for (int k = 0; k < PER; ++k) {
                const int e = threadIdx.x + k * ATTN_THREADS, c = e / D, d = e % D;
                float av = dv[k], ak = dk[k];
#pragma unroll 8
                for (int r = 0; r < BQ; ++r) {
                    av = fmaf(s.ps[r][c], s.dos[r][d], av);
                    ak = fmaf(s.dss[r][c], s.qs[r][d], ak);
                }
                dv[k] = av;
                dk[k] = ak;
            }
        }
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int e = threadIdx.x + k * ATTN_THREADS, c = e / D, d = e % D, j = k0 + c;
            if (j < seq) {
                dbase[j * hd.w3 + hd.k_off + d] = dk[k] * scale;
                dbase[j * hd.w3 + hd.v_off + d] = dv[k];
            }
        }
    }
}

// dQ: grid = (batch*heads, query tiles; grid-strided). A block owns BQ queries
// and keeps their dQ in registers while looping over key tiles, so every dQ is
// summed in one fixed order with no atomics: a run is bit-reproducible. It
// recomputes P and dS, as FlashAttention-2's deterministic backward does.
template <int D, int BQ>
__device__ __forceinline__ void attention_backward_dq_body(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                           const float* delta, int seq, int heads, int causal, float scale) {
    static_assert((BQ * D) % ATTN_THREADS == 0, "query tile must split evenly over the block");
    constexpr int BK = BQ;
    constexpr int PER = BQ * D / ATTN_THREADS;  // dQ entries per thread
    __shared__ BackwardTiles<D, BQ, BK> s;
    const Head hd(seq, heads, D);
    float* dbase = dqkv + hd.qkv_offset;

    for (int q0 = blockIdx.y * BQ; q0 < seq; q0 += gridDim.y * BQ) {
        __syncthreads();  // the previous query tile's shared data is consumed
        load_query_tile(s, qkv, dout, lse, delta, hd, q0, seq);
        float dq[PER];
#pragma unroll
        for (int k = 0; k < PER; ++k) dq[k] = 0.0f;
        const int k_end = causal ? min(q0 + BQ, seq) : seq;  // no query of this tile sees keys >= k_end
        for (int k0 = 0; k0 < k_end; k0 += BK) {
            __syncthreads();  // previous key tile consumed (and the query tile written)
            load_key_tile(s, qkv, hd, k0, seq);
            __syncthreads();
            score_gradients(s, q0, k0, seq, causal, scale);
            __syncthreads();
            // dQ_i += sum_j dS_ij k_j (scaled at the end).
#pragma unroll
            for (int k = 0; k < PER; ++k) {
                const int e = threadIdx.x + k * ATTN_THREADS, r = e / D, d = e % D;
                float a = dq[k];
#pragma unroll 8
                for (int c = 0; c < BK; ++c) a = fmaf(s.dss[r][c], s.ks[c][d], a);
                dq[k] = a;
            }
        }
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int e = threadIdx.x + k * ATTN_THREADS, r = e / D, d = e % D, i = q0 + r;
            if (i < seq) dbase[i * hd.w3 + d] = dq[k] * scale;
        }
    }
}

extern "C" __global__ void attention_backward_dkdv_16(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_body<16, ATTN_BACKWARD_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_16(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dq_body<16, ATTN_BACKWARD_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_32(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_body<32, ATTN_BACKWARD_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_32(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dq_body<32, ATTN_BACKWARD_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_64(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_body<64, ATTN_BACKWARD_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_64(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dq_body<64, ATTN_BACKWARD_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_128(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_body<128, ATTN_BACKWARD_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_128(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* delta,
                                                   int seq, int heads, int causal, float scale) {
    attention_backward_dq_body<128, ATTN_BACKWARD_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
