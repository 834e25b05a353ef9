// LayerNorm and embedding kernels of the transformer models. Mirrors
// Backend::layernorm_* and embedding_*; the CPU reference is
// src/backend/cpu/transformer.rs.
#include "common.cuh"

// Products are rounded as the CPU rounds them (__fmul_rn/__fadd_rn: no FMA
// contraction), so that e.g. dim 1 gives exactly dx = 0 and y = beta, as there.

// One warp per row of a rows x dim matrix, grid-strided over rows. Mean and
// (biased) variance in double, as the CPU; y = (x - mean)*rstd*gamma + beta.
extern "C" __global__ void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta, float eps,
                                             int rows, int dim) {
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (long long row = (long long)blockIdx.x * warps + (threadIdx.x >> 5); row < rows; row += (long long)gridDim.x * warps) {
        const float* xr = x + row * dim;
        double s = 0.0;
        for (int c = lane; c < dim; c += 32) s += (double)xr[c];
        const double mu = warp_sum_d(s) / dim;
        double v = 0.0;
        for (int c = lane; c < dim; c += 32) {
            const double d = (double)xr[c] - mu;
            v += d * d;
        }
        const double var = warp_sum_d(v) / dim;
        const float m = (float)mu, r = (float)(1.0 / sqrt(var + (double)eps));
        float* yr = y + row * dim;
        for (int c = lane; c < dim; c += 32) yr[c] = __fadd_rn(__fmul_rn(__fmul_rn(xr[c] - m, r), gamma[c]), beta[c]);
        if (lane == 0) {
            mean[row] = m;
            rstd[row] = r;
        }
    }
}

// dx = rstd*(g - mean(g) - xhat*mean(g*xhat)) with g = dy*gamma: one warp per row.
extern "C" __global__ void layernorm_backward_dx(float* dx, const float* dy, const float* x, const float* mean, const float* rstd, const float* gamma,
                                                 int rows, int dim) {
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (long long row = (long long)blockIdx.x * warps + (threadIdx.x >> 5); row < rows; row += (long long)gridDim.x * warps) {
        const float* xr = x + row * dim;
        const float* dyr = dy + row * dim;
        const float m = mean[row], r = rstd[row];
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int c = lane; c < dim; c += 32) {
            const float g = __fmul_rn(dyr[c], gamma[c]);
            sum_g += g;
            sum_gx = __fadd_rn(sum_gx, __fmul_rn(g, __fmul_rn(xr[c] - m, r)));
        }
        const float mean_g = warp_sum(sum_g) / dim, mean_gx = warp_sum(sum_gx) / dim;
        float* dxr = dx + row * dim;
        for (int c = lane; c < dim; c += 32) {
            const float xhat = __fmul_rn(xr[c] - m, r);
            dxr[c] = r * (__fmul_rn(dyr[c], gamma[c]) - mean_g - __fmul_rn(xhat, mean_gx));
        }
    }
}

// Per-chunk column sums for dgamma/dbeta, without atomics: block (32 columns x 8
// row lanes) at grid (column tile, chunk) writes
//   partial_gamma[chunk, c] = sum over the chunk's rows of dy*xhat,
//   partial_beta[chunk, c]  = sum over the chunk's rows of dy,
// for chunk covering rows [chunk*rows_per_chunk, (chunk+1)*rows_per_chunk) ∩ [0, rows).
// accumulate_column_sums (nn.cu) then adds the chunk x dim partials into dgamma/dbeta.
extern "C" __global__ void layernorm_backward_params(float* partial_gamma, float* partial_beta, const float* dy, const float* x, const float* mean,
                                                     const float* rstd, int rows, int dim, int rows_per_chunk) {
    __shared__ float sg[8][33];
    __shared__ float sb[8][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // blockDim.x == 256
    const int c = blockIdx.x * 32 + tx;
    const long long first = (long long)blockIdx.y * rows_per_chunk;
    const long long last = min(first + rows_per_chunk, (long long)rows);
    float g = 0.0f, bsum = 0.0f;
    if (c < dim) {
        for (long long r = first + ty; r < last; r += 8) {
            const float d = dy[r * dim + c];
            g = __fadd_rn(g, __fmul_rn(d, __fmul_rn(x[r * dim + c] - mean[r], rstd[r])));
            bsum += d;
        }
    }
    sg[ty][tx] = g;
    sb[ty][tx] = bsum;
    __syncthreads();
    if (ty == 0 && c < dim) {
        float tg = 0.0f, tb = 0.0f;
        for (int k = 0; k < 8; ++k) {
            tg += sg[k][tx];
            tb += sb[k][tx];
        }
        partial_gamma[(long long)blockIdx.y * dim + c] = tg;
        partial_beta[(long long)blockIdx.y * dim + c] = tb;
    }
}

// out[i, :] = table[ids[i], :] (ids checked on the host); n = ids*dim.
extern "C" __global__ void embedding_forward(float* out, const float* table, const unsigned int* ids, int dim, long long n) {
    GRID_STRIDE(i, n) out[i] = table[(long long)ids[i / dim] * dim + i % dim];
}

// dtable[id, :] += every row of dout with that id, in row order: the CPU's
// order, so the sums agree with it bit for bit, with no atomics. `groups` holds
// the `count` distinct ids, then where each one's rows start in `rows` (count +
// 1 offsets), then `rows` (positions in dout, ascending within an id), as
// src/backend/cuda/transformer.rs builds it. A thread per (id, column); n =
// count*dim.
extern "C" __global__ void embedding_backward(float* dtable, const float* dout, const unsigned int* groups, int count, int dim, long long n) {
    const unsigned int* starts = groups + count;
    const unsigned int* rows = starts + count + 1;
    GRID_STRIDE(i, n) {
        const long long g = i / dim, c = i % dim;
        float* d = dtable + (long long)groups[g] * dim + c;
        float acc = *d;
        for (unsigned int k = starts[g]; k < starts[g + 1]; ++k) acc += dout[(long long)rows[k] * dim + c];
        *d = acc;
    }
}
