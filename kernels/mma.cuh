// Warp-level tensor-core products (PTX `mma.sync`, sm_80 and later) with f32
// accumulation: a warp multiplies a 16×K tile A by a K×8 tile B into a 16×8 f32
// tile C. The fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16
// with floating point type" and "for mma.m16n8k8" with .tf32); lane = 4g + t holds
//   C:                          (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
//   A, per 8-wide chunk c of K: (g, 8c+2t), (g, 8c+2t+1), (g+8, 8c+2t), (g+8, 8c+2t+1)
//   B, per 8-wide chunk c of K: (8c+2t, g), (8c+2t+1, g)
// For bf16 (m16n8k16) that is PTX's layout. For tf32 (m16n8k8), where PTX gives a
// thread columns t and t+4, the k index is permuted (t ↔ 2t, t+4 ↔ 2t+1) in A and
// B alike, which leaves every product unchanged and gives both types the layout
// above: a C tile becomes an A operand with no data movement (FlashAttention-2's
// P·V). kernels/emulation/cuda_host.h emulates the instructions from PTX's layouts.
#pragma once

#include "common.cuh"
#include "constants.cuh"

#ifdef OPTLAB_EMULATION
#define OPTLAB_MMA_BF16(d, a, b) emu::mma_m16n8k16_bf16(d, a, b)
#define OPTLAB_MMA_TF32(d, a, b) emu::mma_m16n8k8_tf32(d, a, b)
#define OPTLAB_TO_TF32(x) emu::to_tf32(x)
#else
#define OPTLAB_MMA_BF16(d, a, b)                                                                                          \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                         \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#define OPTLAB_MMA_TF32(d, a, b)                                                                                          \
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                         \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
__device__ __forceinline__ unsigned optlab_to_tf32(float x) {
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
}
#define OPTLAB_TO_TF32(x) optlab_to_tf32(x)
#endif

// bf16 operands (m16n8k16), stored as their 16 bits; a register holds two
// elements adjacent in k, the lower k in the low half.
struct MmaBf16 {
    using Elem = unsigned short;
    static constexpr int K = 16;
    static constexpr int PAD = MMA_PAD_BF16;  // 16 bytes: the fragment loads of a warp hit distinct banks

    static __device__ __forceinline__ Elem from_float(float x) { return (Elem)bf16_bits(x); }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return bf16_bits(lo) | bf16_bits(hi) << 16; }
    // Two elements adjacent in memory (4-byte aligned), the first in the low half.
    static __device__ __forceinline__ unsigned pair(const Elem* p) { return *reinterpret_cast<const unsigned*>(p); }
    static __device__ __forceinline__ unsigned pair(const Elem* p, int stride) { return p[0] | (unsigned)p[stride] << 16; }

    // A(r, k) = tile[r*stride + k].
    static __device__ __forceinline__ void load_a(unsigned (&a)[4], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        a[0] = pair(tile + g * stride + 2 * t);
        a[1] = pair(tile + (g + 8) * stride + 2 * t);
        a[2] = pair(tile + g * stride + 2 * t + 8);
        a[3] = pair(tile + (g + 8) * stride + 2 * t + 8);
    }
    // B(k, n) = tile[n*stride + k]: B's columns are the tile's rows (Kᵀ in Q·Kᵀ).
    static __device__ __forceinline__ void load_b_transposed(unsigned (&b)[2], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        b[0] = pair(tile + g * stride + 2 * t);
        b[1] = pair(tile + g * stride + 2 * t + 8);
    }
    // B(k, n) = tile[k*stride + n] (V in P·V).
    static __device__ __forceinline__ void load_b(unsigned (&b)[2], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        b[0] = pair(tile + 2 * t * stride + g, stride);
        b[1] = pair(tile + (2 * t + 8) * stride + g, stride);
    }
    // A from the C tiles of its two 8-column chunks.
    static __device__ __forceinline__ void a_from_c(unsigned (&a)[4], const float (*c)[4]) {
        a[0] = pack(c[0][0], c[0][1]);
        a[1] = pack(c[0][2], c[0][3]);
        a[2] = pack(c[1][0], c[1][1]);
        a[3] = pack(c[1][2], c[1][3]);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) { OPTLAB_MMA_BF16(d, a, b); }
};

// tf32 operands (m16n8k8), stored as f32 already rounded to tf32 (cvt.rna);
// a register holds one element.
struct MmaTf32 {
    using Elem = float;
    static constexpr int K = 8;
    static constexpr int PAD = MMA_PAD_TF32;

    static __device__ __forceinline__ Elem from_float(float x) { return __uint_as_float(OPTLAB_TO_TF32(x)); }
    static __device__ __forceinline__ unsigned bits(Elem x) { return __float_as_uint(x); }

    static __device__ __forceinline__ void load_a(unsigned (&a)[4], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        a[0] = bits(tile[g * stride + 2 * t]);
        a[1] = bits(tile[(g + 8) * stride + 2 * t]);
        a[2] = bits(tile[g * stride + 2 * t + 1]);
        a[3] = bits(tile[(g + 8) * stride + 2 * t + 1]);
    }
    static __device__ __forceinline__ void load_b_transposed(unsigned (&b)[2], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        b[0] = bits(tile[g * stride + 2 * t]);
        b[1] = bits(tile[g * stride + 2 * t + 1]);
    }
    static __device__ __forceinline__ void load_b(unsigned (&b)[2], const Elem* tile, int stride) {
        const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        b[0] = bits(tile[2 * t * stride + g]);
        b[1] = bits(tile[(2 * t + 1) * stride + g]);
    }
    static __device__ __forceinline__ void a_from_c(unsigned (&a)[4], const float (*c)[4]) {
        a[0] = OPTLAB_TO_TF32(c[0][0]);
        a[1] = OPTLAB_TO_TF32(c[0][2]);
        a[2] = OPTLAB_TO_TF32(c[0][1]);
        a[3] = OPTLAB_TO_TF32(c[0][3]);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) { OPTLAB_MMA_TF32(d, a, b); }
};
