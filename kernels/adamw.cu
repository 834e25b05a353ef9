// Fused multi-tensor optimizer steps: one launch updates every parameter of a
// group, however many tensors it has. The host splits the group's ranges of the
// model's single parameter buffer into chunks (src/backend/cuda/ops.rs,
// chunk_list): a (start, length) pair per chunk, every chunk starting at a
// multiple of 4 elements except where a range begins. A block reads its chunk's
// pair once (no per-element lookup), then runs a scalar head up to the next
// multiple of 4, 128-bit loads and stores over the aligned body, and a scalar
// tail. The buffers are store-sized and allocated 256-byte aligned, so element k
// of each is 16-byte aligned exactly when k is a multiple of 4.
#include "common.cuh"

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// Applies rule(p, g, s0, s1, s2) (references to one element of the parameters,
// its gradient and up to three state buffers, of which the first N are read and
// written) to every element of every chunk.
template <int N, class Rule>
__device__ void multi_tensor_apply(const long long* __restrict__ chunks, int chunk_count, float* __restrict__ p,
                                   const float* __restrict__ g, float* __restrict__ s0, float* __restrict__ s1,
                                   float* __restrict__ s2, Rule rule) {
    float* const state[3] = {s0, s1, s2};
    for (int c = blockIdx.x; c < chunk_count; c += gridDim.x) {
        const long long start = chunks[2 * c], len = chunks[2 * c + 1];
        const long long head = min(len, (4 - (start & 3)) & 3), quads = (len - head) >> 2;
        auto scalar = [&](long long k) {
            float pk = p[k], st[3] = {0.0f, 0.0f, 0.0f};
            for (int j = 0; j < N; ++j) st[j] = state[j][k];
            rule(pk, g[k], st[0], st[1], st[2]);
            p[k] = pk;
            for (int j = 0; j < N; ++j) state[j][k] = st[j];
        };
        for (long long i = threadIdx.x; i < head; i += blockDim.x) scalar(start + i);
        for (long long q = threadIdx.x; q < quads; q += blockDim.x) {
            const long long k = start + head + 4 * q;
            float4 pv = load4(p + k), gv = load4(g + k), sv[3] = {};
            for (int j = 0; j < N; ++j) sv[j] = load4(state[j] + k);
            rule(pv.x, gv.x, sv[0].x, sv[1].x, sv[2].x);
            rule(pv.y, gv.y, sv[0].y, sv[1].y, sv[2].y);
            rule(pv.z, gv.z, sv[0].z, sv[1].z, sv[2].z);
            rule(pv.w, gv.w, sv[0].w, sv[1].w, sv[2].w);
            store4(p + k, pv);
            for (int j = 0; j < N; ++j) store4(state[j] + k, sv[j]);
        }
        for (long long i = head + 4 * quads + threadIdx.x; i < len; i += blockDim.x) scalar(start + i);
    }
}

// AdamW (decoupled weight decay, bias-corrected); bias_i = 1 - beta_i^t.
extern "C" __global__ void adamw_step(float* p, const float* g, float* m, float* v, const long long* chunks, int chunk_count, float lr,
                                      float beta1, float beta2, float eps, float weight_decay, float bias1, float bias2) {
    const float decay = 1.0f - lr * weight_decay;
    multi_tensor_apply<2>(chunks, chunk_count, p, g, m, v, nullptr, [=](float& pk, float gk, float& mk, float& vk, float&) {
        mk = beta1 * mk + (1.0f - beta1) * gk;
        vk = beta2 * vk + (1.0f - beta2) * gk * gk;
        pk = pk * decay - lr * ((mk / bias1) / (sqrtf(vk / bias2) + eps));
    });
}

// SGD as torch.optim.SGD: g' = g + wd*p, buf = mu*buf + g', step along g' + mu*buf (Nesterov) or buf.
extern "C" __global__ void sgd_step(float* p, const float* g, float* buf, const long long* chunks, int chunk_count, float lr, float momentum,
                                    int nesterov, float weight_decay) {
    multi_tensor_apply<1>(chunks, chunk_count, p, g, buf, nullptr, nullptr, [=](float& pk, float gk, float& b, float&, float&) {
        gk += weight_decay * pk;
        b = momentum * b + gk;
        pk -= lr * (nesterov ? gk + momentum * b : b);
    });
}

// Lion: p = p(1 - lr*wd) - lr*sign(beta1*m + (1-beta1)*g); m = beta2*m + (1-beta2)*g.
extern "C" __global__ void lion_step(float* p, const float* g, float* m, const long long* chunks, int chunk_count, float lr, float beta1,
                                     float beta2, float weight_decay) {
    const float decay = 1.0f - lr * weight_decay;
    multi_tensor_apply<1>(chunks, chunk_count, p, g, m, nullptr, nullptr, [=](float& pk, float gk, float& mk, float&, float&) {
        const float c = beta1 * mk + (1.0f - beta1) * gk;
        const float sign = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
        pk = pk * decay - lr * sign;
        mk = beta2 * mk + (1.0f - beta2) * gk;
    });
}

// The per-coordinate optimizers of torch.optim (DiagonalRule in src/backend/mod.rs), in
// PyTorch's order of operations; weight decay is coupled L2: g' = g + wd*p. Their
// signatures take three state buffers (the ones a rule does not use are not read).

// Adagrad: sum += g'^2; p -= lr * g' / (sqrt(sum) + eps) (lr already decayed).
extern "C" __global__ void adagrad_step(float* p, const float* g, float* sum, float* unused1, float* unused2, const long long* chunks,
                                        int chunk_count, float lr, float eps, float weight_decay) {
    multi_tensor_apply<1>(chunks, chunk_count, p, g, sum, nullptr, nullptr, [=](float& pk, float gk, float& s, float&, float&) {
        gk += weight_decay * pk;
        s += gk * gk;
        pk -= lr * gk / (sqrtf(s) + eps);
    });
}

// RMSprop: sq = alpha*sq + (1-alpha)*g'^2; centered: ga = alpha*ga + (1-alpha)*g', d = sqrt(sq - ga^2) + eps,
// else d = sqrt(sq) + eps; momentum > 0: buf = mu*buf + g'/d, p -= lr*buf; else p -= lr*g'/d.
extern "C" __global__ void rmsprop_step(float* p, const float* g, float* square_avg, float* momentum_buf, float* grad_avg,
                                        const long long* chunks, int chunk_count, float lr, float alpha, float eps, float weight_decay,
                                        float momentum, int centered) {
    multi_tensor_apply<3>(chunks, chunk_count, p, g, square_avg, momentum_buf, grad_avg,
                          [=](float& pk, float gk, float& sq, float& b, float& ga) {
                              gk += weight_decay * pk;
                              sq = alpha * sq + (1.0f - alpha) * gk * gk;
                              float d;
                              if (centered) {
                                  ga = alpha * ga + (1.0f - alpha) * gk;
                                  d = sqrtf(sq - ga * ga) + eps;
                              } else {
                                  d = sqrtf(sq) + eps;
                              }
                              if (momentum > 0.0f) {
                                  b = momentum * b + gk / d;
                                  pk -= lr * b;
                              } else {
                                  pk -= lr * gk / d;
                              }
                          });
}

// Adadelta: sq = rho*sq + (1-rho)*g'^2; delta = sqrt(acc + eps)/sqrt(sq + eps)*g'; acc = rho*acc + (1-rho)*delta^2;
// p -= lr*delta.
extern "C" __global__ void adadelta_step(float* p, const float* g, float* square_avg, float* acc_delta, float* unused,
                                         const long long* chunks, int chunk_count, float lr, float rho, float eps, float weight_decay) {
    multi_tensor_apply<2>(chunks, chunk_count, p, g, square_avg, acc_delta, nullptr, [=](float& pk, float gk, float& sq, float& acc, float&) {
        gk += weight_decay * pk;
        sq = rho * sq + (1.0f - rho) * gk * gk;
        const float delta = sqrtf(acc + eps) / sqrtf(sq + eps) * gk;
        acc = rho * acc + (1.0f - rho) * delta * delta;
        pk -= lr * delta;
    });
}

// Adam with coupled L2 (torch.optim.Adam); AMSGrad steps with the running maximum of v.
extern "C" __global__ void adam_l2_step(float* p, const float* g, float* m, float* v, float* v_max, const long long* chunks, int chunk_count,
                                        float lr, float beta1, float beta2, float eps, float weight_decay, int amsgrad, float bias1,
                                        float bias2) {
    multi_tensor_apply<3>(chunks, chunk_count, p, g, m, v, v_max, [=](float& pk, float gk, float& mk, float& vk, float& vmax) {
        gk += weight_decay * pk;
        mk = beta1 * mk + (1.0f - beta1) * gk;
        vk = beta2 * vk + (1.0f - beta2) * gk * gk;
        float denom = vk;
        if (amsgrad) {
            vmax = fmaxf(vmax, vk);
            denom = vmax;
        }
        pk -= lr * ((mk / bias1) / (sqrtf(denom / bias2) + eps));
    });
}
