// Fused multi-tensor optimizer steps: one launch updates every parameter of a
// group, however many tensors it has, addressed through (offset, cumulative
// count) tables into the model's single parameter buffer.
#include "common.cuh"

// AdamW (decoupled weight decay, bias-corrected); bias_i = 1 - beta_i^t.
extern "C" __global__ void adamw_step(float* p, const float* g, float* m, float* v, const long long* offsets, const long long* cum,
                                      int count, long long total, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bias1, float bias2) {
    float decay = 1.0f - lr * weight_decay;
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k];
        float mk = beta1 * m[k] + (1.0f - beta1) * gk;
        float vk = beta2 * v[k] + (1.0f - beta2) * gk * gk;
        m[k] = mk;
        v[k] = vk;
        p[k] = p[k] * decay - lr * ((mk / bias1) / (sqrtf(vk / bias2) + eps));
    }
}

// SGD as torch.optim.SGD: g' = g + wd*p, buf = mu*buf + g', step along g' + mu*buf (Nesterov) or buf.
extern "C" __global__ void sgd_step(float* p, const float* g, float* buf, const long long* offsets, const long long* cum, int count,
                                    long long total, float lr, float momentum, int nesterov, float weight_decay) {
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k] + weight_decay * p[k];
        float b = momentum * buf[k] + gk;
        buf[k] = b;
        p[k] -= lr * (nesterov ? gk + momentum * b : b);
    }
}

// Lion: p = p(1 - lr*wd) - lr*sign(beta1*m + (1-beta1)*g); m = beta2*m + (1-beta2)*g.
extern "C" __global__ void lion_step(float* p, const float* g, float* m, const long long* offsets, const long long* cum, int count,
                                     long long total, float lr, float beta1, float beta2, float weight_decay) {
    float decay = 1.0f - lr * weight_decay;
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k];
        float c = beta1 * m[k] + (1.0f - beta1) * gk;
        float sign = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
        p[k] = p[k] * decay - lr * sign;
        m[k] = beta2 * m[k] + (1.0f - beta2) * gk;
    }
}
