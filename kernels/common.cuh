// Shared helpers for optlab's kernels. Every kernel mirrors one op of
// src/backend/mod.rs; src/backend/cpu.rs is its reference and test oracle.
#pragma once

// +inf without <math.h> (NVRTC compiles these sources with no system headers).
#define OPTLAB_INFINITY __int_as_float(0x7f800000)

// The launch's dynamic shared memory as `type* name` (kernels/emulation/cuda_host.h
// defines it for host runs).
#ifndef OPTLAB_DYNAMIC_SHARED
#define OPTLAB_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Grid-stride loop over [0, n): kernels are correct for any launch size.
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide sum in double, result valid in thread 0. blockDim.x must be a
// multiple of 32 and at most 1024.
__device__ double block_sum_d(double v) {
    __shared__ double partial[32];
    v = warp_sum_d(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : 0.0;
    if (warp == 0) v = warp_sum_d(v);
    __syncthreads();  // partial[] may be reused by the caller's next reduction
    return v;
}

// f32 → bf16 bits, rounding to nearest even; NaN stays NaN. By hand: NVRTC
// compiles these sources without system headers, so no cuda_bf16.h.
__device__ __forceinline__ unsigned int bf16_bits(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
