// Batched Newton-Schulz (Muon), src/backend/cuda/newton_schulz.rs: the quintic
// step X ← aX + P·X, P = bA + cA², A = X·Xᵀ, with bf16 GEMM operands and f32
// accumulation. Both paths work on the wide orientation: a tall matrix is its
// transpose (A = XᵀX, X ← aX + X·P, as the CPU reference).
//
// Rounding X to bf16 for the products and then using X ← aX + P·bf16(X) would
// multiply the rounding error by P, whose diagonal dominates (≈ −2.7 once
// Keller's iteration has converged, against a result ≈ 0.7): ~1% per step. So X
// stays f32 (the master) and the mean diagonal β = tr(P)/s moves onto it:
// X ← (a + β)·X + (P − βI)·bf16(X), equal in exact arithmetic, with the rounding
// multiplied by P − βI only. In a CPU emulation this cut the error after 5 steps
// from 2–6% to 1–2.5% of max |X| on random inputs, and kept low-rank inputs (whose
// null space amplifies any rounding by a per step) at 3–12%, where keeping X in
// bf16 gave 30–75%.
//
// - newton_schulz_in_shared_memory: the whole iteration in one launch, one block
//   per matrix, for a short side up to 128 that fits in shared memory.
// - square_sum_partials, frobenius_scales, scale_to_bf16 (normalization),
//   polynomial_shifts, shifted_to_bf16 (P − βI) and newton_schulz_update: the
//   steps around cuBLAS's strided-batched GEMMs for larger matrices.
#include "common.cuh"

#define NS_THREADS 512  // threads of newton_schulz_in_shared_memory (ONE_LAUNCH_THREADS in Rust)
#define NS_TILE 4       // a thread's register tile is NS_TILE rows × NS_TILE (Gram) or 2 (update) columns

// The two bf16 of a 32-bit word (element 2k in the low half, 2k+1 in the high), as f32.
__device__ __forceinline__ float2 bf16_pair(unsigned int w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// ---------------------------------------------------------------------------
// One launch per batch, in shared memory.
//
// Shared memory (dynamic), for short side s and long side l:
//   A  f32 s × lda        the Gram matrix (its pad columns stay 0)
//   P  f32 s × lda        the shifted polynomial P − βI
//   Xb bf16 s × 2·ldw     X's operand copy, two per 32-bit word
// with lda = 2·ns_padded_pairs(s) floats and ldw = ns_padded_pairs(l) words: an odd
// number of pairs per row, so the rows that a warp reads at once fall in distinct
// banks. The f32 master X lives in the output range itself.
// src/backend/cuda/newton_schulz.rs computes the same size (one_launch_shared_bytes).

__device__ __forceinline__ int ns_padded_pairs(int n) { return ((n + 1) / 2) | 1; }

// Element (i, j) of the wide orientation in the row-major input or output.
__device__ __forceinline__ long long ns_index(int i, int j, int s, int l, bool tall) {
    return tall ? (long long)j * s + i : (long long)i * l + j;
}

// Rows of bf16 pairs in shared memory, `ld` words per row.
struct Bf16Rows {
    const unsigned int* w;
    int ld;
    __device__ float2 pair(int row, int k2) const { return bf16_pair(w[row * ld + k2]); }
};

// Rows of f32 in shared memory, `ld` floats per row, read two at a time.
struct F32Rows {
    const float* a;
    int ld;
    __device__ float2 pair(int row, int k2) const {
        const float* p = a + row * ld + 2 * k2;
        return make_float2(p[0], p[1]);
    }
};

// Lanes sharing one tile of symmetric_product (a power of two ≤ 32): more lanes
// split the sum over k, for when there are fewer tiles than threads. Minimizes
// rounds × (pairs per lane + shuffle steps of the lanes' reduction).
__device__ int ns_lanes_per_tile(int tiles, int pairs) {
    int best = 1, best_cost = 0x7fffffff;
    for (int q = 1, levels = 0; q <= 32; q *= 2, ++levels) {
        const int slots = NS_THREADS / q;
        const int cost = (tiles + slots - 1) / slots * ((pairs + q - 1) / q + levels);
        if (cost < best_cost) {
            best = q;
            best_cost = cost;
        }
    }
    return best;
}

// C = alpha·R·Rᵀ (+ beta·add) for the s rows of R, summed over `pairs` pairs of
// columns; C and add have `ldc` floats per row. C is symmetric: only the tiles
// (gi ≤ gj) of the upper triangle are computed, each entry stored at (i, j) and
// (j, i). Row group g holds rows g, g + G, g + 2G, g + 3G (G = groups), so a
// warp's lanes read consecutive rows. No barrier inside: the caller syncs.
template <class Rows>
__device__ void symmetric_product(float* c, int ldc, Rows r, int pairs, int s, float alpha, const float* add, float beta) {
    const int groups = (s + NS_TILE - 1) / NS_TILE, tiles = groups * (groups + 1) / 2;
    const int q = ns_lanes_per_tile(tiles, pairs), slots = NS_THREADS / q;
    const int lane = threadIdx.x % q;
    // Every thread runs every round (the lanes' shuffles need the whole warp).
    for (int first = 0; first < tiles; first += slots) {
        const int t = first + (int)threadIdx.x / q;
        const bool live = t < tiles;
        int gi = 0, gj = live ? t : 0;  // tile t of the upper triangle, row by row
        while (gj >= groups - gi) {
            gj -= groups - gi;
            ++gi;
        }
        gj += gi;
        int ri[NS_TILE], rj[NS_TILE];
#pragma unroll
        for (int u = 0; u < NS_TILE; ++u) {
            ri[u] = min(gi + groups * u, s - 1);  // rows past s read row s−1; never stored
            rj[u] = min(gj + groups * u, s - 1);
        }
        float acc[NS_TILE][NS_TILE] = {};
        if (live) {
            for (int k2 = lane; k2 < pairs; k2 += q) {
                float2 x[NS_TILE], y[NS_TILE];
#pragma unroll
                for (int u = 0; u < NS_TILE; ++u) {
                    x[u] = r.pair(ri[u], k2);
                    y[u] = r.pair(rj[u], k2);
                }
#pragma unroll
                for (int u = 0; u < NS_TILE; ++u)
#pragma unroll
                    for (int v = 0; v < NS_TILE; ++v) acc[u][v] = fmaf(x[u].y, y[v].y, fmaf(x[u].x, y[v].x, acc[u][v]));
            }
        }
        for (int o = q / 2; o > 0; o /= 2)
#pragma unroll
            for (int u = 0; u < NS_TILE; ++u)
#pragma unroll
                for (int v = 0; v < NS_TILE; ++v) acc[u][v] += __shfl_xor_sync(0xffffffffu, acc[u][v], o);
        if (live && lane == 0) {
#pragma unroll
            for (int u = 0; u < NS_TILE; ++u)
#pragma unroll
                for (int v = 0; v < NS_TILE; ++v) {
                    const int i = gi + groups * u, j = gj + groups * v;
                    if (i < s && j < s) {
                        float e = alpha * acc[u][v];
                        if (add) e = fmaf(beta, add[i * ldc + j], e);
                        c[i * ldc + j] = e;
                        c[j * ldc + i] = e;
                    }
                }
        }
    }
}

// One block of NS_THREADS per matrix b, at offsets[b] of both `in` and `out`:
// out = NS(in) after `steps` quintic steps with (a, b, c) = schedule[3·step ..],
// starting from in / (factor·‖in‖_F + eps). `out` holds the f32 master throughout.
extern "C" __global__ void __launch_bounds__(NS_THREADS)
    newton_schulz_in_shared_memory(float* out, const float* in, const long long* offsets, int rows, int cols, int steps,
                                   const float* schedule, float factor, float eps) {
    OPTLAB_DYNAMIC_SHARED(float, ns_shared);
    __shared__ float inv_norm, a_shifted;
    const bool tall = rows > cols;
    const int s = tall ? cols : rows, l = tall ? rows : cols;
    const int lda = 2 * ns_padded_pairs(s), ldw = ns_padded_pairs(l), words = (l + 1) / 2;
    float* gram = ns_shared;
    float* poly = gram + s * lda;
    unsigned int* xw = (unsigned int*)(poly + s * lda);
    const float* g = in + offsets[blockIdx.x];
    float* x = out + offsets[blockIdx.x];
    const int tid = threadIdx.x;

    // X = G / (factor·‖G‖_F + eps), ‖G‖² summed in f64 as the CPU.
    double sq = 0.0;
    for (int e = tid; e < s * l; e += NS_THREADS) sq += (double)g[e] * (double)g[e];
    sq = block_sum_d(sq);
    if (tid == 0) inv_norm = 1.0f / (factor * (float)sqrt(sq) + eps);
    for (int e = tid; e < s * lda; e += NS_THREADS) gram[e] = 0.0f;  // A·A reads A's pad column
    __syncthreads();
    for (int e = tid; e < s * words; e += NS_THREADS) {
        const int i = e / words, w = e % words;
        unsigned int packed = 0;
        for (int h = 0; h < 2 && 2 * w + h < l; ++h) {
            const long long at = ns_index(i, 2 * w + h, s, l, tall);
            const float v = g[at] * inv_norm;
            x[at] = v;
            packed |= bf16_bits(v) << (16 * h);
        }
        xw[i * ldw + w] = packed;  // a missing odd column stays 0 for the Gram sums
    }
    __syncthreads();

    const int groups = (s + NS_TILE - 1) / NS_TILE;
    // The update covers whole columns per round (all row groups of `per_round` words),
    // so it can overwrite them in place once the round has read them.
    const int per_round = NS_THREADS / groups;
    for (int step = 0; step < steps; ++step) {
        const float a = schedule[3 * step], b = schedule[3 * step + 1], c = schedule[3 * step + 2];
        symmetric_product(gram, lda, Bf16Rows{xw, ldw}, words, s, 1.0f, nullptr, 0.0f);
        __syncthreads();
        // P = c·A·A + b·A: A is symmetric, so A·A's (i, j) is row i · row j.
        symmetric_product(poly, lda, F32Rows{gram, lda}, (s + 1) / 2, s, c, gram, b);
        __syncthreads();
        if (tid < 32) {
            float trace = 0.0f;
            for (int i = tid; i < s; i += 32) trace += poly[i * lda + i];
            const float beta = warp_sum(trace) / s;
            for (int i = tid; i < s; i += 32) poly[i * lda + i] -= beta;
            if (tid == 0) a_shifted = a + beta;
        }
        __syncthreads();
        // X ← (a + β)·X + (P − βI)·Xb; P is symmetric, so P[i][k] is read as P[k][i]:
        // the lanes of a warp take consecutive row groups, hence consecutive i.
        for (int w0 = 0; w0 < words; w0 += per_round) {
            const int w = w0 + tid / groups, gi = tid % groups;
            const bool live = tid < per_round * groups && w < words;
            int ri[NS_TILE];
#pragma unroll
            for (int u = 0; u < NS_TILE; ++u) ri[u] = min(gi + groups * u, s - 1);
            float acc[NS_TILE][2] = {};
            if (live) {
                for (int k = 0; k < s; ++k) {
                    const float2 y = bf16_pair(xw[k * ldw + w]);
#pragma unroll
                    for (int u = 0; u < NS_TILE; ++u) {
                        const float p = poly[k * lda + ri[u]];
                        acc[u][0] = fmaf(p, y.x, acc[u][0]);
                        acc[u][1] = fmaf(p, y.y, acc[u][1]);
                    }
                }
            }
            __syncthreads();  // this round's columns are read by all before any is overwritten
            if (live) {
#pragma unroll
                for (int u = 0; u < NS_TILE; ++u) {
                    const int i = gi + groups * u;
                    if (i >= s) continue;
                    unsigned int packed = 0;
                    for (int h = 0; h < 2 && 2 * w + h < l; ++h) {
                        const long long at = ns_index(i, 2 * w + h, s, l, tall);
                        const float v = fmaf(a_shifted, x[at], acc[u][h]);
                        x[at] = v;
                        packed |= bf16_bits(v) << (16 * h);
                    }
                    xw[i * ldw + w] = packed;
                }
            }
        }
        __syncthreads();  // X complete before the next Gram matrix
    }
}

// ---------------------------------------------------------------------------
// Around cuBLAS (one matrix of `len` elements after another).

// Every kernel here spreads over the whole grid, whatever the batch: a few
// large matrices (4×1024×4096) would leave most SMs idle with a block per matrix.

// ‖X_b‖² in pieces: block (c, b) sums chunk c of matrix b (len/chunks values, the
// last chunk shorter) in f64, in a fixed order, into partial[b·chunks + c].
extern "C" __global__ void square_sum_partials(double* partial, const float* x, long long len, int chunks) {
    const long long per = (len + chunks - 1) / chunks, begin = (long long)blockIdx.x * per;
    const long long end = min(begin + per, len), base = (long long)blockIdx.y * len;
    double s = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) s += (double)x[base + i] * (double)x[base + i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[(long long)blockIdx.y * chunks + blockIdx.x] = s;
}

// scale[b] = 1 / (factor·‖X_b‖_F + eps), the partials summed in order; a thread per matrix.
extern "C" __global__ void frobenius_scales(float* scale, const double* partial, int chunks, float factor, float eps, int batch) {
    GRID_STRIDE(b, batch) {
        double s = 0.0;
        for (int c = 0; c < chunks; ++c) s += partial[b * chunks + c];
        scale[b] = 1.0f / (factor * (float)sqrt(s) + eps);
    }
}

// x ← scale[matrix]·x over n elements (matrices of `len`), and xb = bf16(x).
extern "C" __global__ void scale_to_bf16(float* x, unsigned short* xb, const float* scale, long long len, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i] * scale[i / len];
        x[i] = v;
        xb[i] = (unsigned short)bf16_bits(v);
    }
}

// shift[b] = β = tr(P_b)/s of each s×s polynomial, summed in f64 in a fixed
// order; a warp per matrix.
extern "C" __global__ void polynomial_shifts(float* shift, const float* poly, int s, int batch) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (long long b = (long long)blockIdx.x * warps + (threadIdx.x >> 5); b < batch; b += (long long)gridDim.x * warps) {
        double trace = 0.0;
        for (int i = lane; i < s; i += 32) trace += poly[b * s * s + (long long)i * s + i];
        trace = warp_sum_d(trace);
        if (lane == 0) shift[b] = (float)(trace / s);
    }
}

// out = bf16(P − βI) over n elements (s×s matrices, β = shift[matrix]).
extern "C" __global__ void shifted_to_bf16(unsigned short* out, const float* poly, const float* shift, int s, long long n) {
    const long long ss = (long long)s * s;
    GRID_STRIDE(e, n) {
        const long long within = e % ss;
        out[e] = (unsigned short)bf16_bits(poly[e] - (within / s == within % s ? shift[e / ss] : 0.0f));
    }
}

// x ← (a + shift[matrix])·x + y over n elements (matrices of `len`), and xb = bf16(x).
extern "C" __global__ void newton_schulz_update(float* x, unsigned short* xb, const float* y, const float* shift, float a, long long len,
                                                long long n) {
    GRID_STRIDE(i, n) {
        const float v = fmaf(a + shift[i / len], x[i], y[i]);
        x[i] = v;
        xb[i] = (unsigned short)bf16_bits(v);
    }
}
