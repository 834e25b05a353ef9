// Attention on tensor cores: FlashAttention-2 (Dao 2023, arXiv 2307.08691,
// Algorithms 1 and 2) with bf16 or tf32 operands (kernels/mma.cuh), f32 softmax
// statistics and f32 accumulation. Same layouts, scaling, masking and outputs as
// the f32 kernels of attention.cu, which stay the reference.
//
// Every block has ATTN_THREADS threads (4 warps) and owns ATTN_MMA_TILE = 64
// rows of one (batch, head), 16 per warp; operands are converted to the operand
// type on their way into shared memory, and each warp's products stay in its
// registers (a C tile of S or dS becomes an A operand as is).
// - Forward: a block owns queries and loops over tiles of BK keys: S = Q·Kᵀ,
//   the running max and sum of each row (its columns lie in one quad of lanes),
//   O += P·V; writes out and lse = m + log l over the scaled scores. Key tiles
//   after a warp's last row are skipped when causal.
// - Backward, after attention.cu's delta = rowsum(dO∘O): dK/dV, a block owning
//   keys and looping over query tiles (Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, then
//   dV += Pᵀ·dO and dK += dSᵀ·Q); dQ, a block owning queries and looping over key
//   tiles (S, dP, then dQ += dS·K). No atomics: bit-reproducible. Both take
//   dynamic shared memory (four operand tiles, then lse and delta), more than the
//   default 48 KiB at large head dims: the backend opts in.
#include "attention.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "constants.cuh"

#define MMA_FULL_MASK 0xffffffffu
static_assert(16 * (ATTN_THREADS / 32) == ATTN_MMA_TILE, "16 rows per warp");

// The lanes 4g..4g+3 hold the columns of rows g and g+8: reduce over the quad.
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(MMA_FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(MMA_FULL_MASK, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(MMA_FULL_MASK, v, 1);
    return v + __shfl_xor_sync(MMA_FULL_MASK, v, 2);
}

// tile[r][d] = row first + r of src (row i at src + i*stride), converted to the
// operand type; zero past seq. The block's threads share the work.
template <class Op, int D>
__device__ __forceinline__ void load_rows(typename Op::Elem* tile, const float* src, long long stride, int first, int rows, int seq) {
    for (int e = threadIdx.x; e < rows * D; e += ATTN_THREADS) {
        const int r = e / D, d = e % D, i = first + r;
        tile[r * (D + Op::PAD) + d] = Op::from_float(i < seq ? src[i * stride + d] : 0.0f);
    }
}

template <int N>
__device__ __forceinline__ void zero(float (&c)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) c[n][i] = 0.0f;
}

// Stores a warp's 16×D accumulator (rows row0 + g and + g + 8, scaled) as f32
// pairs at dst + row*stride; rows past seq are not written.
template <int N>
__device__ __forceinline__ void store_rows(float* dst, long long stride, int row0, int seq, const float (&c)[N][4], const float (&scale)[2]) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + g + 8 * half;
        if (row >= seq) continue;
        float* p = dst + row * stride + 2 * t;
#pragma unroll
        for (int n = 0; n < N; ++n) *reinterpret_cast<float2*>(p + 8 * n) = make_float2(c[n][2 * half] * scale[half], c[n][2 * half + 1] * scale[half]);
    }
}

// C += A·Bᵀ for a warp: A's 16 rows from `a` (row stride STRIDE), the N 8-row
// tiles of B from `b`, both with D columns (Sᵀ = K·Qᵀ, S = Q·Kᵀ, dP = dO·Vᵀ).
template <class Op, int D, int N>
__device__ __forceinline__ void multiply_transposed(float (&c)[N][4], const typename Op::Elem* a, const typename Op::Elem* b) {
    constexpr int STRIDE = D + Op::PAD;
#pragma unroll
    for (int s = 0; s < D / Op::K; ++s) {
        unsigned fa[4];
        Op::load_a(fa, a + s * Op::K, STRIDE);
#pragma unroll
        for (int n = 0; n < N; ++n) {
            unsigned fb[2];
            Op::load_b_transposed(fb, b + 8 * n * STRIDE + s * Op::K, STRIDE);
            Op::mma(c[n], fa, fb);
        }
    }
}

// C += P·B for a warp: P (16 × 8M) in the registers of its C tiles, B's 8M rows
// of D columns from `b` (P·V, Pᵀ·dO, dSᵀ·Q, dS·K).
template <class Op, int D, int M>
__device__ __forceinline__ void multiply_registers(float (&c)[D / 8][4], const float (&p)[M][4], const typename Op::Elem* b) {
    constexpr int STRIDE = D + Op::PAD;
#pragma unroll
    for (int s = 0; s < 8 * M / Op::K; ++s) {
        unsigned fa[4];
        Op::a_from_c(fa, p + s * (Op::K / 8));
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            unsigned fb[2];
            Op::load_b(fb, b + s * Op::K * STRIDE + 8 * n, STRIDE);
            Op::mma(c[n], fa, fb);
        }
    }
}

// grid = (batch*heads, ceil(seq/64) or fewer: query tiles are grid-strided).
template <class Op, int D, int BK>
__device__ __forceinline__ void attention_forward_mma_body(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    using Elem = typename Op::Elem;
    static_assert(D % 16 == 0 && BK % 16 == 0, "head dim and key tile must be multiples of 16");
    static_assert(2 * BK >= ATTN_MMA_TILE, "the query tile is staged in the key/value buffer");
    constexpr int STRIDE = D + Op::PAD;  // elements per shared row
    // Keys then values; first the query tile. float4s: 16-byte aligned rows.
    static_assert(STRIDE * sizeof(Elem) % 16 == 0, "shared rows must keep 16-byte alignment");
    __shared__ float4 kv_storage[2 * BK * STRIDE * sizeof(Elem) / 16];
    Elem* const ks = reinterpret_cast<Elem*>(kv_storage);
    Elem* const vs = ks + BK * STRIDE;

    const Head hd(seq, heads, D);
    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float* base = qkv + hd.qkv_offset;

    for (int q0 = blockIdx.y * ATTN_MMA_TILE; q0 < seq; q0 += gridDim.y * ATTN_MMA_TILE) {
        __syncthreads();  // the previous query tile's keys and values are consumed
        load_rows<Op, D>(ks, base, hd.w3, q0, ATTN_MMA_TILE, seq);
        __syncthreads();
        const int row0 = q0 + 16 * warp;               // this warp's first row
        const int rows[2] = {row0 + g, row0 + g + 8};  // this lane's rows
        unsigned qa[D / Op::K][4];
#pragma unroll
        for (int s = 0; s < D / Op::K; ++s) Op::load_a(qa[s], ks + 16 * warp * STRIDE + s * Op::K, STRIDE);

        float m[2] = {-OPTLAB_INFINITY, -OPTLAB_INFINITY}, l[2] = {0.0f, 0.0f}, o[D / 8][4];
        zero(o);
        const int k_end = causal ? min(q0 + ATTN_MMA_TILE, seq) : seq;  // no row of the tile sees keys past it
        for (int k0 = 0; k0 < k_end; k0 += BK) {
            __syncthreads();  // the query fragments are loaded, or the previous keys and values consumed
            load_rows<Op, D>(ks, base + hd.k_off, hd.w3, k0, BK, seq);
            load_rows<Op, D>(vs, base + hd.v_off, hd.w3, k0, BK, seq);
            __syncthreads();
            if (causal && k0 > row0 + 15) continue;  // every key of the tile comes after this warp's rows

            float sc[BK / 8][4];
            zero(sc);
#pragma unroll
            for (int s = 0; s < D / Op::K; ++s)
#pragma unroll
                for (int n = 0; n < BK / 8; ++n) {
                    unsigned kb[2];
                    Op::load_b_transposed(kb, ks + 8 * n * STRIDE + s * Op::K, STRIDE);
                    Op::mma(sc[n], qa[s], kb);
                }

            // Online softmax: element i of a C tile is in row half i >> 1.
            float tile_max[2] = {-OPTLAB_INFINITY, -OPTLAB_INFINITY};
#pragma unroll
            for (int n = 0; n < BK / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int key = k0 + 8 * n + 2 * t + (i & 1);
                    const bool visible = key < seq && (!causal || key <= rows[i >> 1]);
                    sc[n][i] = visible ? sc[n][i] * scale : -OPTLAB_INFINITY;
                    tile_max[i >> 1] = fmaxf(tile_max[i >> 1], sc[n][i]);
                }
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float mn = fmaxf(m[half], quad_max(tile_max[half]));
                // Key 0 is visible to every row, so mn is finite from the first tile
                // on; the guards only keep a fully masked prefix from making NaNs.
                const float alpha = m[half] == -OPTLAB_INFINITY ? 0.0f : expf(m[half] - mn);
                m[half] = mn;
                l[half] *= alpha;
#pragma unroll
                for (int n = 0; n < D / 8; ++n) {
                    o[n][2 * half] *= alpha;
                    o[n][2 * half + 1] *= alpha;
                }
            }
#pragma unroll
            for (int n = 0; n < BK / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float p = sc[n][i] == -OPTLAB_INFINITY ? 0.0f : expf(sc[n][i] - m[i >> 1]);
                    sc[n][i] = p;
                    l[i >> 1] += p;
                }
            multiply_registers<Op, D>(o, sc, vs);  // O += P·V
        }
        float inv[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float total = quad_sum(l[half]);
            inv[half] = 1.0f / total;
            if (rows[half] < seq && t == 0) lse[hd.stats_offset + rows[half]] = m[half] + logf(total);
        }
        store_rows(out + hd.rows_offset, hd.wo, row0, seq, o, inv);
    }
}

// The backward's dynamic shared memory: four operand tiles (the block's own
// ATTN_MMA_TILE rows twice, the loop's LT rows twice), then LT floats of lse and
// of delta. src/backend/cuda/transformer.rs launches with exactly this size.
template <class Op, int D, int LT>
struct BackwardShared {
    static constexpr int STRIDE = D + Op::PAD;
    typename Op::Elem *own0, *own1, *loop0, *loop1;
    float *lse, *delta;
    __device__ explicit BackwardShared(float4* raw) {
        static_assert(STRIDE * sizeof(typename Op::Elem) % 16 == 0, "shared rows must keep 16-byte alignment");
        own0 = reinterpret_cast<typename Op::Elem*>(raw);
        own1 = own0 + ATTN_MMA_TILE * STRIDE;
        loop0 = own1 + ATTN_MMA_TILE * STRIDE;
        loop1 = loop0 + LT * STRIDE;
        lse = reinterpret_cast<float*>(loop1 + LT * STRIDE);
        delta = lse + LT;
    }
};

// dK and dV: grid = (batch*heads, key tiles; grid-strided). A block owns 64 keys,
// 16 per warp, and loops over the query tiles of LT that see them.
template <class Op, int D, int LT>
__device__ __forceinline__ void attention_backward_dkdv_mma_body(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                                 const float* delta, int seq, int heads, int causal, float scale) {
    static_assert(ATTN_MMA_TILE % LT == 0, "query tiles must align with key tiles (causal start)");
    OPTLAB_DYNAMIC_SHARED(float4, raw);
    const BackwardShared<Op, D, LT> sh(raw);
    constexpr int STRIDE = BackwardShared<Op, D, LT>::STRIDE;
    const Head hd(seq, heads, D);
    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float* base = qkv + hd.qkv_offset;

    for (int k0 = blockIdx.y * ATTN_MMA_TILE; k0 < seq; k0 += gridDim.y * ATTN_MMA_TILE) {
        __syncthreads();  // the previous key tile is consumed
        load_rows<Op, D>(sh.own0, base + hd.k_off, hd.w3, k0, ATTN_MMA_TILE, seq);
        load_rows<Op, D>(sh.own1, base + hd.v_off, hd.w3, k0, ATTN_MMA_TILE, seq);
        const int key0 = k0 + 16 * warp;
        const int keys[2] = {key0 + g, key0 + g + 8};
        float dk[D / 8][4], dv[D / 8][4];
        zero(dk);
        zero(dv);
        // Causal: queries before k0 see none of these keys.
        for (int q0 = causal ? k0 : 0; q0 < seq; q0 += LT) {
            __syncthreads();  // the previous query tile is consumed (and the key tile written)
            load_rows<Op, D>(sh.loop0, base, hd.w3, q0, LT, seq);
            load_rows<Op, D>(sh.loop1, dout + hd.rows_offset, hd.wo, q0, LT, seq);
            for (int r = threadIdx.x; r < LT; r += ATTN_THREADS) {
                const int i = q0 + r;
                sh.lse[r] = i < seq ? lse[hd.stats_offset + i] : 0.0f;
                sh.delta[r] = i < seq ? delta[hd.stats_offset + i] : 0.0f;
            }
            __syncthreads();
            if (causal && q0 + LT - 1 < key0) continue;  // every query of the tile comes before this warp's keys
            float st[LT / 8][4], dpt[LT / 8][4];  // Sᵀ and dPᵀ: this warp's keys × the tile's queries
            zero(st);
            zero(dpt);
            multiply_transposed<Op, D>(st, sh.own0 + 16 * warp * STRIDE, sh.loop0);
            multiply_transposed<Op, D>(dpt, sh.own1 + 16 * warp * STRIDE, sh.loop1);
            // Pᵀ = exp(Sᵀ·scale − lse_col) and dSᵀ = Pᵀ ∘ (dPᵀ − delta_col); 0 where masked.
#pragma unroll
            for (int n = 0; n < LT / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int c = 8 * n + 2 * t + (i & 1), query = q0 + c, key = keys[i >> 1];
                    const bool visible = query < seq && key < seq && (!causal || key <= query);
                    const float p = visible ? expf(st[n][i] * scale - sh.lse[c]) : 0.0f;
                    st[n][i] = p;
                    dpt[n][i] = visible ? p * (dpt[n][i] - sh.delta[c]) : 0.0f;
                }
            multiply_registers<Op, D>(dv, st, sh.loop1);   // dV += Pᵀ·dO
            multiply_registers<Op, D>(dk, dpt, sh.loop0);  // dK += dSᵀ·Q
        }
        const float one[2] = {1.0f, 1.0f}, scaled[2] = {scale, scale};
        store_rows(dqkv + hd.qkv_offset + hd.k_off, hd.w3, key0, seq, dk, scaled);
        store_rows(dqkv + hd.qkv_offset + hd.v_off, hd.w3, key0, seq, dv, one);
    }
}

// dQ: grid = (batch*heads, query tiles; grid-strided). A block owns 64 queries,
// 16 per warp, and loops over the key tiles of LT they see, recomputing S and dP.
template <class Op, int D, int LT>
__device__ __forceinline__ void attention_backward_dq_mma_body(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                               const float* delta, int seq, int heads, int causal, float scale) {
    OPTLAB_DYNAMIC_SHARED(float4, raw);
    const BackwardShared<Op, D, LT> sh(raw);
    constexpr int STRIDE = BackwardShared<Op, D, LT>::STRIDE;
    const Head hd(seq, heads, D);
    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float* base = qkv + hd.qkv_offset;

    for (int q0 = blockIdx.y * ATTN_MMA_TILE; q0 < seq; q0 += gridDim.y * ATTN_MMA_TILE) {
        __syncthreads();  // the previous query tile is consumed
        load_rows<Op, D>(sh.own0, base, hd.w3, q0, ATTN_MMA_TILE, seq);
        load_rows<Op, D>(sh.own1, dout + hd.rows_offset, hd.wo, q0, ATTN_MMA_TILE, seq);
        const int row0 = q0 + 16 * warp;
        const int rows[2] = {row0 + g, row0 + g + 8};
        float row_lse[2], row_delta[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            row_lse[half] = rows[half] < seq ? lse[hd.stats_offset + rows[half]] : 0.0f;
            row_delta[half] = rows[half] < seq ? delta[hd.stats_offset + rows[half]] : 0.0f;
        }
        float dq[D / 8][4];
        zero(dq);
        const int k_end = causal ? min(q0 + ATTN_MMA_TILE, seq) : seq;  // no query of the tile sees keys past it
        for (int k0 = 0; k0 < k_end; k0 += LT) {
            __syncthreads();  // the previous key tile is consumed (and the query tile written)
            load_rows<Op, D>(sh.loop0, base + hd.k_off, hd.w3, k0, LT, seq);
            load_rows<Op, D>(sh.loop1, base + hd.v_off, hd.w3, k0, LT, seq);
            __syncthreads();
            if (causal && k0 > row0 + 15) continue;  // every key of the tile comes after this warp's rows
            float sc[LT / 8][4], dp[LT / 8][4];  // S and dP: this warp's queries × the tile's keys
            zero(sc);
            zero(dp);
            multiply_transposed<Op, D>(sc, sh.own0 + 16 * warp * STRIDE, sh.loop0);
            multiply_transposed<Op, D>(dp, sh.own1 + 16 * warp * STRIDE, sh.loop1);
            // dS = P ∘ (dP − delta_row), P = exp(S·scale − lse_row); 0 where masked.
#pragma unroll
            for (int n = 0; n < LT / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int key = k0 + 8 * n + 2 * t + (i & 1), half = i >> 1;
                    const bool visible = rows[half] < seq && key < seq && (!causal || key <= rows[half]);
                    const float p = visible ? expf(sc[n][i] * scale - row_lse[half]) : 0.0f;
                    sc[n][i] = visible ? p * (dp[n][i] - row_delta[half]) : 0.0f;
                }
            multiply_registers<Op, D>(dq, sc, sh.loop0);  // dQ += dS·K
        }
        const float scaled[2] = {scale, scale};
        store_rows(dqkv + hd.qkv_offset, hd.w3, row0, seq, dq, scaled);
    }
}

// Forward key tiles: 64 keys, but 32 for tf32 at head dim 128 (its f32 tiles must fit 48 KiB of static shared memory).
extern "C" __global__ void attention_forward_bf16_16(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaBf16, 16, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_bf16_32(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaBf16, 32, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_bf16_64(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaBf16, 64, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_bf16_128(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaBf16, 128, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_tf32_16(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaTf32, 16, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_tf32_32(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaTf32, 32, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_tf32_64(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaTf32, 64, 64>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_forward_tf32_128(float* out, float* lse, const float* qkv, int seq, int heads, int causal, float scale) {
    attention_forward_mma_body<MmaTf32, 128, 32>(out, lse, qkv, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_bf16_16(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaBf16, 16, ATTN_MMA_LOOP_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_bf16_16(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaBf16, 16, ATTN_MMA_LOOP_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_bf16_32(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaBf16, 32, ATTN_MMA_LOOP_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_bf16_32(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaBf16, 32, ATTN_MMA_LOOP_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_bf16_64(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaBf16, 64, ATTN_MMA_LOOP_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_bf16_64(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaBf16, 64, ATTN_MMA_LOOP_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_bf16_128(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaBf16, 128, ATTN_MMA_LOOP_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_bf16_128(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaBf16, 128, ATTN_MMA_LOOP_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_tf32_16(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaTf32, 16, ATTN_MMA_LOOP_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_tf32_16(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaTf32, 16, ATTN_MMA_LOOP_TILE_16>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_tf32_32(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaTf32, 32, ATTN_MMA_LOOP_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_tf32_32(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaTf32, 32, ATTN_MMA_LOOP_TILE_32>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_tf32_64(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaTf32, 64, ATTN_MMA_LOOP_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_tf32_64(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaTf32, 64, ATTN_MMA_LOOP_TILE_64>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dkdv_tf32_128(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dkdv_mma_body<MmaTf32, 128, ATTN_MMA_LOOP_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
extern "C" __global__ void attention_backward_dq_tf32_128(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                          const float* delta, int seq, int heads, int causal, float scale) {
    attention_backward_dq_mma_body<MmaTf32, 128, ATTN_MMA_LOOP_TILE_128>(dqkv, dout, qkv, lse, delta, seq, heads, causal, scale);
}
