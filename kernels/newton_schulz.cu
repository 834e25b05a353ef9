// The non-GEMM parts of batched Newton-Schulz (Muon): per-matrix Frobenius
// normalization of a contiguous batch. The GEMMs of each quintic step are
// cuBLAS strided-batched calls (src/backend/cuda/ops.rs).
#include "common.cuh"

// One block per matrix of `len` elements: x /= (factor*||x||_F + eps).
extern "C" __global__ void normalize_frobenius(float* x, long long len, float factor, float eps) {
    float* m = x + (long long)blockIdx.x * len;
    double s = 0.0;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) s += (double)m[i] * (double)m[i];
    s = block_sum_d(s);
    __shared__ float inv;
    if (threadIdx.x == 0) inv = 1.0f / (factor * (float)sqrt(s) + eps);
    __syncthreads();
    for (long long i = threadIdx.x; i < len; i += blockDim.x) m[i] *= inv;
}
