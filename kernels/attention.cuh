// What the attention kernels (attention.cu, attention_mma.cu) share: where
// one (batch, head)'s rows live in their buffers. Layouts: qkv is
// (batch*seq) x (3*heads*D), columns [q | k | v] with head h at h*D in each;
// out/dout are (batch*seq) x (heads*D); lse and delta are (batch*heads) x seq.
#pragma once

// Where the rows of this block's (batch, head) live: q of position i at
// qkv + i*w3 (k at + k_off, v at + v_off), out and dO at + i*wo, lse and delta
// at + i, each from the offset below.
struct Head {
    int b, h;
    long long w3, wo, k_off, v_off;
    long long qkv_offset, rows_offset, stats_offset;
    __device__ Head(int seq, int heads, int D) {
        const int bh = blockIdx.x;
        b = bh / heads;
        h = bh % heads;
        w3 = 3LL * heads * D;
        wo = (long long)heads * D;
        k_off = (long long)heads * D;
        v_off = 2LL * heads * D;
        qkv_offset = (long long)b * seq * w3 + (long long)h * D;
        rows_offset = (long long)b * seq * wo + (long long)h * D;
        stats_offset = (long long)bh * seq;
    }
};
