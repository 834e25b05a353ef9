// Constants the Rust side needs too. build.rs turns every
// `#define NAME <integer>` here into `pub const NAME: usize` in
// $OUT_DIR/constants.rs (src/backend/cuda/mod.rs, `constants`), so each has one home.
#pragma once

// kernels/attention.cu (f32): threads per block, query rows per forward block,
// and the backward's key (and query) tile per head dim.
#define ATTN_THREADS 128
#define ATTN_FORWARD_QUERY_TILE 16
#define ATTN_BACKWARD_TILE_16 32
#define ATTN_BACKWARD_TILE_32 32
#define ATTN_BACKWARD_TILE_64 32
#define ATTN_BACKWARD_TILE_128 16

// kernels/attention_mma.cu: the rows a block owns (16 per warp, ATTN_THREADS
// threads): queries in the forward and dQ, keys in dK/dV; and per head dim the
// rows of the tiles a block loops over (keys, or queries in dK/dV).
#define ATTN_MMA_TILE 64
#define ATTN_MMA_LOOP_TILE_16 64
#define ATTN_MMA_LOOP_TILE_32 64
#define ATTN_MMA_LOOP_TILE_64 32
#define ATTN_MMA_LOOP_TILE_128 16

// kernels/mma.cuh: row padding of shared operand tiles, in elements (16 bytes).
#define MMA_PAD_BF16 8
#define MMA_PAD_TF32 4

// kernels/newton_schulz.cu: threads per block of the one-launch kernel, and the
// largest short side it takes (at 128 the Gram matrix and the polynomial take
// 100 of the 227 KiB of shared memory).
#define NS_THREADS 512
#define NS_ONE_LAUNCH_MAX_SHORT 128

// kernels/nn.cu: the activation kinds of activation_forward/backward and the GLU kernels.
#define ACT_RELU 0
#define ACT_TANH 1
#define ACT_GELU 2
#define ACT_SILU 3
