// The CUDA execution model in host C++20, so that the kernels of kernels/*.cu
// compile unchanged as host code and run on a CPU (src/backend/cuda/emulator.rs
// drives them against the CPU backend, under ThreadSanitizer and
// AddressSanitizer).
//
// One host thread per CUDA thread of a block; blocks run one after another, so
// `__shared__` variables are function statics and every block sees them
// uninitialised as on a GPU (the previous block's values). Per the CUDA C++
// Programming Guide:
// - `__syncthreads` is a barrier of the block's threads that have not exited,
//   `__syncwarp` one of the warp's;
// - `__shfl_*_sync` exchange values within a warp of 32 consecutive threads
//   (a barrier of the warp's live lanes, values through per-warp slots); a lane
//   reading from an exited lane, or a mask naming other lanes than the warp's
//   live ones, is reported, since that is undefined on a GPU;
// - atomics are `std::atomic_ref` read-modify-writes returning the old value;
// - `mma.sync` (kernels/mma.cuh) is a warp-wide exchange of fragments, decoded
//   by the PTX ISA's fragment layouts, with products summed exactly (in double)
//   and rounded once: the hardware's order is unspecified, so tests allow for it;
//   tf32 operands drop their 13 low mantissa bits, as the tensor cores ignore them;
// - `__fmul_rn`/`__fadd_rn` round once (built with -ffp-contract=off, so no
//   other product is fused either, as nvcc's `--fmad=false` would not be: only
//   fmaf fuses).
// Synchronisation happens only at those points, so ThreadSanitizer reports a
// shared-memory access that a kernel does not order by a barrier.
#pragma once

#include <atomic>
#include <array>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>
#include <thread>
#include <vector>

#define OPTLAB_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
// Dynamic shared memory: the launch's `shared_mem_bytes`, fresh per launch.
#define OPTLAB_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu::dynamic_shared())

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

namespace emu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "emulated kernel: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

// Barriers of the block's threads and of each warp's lanes. A thread that exits
// drops out of both (bar.sync's semantics since Volta: exited threads no longer
// take part). std::barrier cannot take a party back, so each block gets fresh
// ones.
using Barrier = std::barrier<>;

constexpr int kWarp = 32;

// The state of the block being run.
struct Block {
    std::optional<Barrier> sync;
    std::vector<std::optional<Barrier>> warps;
    std::vector<std::uint64_t> slots;  // one shuffle value per thread
    std::vector<std::array<std::uint32_t, 6>> fragments;  // one mma's A and B registers per thread
    std::vector<std::atomic<bool>> live;
    std::vector<unsigned char> dynamic_shared;
    int threads = 0;
};

inline Block* g_block = nullptr;
inline dim3 g_grid, g_block_dim;
inline thread_local dim3 t_thread, t_block;
inline thread_local int t_linear = 0;

inline void* dynamic_shared() { return g_block->dynamic_shared.data(); }

// Lanes of this thread's warp (the last warp of a block may be partial), as a mask.
inline unsigned warp_lanes() {
    const int first = t_linear / kWarp * kWarp;
    const int n = std::min(kWarp, g_block->threads - first);
    return n == kWarp ? 0xffffffffu : (1u << n) - 1;
}

template <class T>
T shuffle(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t));
    Block& b = *g_block;
    const int warp = t_linear / kWarp, lane = t_linear % kWarp;
    if (mask != warp_lanes()) fail("shuffle mask differs from the warp's lanes (divergent or partial-warp shuffle)");
    std::memcpy(&b.slots[t_linear], &v, sizeof(T));
    b.warps[warp]->arrive_and_wait();
    const int src = warp * kWarp + (src_lane & (kWarp - 1));
    if (src >= b.threads || !b.live[src].load()) fail("shuffle reads a lane that has exited or does not exist");
    T r;
    std::memcpy(&r, &b.slots[src], sizeof(T));
    b.warps[warp]->arrive_and_wait();  // the slot is rewritten by the next shuffle only after every lane read it
    return r;
}

// One warp-wide m16n8kK product D += A·B with f32 accumulation. `element(lane,
// reg, half)` gives the (row, col) of a register half in A (regs 0-3) or B
// (regs 4-5) per PTX's layout, `value(bits, half)` its value.
template <int K, class Where, class Value>
void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], int halves, Where where, Value value) {
    Block& blk = *g_block;
    const int warp = t_linear / kWarp, lane = t_linear % kWarp;
    if (warp_lanes() != 0xffffffffu) fail("mma.sync in a partial warp");
    blk.fragments[t_linear] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    blk.warps[warp]->arrive_and_wait();
    double A[16][K], B[K][8];
    for (int l = 0; l < kWarp; ++l) {
        if (!blk.live[warp * kWarp + l].load()) fail("mma.sync with an exited lane");
        const auto& regs = blk.fragments[warp * kWarp + l];
        for (int r = 0; r < 6; ++r)
            for (int h = 0; h < halves; ++h) {
                const auto [row, col] = where(l, r, h);
                (r < 4 ? A[row][col] : B[row][col]) = value(regs[r], h);
            }
    }
    blk.warps[warp]->arrive_and_wait();  // fragments are rewritten by the next mma only after every lane read them
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        double sum = d[i];
        for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
        d[i] = (float)sum;
    }
}

// mma.m16n8k16.row.col.f32.bf16.bf16.f32: A element i = 2·reg + half at row
// g (+8 for i in 2,3,6,7), col 2t + (i&1) (+8 for i ≥ 4); B element i at row
// 2t + (i&1) (+8 for i ≥ 2), col g.
inline void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    auto where = [](int lane, int reg, int half) -> std::pair<int, int> {
        const int g = lane >> 2, t = lane & 3;
        if (reg < 4) {
            const int i = 2 * reg + half;
            return {g + ((i >> 1) & 1) * 8, 2 * t + (i & 1) + (i >= 4) * 8};
        }
        const int i = 2 * (reg - 4) + half;
        return {2 * t + (i & 1) + (i >= 2) * 8, g};
    };
    auto value = [](std::uint32_t bits, int half) { return (double)std::bit_cast<float>((bits >> (16 * half)) << 16); };
    mma<16>(d, a, b, 2, where, value);
}

// mma.m16n8k8.row.col.f32.tf32.tf32.f32: A reg r at row g (+8 for r = 1, 3),
// col t (+4 for r ≥ 2); B reg r at row t + 4r, col g.
inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    auto where = [](int lane, int reg, int) -> std::pair<int, int> {
        const int g = lane >> 2, t = lane & 3;
        if (reg < 4) return {g + (reg & 1) * 8, t + (reg >> 1) * 4};
        return {t + 4 * (reg - 4), g};
    };
    auto value = [](std::uint32_t bits, int) { return (double)std::bit_cast<float>(bits & 0xffffe000u); };
    mma<8>(d, a, b, 1, where, value);
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; NaN and
// infinities pass through.
inline unsigned to_tf32(float x) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}

// Runs `kernel` (a call with its arguments bound) over the grid.
inline void launch(dim3 grid, dim3 block_dim, std::size_t shared_bytes, const std::function<void()>& kernel) {
    const long long threads = (long long)block_dim.x * block_dim.y * block_dim.z;
    if (threads < 1 || threads > 1024) fail("block size outside 1..1024");
    Block b;
    b.threads = (int)threads;
    b.warps = std::vector<std::optional<Barrier>>((threads + kWarp - 1) / kWarp);
    b.slots.assign(threads, 0);
    b.fragments.assign(threads, {});
    b.live = std::vector<std::atomic<bool>>(threads);
    b.dynamic_shared.assign(shared_bytes, 0xff);  // poisoned: a read before a write shows as NaN
    g_block = &b;
    g_grid = grid;
    g_block_dim = block_dim;
    const long long blocks = (long long)grid.x * grid.y * grid.z;
    // Between blocks: every thread has left the previous one; reset the barriers.
    auto next_block = [&]() noexcept {
        b.sync.emplace(threads);
        for (std::size_t w = 0; w < b.warps.size(); ++w) b.warps[w].emplace(std::min<long long>(kWarp, threads - (long long)w * kWarp));
        for (auto& l : b.live) l.store(true);
    };
    next_block();
    std::barrier between(threads, next_block);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (long long t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            t_linear = (int)t;
            t_thread = {unsigned(t % block_dim.x), unsigned(t / block_dim.x % block_dim.y), unsigned(t / block_dim.x / block_dim.y)};
            for (long long k = 0; k < blocks; ++k) {
                t_block = {unsigned(k % grid.x), unsigned(k / grid.x % grid.y), unsigned(k / grid.x / grid.y)};
                kernel();
                b.live[t].store(false);
                (void)b.sync->arrive_and_drop();
                (void)b.warps[t / kWarp]->arrive_and_drop();
                between.arrive_and_wait();
            }
        });
    }
    for (auto& th : pool) th.join();
    g_block = nullptr;
}

}  // namespace emu

#define threadIdx (emu::t_thread)
#define blockIdx (emu::t_block)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid)

inline void __syncthreads() { emu::g_block->sync->arrive_and_wait(); }
// A barrier of the warp's lanes; only the warp's live lanes as the mask.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != emu::warp_lanes()) emu::fail("__syncwarp mask differs from the warp's lanes");
    emu::g_block->warps[emu::t_linear / emu::kWarp]->arrive_and_wait();
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane) {
    return emu::shuffle(mask, v, src_lane);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu::shuffle(mask, v, (emu::t_linear % emu::kWarp) ^ lane_mask);
}

template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
// CUDA's device overloads of min/max for ints, and the classification macros.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
using std::isfinite;
using std::isinf;
using std::isnan;
