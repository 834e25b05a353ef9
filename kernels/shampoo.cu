// Pieces of the coupled Newton iteration for inverse p-th roots of symmetric PSD
// statistics (Guo & Higham 2006; as in Anil et al. 2020, "Scalable Second Order
// Optimization"). The products are cuBLAS GEMMs; these kernels do the rest.
#include "common.cuh"

// out = alpha*I + beta*a for an n x n matrix (a may be null: out = alpha*I).
extern "C" __global__ void identity_plus(float* out, const float* a, float alpha, float beta, int n) {
    GRID_STRIDE(i, (long long)n * n) {
        float eye = (i / n == i % n) ? alpha : 0.0f;
        out[i] = eye + (a ? beta * a[i] : 0.0f);
    }
}

// out = max |a - I| (as an unsigned bit pattern: non-negative floats order like
// their bits; out zeroed by the caller). NaN maps to +inf so it never converges.
extern "C" __global__ void max_abs_from_identity(unsigned int* out, const float* a, int n) {
    float local = 0.0f;
    GRID_STRIDE(i, (long long)n * n) {
        float d = fabsf(a[i] - ((i / n == i % n) ? 1.0f : 0.0f));
        local = fmaxf(local, isnan(d) ? OPTLAB_INFINITY : d);
    }
    for (int o = 16; o > 0; o >>= 1) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, o));
    if ((threadIdx.x & 31) == 0) atomicMax(out, __float_as_uint(local));
}
