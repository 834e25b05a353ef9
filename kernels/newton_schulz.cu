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
// - newton_schulz_in_shared_memory: the whole iteration in one launch on tensor
//   cores, one block per matrix, for a short side up to 128 that fits in shared
//   memory.
// - square_sum_partials, frobenius_scales, scale_to_bf16 (normalization),
//   polynomial_shifts, shifted_to_bf16 (P − βI) and newton_schulz_update: the
//   steps around cuBLAS's strided-batched GEMMs for larger matrices.
#include "common.cuh"
#include "constants.cuh"
#include "mma.cuh"

#define NS_WARPS (NS_THREADS / 32)
#define NS_ROW_BLOCKS (NS_ONE_LAUNCH_MAX_SHORT / 16)  // 16-row blocks of the largest short side

// ---------------------------------------------------------------------------
// One launch per batch, in shared memory, on tensor cores (kernels/mma.cuh).
//
// Shared memory (dynamic), for short side s and long side l rounded up to 16
// (sp, lp), rows and columns past s and l held at 0:
//   A   f32  sp × (sp + MMA_PAD_TF32)   the Gram matrix
//   Pb  bf16 sp × (sp + MMA_PAD_BF16)   the shifted polynomial P − βI
//   Xb  bf16 sp × (lp + MMA_PAD_BF16)   X's operand copy
// The f32 master X lives in the output range itself. src/backend/cuda/newton_schulz.rs
// computes the same size (one_launch_shared_bytes).
//
// A step, with the cuBLAS path's operand types: A = Xb·Xbᵀ (bf16 operands);
// P − βI = c·A·A + b·A − βI with A·A from tf32 operands (A keeps 10 mantissa
// bits, not bf16's 7: A·A's error reaches every entry of P) and
// β = tr(P)/s = (c·‖A‖²_F + b·tr A)/s taken from A before P exists, so that P
// goes straight to bf16; then X ← (a + β)·X + (P − βI)·Xb.

// Element (i, j) of the wide orientation in the row-major input or output.
__device__ __forceinline__ long long ns_index(int i, int j, int s, int l, bool tall) {
    return tall ? (long long)j * s + i : (long long)i * l + j;
}

__device__ __forceinline__ int ns_round16(int n) { return (n + 15) & ~15; }

// tf32 operands from f32 values not yet rounded: cvt.rna on the way into the
// fragments (the tensor cores would otherwise truncate).
struct MmaTf32Rounded : MmaTf32 {
    template <int N>
    static __device__ __forceinline__ void round(unsigned (&r)[N]) {
#pragma unroll
        for (int i = 0; i < N; ++i) r[i] = OPTLAB_TO_TF32(__uint_as_float(r[i]));
    }
    static __device__ __forceinline__ void load_a(unsigned (&a)[4], const float* tile, int stride) {
        MmaTf32::load_a(a, tile, stride);
        round(a);
    }
    static __device__ __forceinline__ void load_b_transposed(unsigned (&b)[2], const float* tile, int stride) {
        MmaTf32::load_b_transposed(b, tile, stride);
        round(b);
    }
};

// C = R·Rᵀ over the first `k_len` columns of R (a multiple of Op::K; R's rows
// and columns past the real ones are 0), for the s×s symmetric C: warp w takes
// the 16×16 blocks (bi ≤ bj) w, w + NS_WARPS, … of the upper triangle and hands
// each entry (i, j < s) to store(i, j, value, mirror): a block off the diagonal
// stores (j, i) too (mirror = true); a diagonal block's lanes hold both. No
// barrier inside: the caller syncs.
template <class Op, class Store>
__device__ void ns_symmetric_product(const typename Op::Elem* r, int stride, int k_len, int s, Store store) {
    const int nb = (s + 15) / 16, blocks = nb * (nb + 1) / 2;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int block = threadIdx.x >> 5; block < blocks; block += NS_WARPS) {  // warp-uniform
        int bi = 0, bj = block;  // block of the upper triangle, row by row
        while (bj >= nb - bi) {
            bj -= nb - bi;
            ++bi;
        }
        bj += bi;
        float c[2][4] = {};
        for (int k = 0; k < k_len; k += Op::K) {
            unsigned a[4], b[2];
            Op::load_a(a, r + bi * 16 * stride + k, stride);
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                Op::load_b_transposed(b, r + (bj * 16 + 8 * n) * stride + k, stride);
                Op::mma(c[n], a, b);
            }
        }
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = bi * 16 + g + 8 * (e >> 1), j = bj * 16 + 8 * n + 2 * t + (e & 1);
                if (i < s && j < s) store(i, j, c[n][e], bi != bj);
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
    __shared__ float inv_norm, shift, a_shifted;
    const bool tall = rows > cols;
    const int s = tall ? cols : rows, l = tall ? rows : cols;
    const int sp = ns_round16(s), lp = ns_round16(l), nb = sp / 16;
    const int lda = sp + MMA_PAD_TF32, ldp = sp + MMA_PAD_BF16, ldx = lp + MMA_PAD_BF16;
    float* gram = ns_shared;
    unsigned short* pb = (unsigned short*)(gram + sp * lda);
    unsigned short* xb = pb + sp * ldp;
    const float* g = in + offsets[blockIdx.x];
    float* x = out + offsets[blockIdx.x];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // X = G / (factor·‖G‖_F + eps), ‖G‖² summed in f64 as the CPU.
    double sq = 0.0;
    for (int e = tid; e < s * l; e += NS_THREADS) sq += (double)g[e] * (double)g[e];
    sq = block_sum_d(sq);
    if (tid == 0) inv_norm = 1.0f / (factor * (float)sqrt(sq) + eps);
    const int shared_words = sp * lda + (sp * ldp + sp * ldx) / 2;  // every pad at 0, once
    for (int e = tid; e < shared_words; e += NS_THREADS) ns_shared[e] = 0.0f;
    __syncthreads();
    for (int e = tid; e < s * l; e += NS_THREADS) {
        const int i = e / l, j = e % l;
        const long long at = ns_index(i, j, s, l, tall);
        const float v = g[at] * inv_norm;
        x[at] = v;
        xb[i * ldx + j] = (unsigned short)bf16_bits(v);
    }
    __syncthreads();

    for (int step = 0; step < steps; ++step) {
        const float a = schedule[3 * step], b = schedule[3 * step + 1], c = schedule[3 * step + 2];
        ns_symmetric_product<MmaBf16>(xb, ldx, lp, s, [&](int i, int j, float v, bool mirror) {
            gram[i * lda + j] = v;
            if (mirror) gram[j * lda + i] = v;
        });
        __syncthreads();
        double trace = 0.0, square = 0.0;
        for (int e = tid; e < s * s; e += NS_THREADS) {
            const float v = gram[e / s * lda + e % s];
            square += (double)v * v;
            if (e / s == e % s) trace += v;
        }
        trace = block_sum_d(trace);
        square = block_sum_d(square);
        if (tid == 0) {
            shift = (float)((c * square + b * trace) / s);
            a_shifted = a + shift;
        }
        __syncthreads();
        const float beta = shift;
        ns_symmetric_product<MmaTf32Rounded>(gram, lda, sp, s, [&](int i, int j, float v, bool mirror) {
            const unsigned short p = (unsigned short)bf16_bits(fmaf(c, v, b * gram[i * lda + j]) - (i == j ? beta : 0.0f));
            pb[i * ldp + j] = p;
            if (mirror) pb[j * ldp + i] = p;
        });
        __syncthreads();
        // X ← (a + β)·X + (P − βI)·Xb, a warp per 8-column strip of X: it reads
        // the strip's column of Xb whole before overwriting it, and no other warp
        // reads that strip.
        const float a_new = a_shifted;
        const int g_row = lane >> 2, t = lane & 3;
        for (int strip = warp; strip < (l + 7) / 8; strip += NS_WARPS) {
            float acc[NS_ROW_BLOCKS][4] = {};
            for (int k = 0; k < sp; k += 16) {
                unsigned bx[2];
                MmaBf16::load_b(bx, xb + k * ldx + strip * 8, ldx);
#pragma unroll
                for (int rb = 0; rb < NS_ROW_BLOCKS; ++rb)
                    if (rb < nb) {
                        unsigned ap[4];
                        MmaBf16::load_a(ap, pb + rb * 16 * ldp + k, ldp);
                        MmaBf16::mma(acc[rb], ap, bx);
                    }
            }
            __syncwarp();  // every lane's reads of the strip before any write
#pragma unroll
            for (int rb = 0; rb < NS_ROW_BLOCKS; ++rb)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = rb * 16 + g_row + 8 * (e >> 1), j = strip * 8 + 2 * t + (e & 1);
                    if (rb < nb && i < s && j < l) {
                        const long long at = ns_index(i, j, s, l, tall);
                        const float v = fmaf(a_new, x[at], acc[rb][e]);
                        x[at] = v;
                        xb[i * ldx + j] = (unsigned short)bf16_bits(v);
                    }
                }
        }
        __syncthreads();  // X complete before the next Gram matrix, and shift read by all
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
