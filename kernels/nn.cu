// Elementwise, bias, activation, loss and reduction kernels of the MLP path.
#include "common.cuh"
#include "constants.cuh"  // ACT_*, shared with Rust

#define SQRT_2_OVER_PI 0.7978845608f

extern "C" __global__ void fill(float* x, float value, long long n) {
    GRID_STRIDE(i, n) x[i] = value;
}

// y = alpha*x + beta*y
extern "C" __global__ void axpby(float* y, float alpha, const float* x, float beta, long long n) {
    GRID_STRIDE(i, n) y[i] = alpha * x[i] + beta * y[i];
}

extern "C" __global__ void scale(float* x, float alpha, long long n) {
    GRID_STRIDE(i, n) x[i] *= alpha;
}

// out = bf16(x): the operands of a bf16 GEMM (--precision bf16).
extern "C" __global__ void to_bf16(unsigned short* __restrict__ out, const float* __restrict__ x, long long n) {
    GRID_STRIDE(i, n) out[i] = (unsigned short)bf16_bits(x[i]);
}

// y[r, c] += bias[c] for a rows x cols matrix (n = rows*cols).
extern "C" __global__ void add_bias_rows(float* y, const float* bias, int cols, long long n) {
    GRID_STRIDE(i, n) y[i] += bias[i % cols];
}

// out[c] += sum_r x[r, c] (bias gradients). A block of 8 warps takes 32 columns
// at a time, a lane per column, warp w summing rows w, w + 8, ... (each warp's
// loads coalesced across its 32 columns); warp 0 then adds the 8 partial sums in
// a fixed order: no atomics, the same result on every run. Needs blockDim 256.
extern "C" __global__ void accumulate_column_sums(float* __restrict__ out, const float* __restrict__ x, int rows, int cols) {
    __shared__ float partial[8][33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int c0 = blockIdx.x * 32; c0 < cols; c0 += gridDim.x * 32) {
        const int c = c0 + lane;
        float s = 0.0f;
        if (c < cols)
            for (int r = warp; r < rows; r += 8) s += x[(long long)r * cols + c];
        partial[warp][lane] = s;
        __syncthreads();
        if (warp == 0 && c < cols) {
            float t = 0.0f;
            for (int w = 0; w < 8; ++w) t += partial[w][lane];
            out[c] += t;
        }
        __syncthreads();  // partial[] is rewritten for the next 32 columns
    }
}

__device__ __forceinline__ float act(int kind, float x) {
    if (kind == ACT_RELU) return fmaxf(x, 0.0f);
    if (kind == ACT_TANH) return tanhf(x);
    if (kind == ACT_SILU) return x / (1.0f + expf(-x));
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float act_grad(int kind, float x) {
    if (kind == ACT_RELU) return x > 0.0f ? 1.0f : 0.0f;
    if (kind == ACT_TANH) { float t = tanhf(x); return 1.0f - t * t; }
    if (kind == ACT_SILU) { float s = 1.0f / (1.0f + expf(-x)); return s * (1.0f + x * (1.0f - s)); }
    float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

extern "C" __global__ void activation_forward(int kind, float* y, const float* x, long long n) {
    GRID_STRIDE(i, n) y[i] = act(kind, x[i]);
}

extern "C" __global__ void activation_backward(int kind, float* dx, const float* dy, const float* x, long long n) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * act_grad(kind, x[i]);
}

// Gated linear unit: out = act(gate) * up (SwiGLU with ACT_SILU).
extern "C" __global__ void glu_forward(int kind, float* out, const float* gate, const float* up, long long n) {
    GRID_STRIDE(i, n) out[i] = act(kind, gate[i]) * up[i];
}

extern "C" __global__ void glu_backward(int kind, float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                        long long n) {
    GRID_STRIDE(i, n) {
        float g = gate[i], d = dout[i];
        dup[i] = d * act(kind, g);
        dgate[i] = d * up[i] * act_grad(kind, g);
    }
}

// Mean softmax cross-entropy, one warp per row. Writes dlogits (gradient of the
// mean loss), the row's loss and whether its arg-max (first maximum, as the CPU
// reference) is the label.
extern "C" __global__ void softmax_cross_entropy(float* dlogits, float* row_loss, int* row_correct, const float* logits,
                                                 const int* labels, int rows, int classes) {
    int warps_per_block = blockDim.x >> 5;
    int row = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* z = logits + (long long)row * classes;
    float* d = dlogits + (long long)row * classes;
    float best = -OPTLAB_INFINITY;
    int best_i = classes;
    for (int c = lane; c < classes; c += 32) {
        if (z[c] > best) { best = z[c]; best_i = c; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (ob > best || (ob == best && oi < best_i)) { best = ob; best_i = oi; }
    }
    float sum = 0.0f;
    for (int c = lane; c < classes; c += 32) sum += expf(z[c] - best);
    sum = warp_sum(sum);
    int label = labels[row];
    float inv_batch = 1.0f / rows;
    for (int c = lane; c < classes; c += 32) {
        float p = expf(z[c] - best) / sum;
        d[c] = p * inv_batch - (c == label ? inv_batch : 0.0f);
    }
    if (lane == 0) {
        row_loss[row] = logf(sum) - (z[label] - best);
        row_correct[row] = best_i == label;
    }
}

// The f64 reductions: each block writes its sum to partial[blockIdx.x] and the
// host adds the gridDim.x partials in order (src/backend/cuda/ops.rs,
// reduce_f64): no atomics, so the result is the same on every run.

// Σ x².
extern "C" __global__ void sum_squares(double* partial, const float* x, long long n) {
    double s = 0.0;
    GRID_STRIDE(i, n) s += (double)x[i] * (double)x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Σ (a − b)².
extern "C" __global__ void sum_squared_difference(double* partial, const float* a, const float* b, long long n) {
    double s = 0.0;
    GRID_STRIDE(i, n) { double d = (double)a[i] - (double)b[i]; s += d * d; }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Σ a·b.
extern "C" __global__ void dot(double* partial, const float* a, const float* b, long long n) {
    double s = 0.0;
    GRID_STRIDE(i, n) s += (double)a[i] * (double)b[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// count += number of NaN/Inf entries.
extern "C" __global__ void count_non_finite(unsigned int* count, const float* x, long long n) {
    unsigned int local = 0;
    GRID_STRIDE(i, n) local += !isfinite(x[i]);
    if (local) atomicAdd(count, local);
}

// v = beta*v + (1-beta)*g^2
extern "C" __global__ void ema_square(float* v, const float* g, float beta, long long n) {
    GRID_STRIDE(i, n) v[i] = beta * v[i] + (1.0f - beta) * g[i] * g[i];
}

// out = (m/bias1) / (sqrt(v/bias2) + eps)
extern "C" __global__ void adam_direction(float* out, const float* m, const float* v, float bias1, float bias2, float eps, long long n) {
    GRID_STRIDE(i, n) out[i] = (m[i] / bias1) / (sqrtf(v[i] / bias2) + eps);
}

// Scales rows (over_rows) or columns of x by (max(d,0) + eps)^(-1/p).
extern "C" __global__ void scale_by_diagonal_root(float* x, const float* d, int rows, int cols, int over_rows, int p, float eps) {
    GRID_STRIDE(i, (long long)rows * cols) {
        int k = over_rows ? (int)(i / cols) : (int)(i % cols);
        x[i] *= powf(fmaxf(d[k], 0.0f) + eps, -1.0f / p);
    }
}

// out = beta*out + weight*(row or column sums of g^2): diag(G·Gᵀ) or diag(Gᵀ·G).
extern "C" __global__ void ema_square_sums(float* out, const float* g, int rows, int cols, int over_rows, float beta, float weight) {
    int len = over_rows ? rows : cols;
    GRID_STRIDE(k, len) {
        float s = 0.0f;
        if (over_rows) {
            for (int c = 0; c < cols; ++c) { float v = g[k * (long long)cols + c]; s += v * v; }
        } else {
            for (int r = 0; r < rows; ++r) { float v = g[(long long)r * cols + k]; s += v * v; }
        }
        out[k] = beta * out[k] + weight * s;
    }
}
