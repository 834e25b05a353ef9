// Kernels with the faults the emulation must report (src/backend/cuda/emulator.rs
// runs them and expects the error): compiled into the emulator only.

// Block sum through shared memory with the barrier between the writes and the
// reads left out: a data race.
extern "C" __global__ void fault_missing_barrier(float* out, const float* x) {
    __shared__ float partial[64];
    partial[threadIdx.x] = x[threadIdx.x];
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; ++i) s += partial[i];
        out[blockIdx.x] = s;
    }
}

// n threads over an n-element `out`, the last writing one past its end.
extern "C" __global__ void fault_out_of_bounds(float* out, int n) {
    out[threadIdx.x + (threadIdx.x == n - 1)] = 1.0f;
}

// Half the warp returns, the other half shuffles from it.
extern "C" __global__ void fault_shuffle_from_exited_lane(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 16);
}
