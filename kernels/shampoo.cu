// Batched inverse p-th roots (A + εI)^{-1/p} of symmetric PSD statistics by the
// coupled Newton iteration (Guo & Higham 2006; as in Anil et al. 2020, "Scalable
// Second Order Optimization"), src/backend/cuda/inverse_root.rs. The products
// are cuBLAS strided-batched GEMMs; these kernels do the rest, over `batch`
// contiguous n×n matrices, without a host read per iteration:
// - ε = absolute + relative·λ_max as the CPU defines it, λ_max by power
//   iteration on the device (power_iteration_start, power_iteration_step);
// - X₀ = z^{1/p}·I, M₀ = z·(A + εI) with z = (1 + p)/(2(λ_max + ε)) (newton_start);
// - per step T = ((p + 1)I − M)/p, X ← X·T, M ← Tᵖ·M; a converged matrix takes
//   T = I, which leaves X and M exactly as they are (newton_factor), so the
//   batch runs on until every matrix is done or the host's step limit;
// - convergence per matrix from max |M − I| (newton_residual, newton_converged).
#include "common.cuh"

// v = a fixed unit vector per matrix (n values each, the batch's total), to
// which no eigenvector of a generic statistic is orthogonal.
extern "C" __global__ void power_iteration_start(float* v, int n, long long total) {
    GRID_STRIDE(i, total) {
        const float golden = 0.6180339887f * (float)(i % n);
        v[i] = (0.5f + (golden - floorf(golden))) / sqrtf((float)n);
    }
}

// One power-iteration step per matrix, a block each: lambda = vᵀw (w = A·v and
// ‖v‖ = 1: the Rayleigh quotient, whose error is the square of the vector's),
// then v ← w/‖w‖. A zero w (a zero statistic) leaves v and lambda at 0.
extern "C" __global__ void power_iteration_step(float* v, float* lambda, const float* w, int n, int batch) {
    __shared__ float inv_norm;
    for (int b = blockIdx.x; b < batch; b += gridDim.x) {
        float* vb = v + (long long)b * n;
        const float* wb = w + (long long)b * n;
        double dot = 0.0, sq = 0.0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            dot += (double)vb[i] * (double)wb[i];
            sq += (double)wb[i] * (double)wb[i];
        }
        dot = block_sum_d(dot);
        sq = block_sum_d(sq);
        if (threadIdx.x == 0) {
            lambda[b] = (float)dot;
            inv_norm = sq > 0.0 ? (float)(1.0 / sqrt(sq)) : 0.0f;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) vb[i] = wb[i] * inv_norm;
        __syncthreads();  // inv_norm is rewritten for the next matrix
    }
}

// m = z·(A + εI) and x = z^{1/p}·I per matrix (the batch's total elements),
// with ε = eps_abs + eps_rel·max(λ_max, 0) and z = (1 + p)/(2(λ_max + ε)).
extern "C" __global__ void newton_start(float* m, float* x, const float* a, const float* lambda, float eps_abs, float eps_rel, int p, int n,
                                        long long total) {
    const long long nn = (long long)n * n;
    GRID_STRIDE(i, total) {
        const float top = fmaxf(lambda[i / nn], 0.0f);
        const float eps = eps_abs + eps_rel * top;
        const float z = (1.0f + p) / (2.0f * (top + eps));
        const long long within = i % nn;
        const bool diagonal = within / n == within % n;
        m[i] = z * (a[i] + (diagonal ? eps : 0.0f));
        x[i] = diagonal ? powf(z, 1.0f / p) : 0.0f;
    }
}

// t = ((p + 1)I − M)/p, or I for a matrix already done.
extern "C" __global__ void newton_factor(float* t, const float* m, const int* done, int p, int n, long long total) {
    const long long nn = (long long)n * n;
    GRID_STRIDE(i, total) {
        const long long within = i % nn;
        const float eye = within / n == within % n ? 1.0f : 0.0f;
        t[i] = done[i / nn] ? eye : ((p + 1.0f) * eye - m[i]) / p;
    }
}

// residual[b] = max |M_b − I| as the bits of a non-negative float (they order as
// the values; residual zeroed by the caller): grid (chunks, batch), each block a
// chunk of its matrix. NaN counts as +inf, so it never converges. A maximum is
// the same in any order.
extern "C" __global__ void newton_residual(unsigned int* residual, const float* m, int n) {
    const long long nn = (long long)n * n, per = (nn + gridDim.x - 1) / gridDim.x;
    const long long begin = (long long)blockIdx.x * per, end = min(begin + per, nn);
    const float* mb = m + (long long)blockIdx.y * nn;
    float local = 0.0f;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float d = fabsf(mb[i] - (i / n == i % n ? 1.0f : 0.0f));
        local = fmaxf(local, isnan(d) ? OPTLAB_INFINITY : d);
    }
    for (int o = 16; o > 0; o >>= 1) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, o));
    if ((threadIdx.x & 31) == 0) atomicMax(residual + blockIdx.y, __float_as_uint(local));
}

// Per matrix not yet done: done once max |M − I| is below 1e-5, non-finite, or
// no longer halving while below 1e-3 (f32 round-off has stopped the progress);
// err keeps the last residual.
extern "C" __global__ void newton_converged(int* done, float* err, const unsigned int* residual, int batch) {
    GRID_STRIDE(b, batch) {
        if (done[b]) continue;
        const float next = __uint_as_float(residual[b]);
        const bool stalled = next > 0.5f * err[b] && next < 1e-3f;
        if (!isfinite(next) || next < 1e-5f || stalled) done[b] = 1;
        err[b] = next;
    }
}
