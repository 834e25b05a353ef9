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

// The per-coordinate optimizers of torch.optim (DiagonalRule in src/backend/mod.rs), in
// PyTorch's order of operations; weight decay is coupled L2: g' = g + wd*p.

// Adagrad: sum += g'^2; p -= lr * g' / (sqrt(sum) + eps) (lr already decayed).
extern "C" __global__ void adagrad_step(float* p, const float* g, float* sum, float* unused1, float* unused2, const long long* offsets,
                                        const long long* cum, int count, long long total, float lr, float eps, float weight_decay) {
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k] + weight_decay * p[k];
        float s = sum[k] + gk * gk;
        sum[k] = s;
        p[k] -= lr * gk / (sqrtf(s) + eps);
    }
}

// RMSprop: sq = alpha*sq + (1-alpha)*g'^2; centered: ga = alpha*ga + (1-alpha)*g', d = sqrt(sq - ga^2) + eps,
// else d = sqrt(sq) + eps; momentum > 0: buf = mu*buf + g'/d, p -= lr*buf; else p -= lr*g'/d.
extern "C" __global__ void rmsprop_step(float* p, const float* g, float* square_avg, float* momentum_buf, float* grad_avg,
                                        const long long* offsets, const long long* cum, int count, long long total, float lr,
                                        float alpha, float eps, float weight_decay, float momentum, int centered) {
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k] + weight_decay * p[k];
        float sq = alpha * square_avg[k] + (1.0f - alpha) * gk * gk;
        square_avg[k] = sq;
        float d;
        if (centered) {
            float ga = alpha * grad_avg[k] + (1.0f - alpha) * gk;
            grad_avg[k] = ga;
            d = sqrtf(sq - ga * ga) + eps;
        } else {
            d = sqrtf(sq) + eps;
        }
        if (momentum > 0.0f) {
            float b = momentum * momentum_buf[k] + gk / d;
            momentum_buf[k] = b;
            p[k] -= lr * b;
        } else {
            p[k] -= lr * gk / d;
        }
    }
}

// Adadelta: sq = rho*sq + (1-rho)*g'^2; delta = sqrt(acc + eps)/sqrt(sq + eps)*g'; acc = rho*acc + (1-rho)*delta^2;
// p -= lr*delta.
extern "C" __global__ void adadelta_step(float* p, const float* g, float* square_avg, float* acc_delta, float* unused,
                                         const long long* offsets, const long long* cum, int count, long long total, float lr,
                                         float rho, float eps, float weight_decay) {
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k] + weight_decay * p[k];
        float sq = rho * square_avg[k] + (1.0f - rho) * gk * gk;
        square_avg[k] = sq;
        float delta = sqrtf(acc_delta[k] + eps) / sqrtf(sq + eps) * gk;
        acc_delta[k] = rho * acc_delta[k] + (1.0f - rho) * delta * delta;
        p[k] -= lr * delta;
    }
}

// Adam with coupled L2 (torch.optim.Adam); AMSGrad steps with the running maximum of v.
extern "C" __global__ void adam_l2_step(float* p, const float* g, float* m, float* v, float* v_max, const long long* offsets,
                                        const long long* cum, int count, long long total, float lr, float beta1, float beta2,
                                        float eps, float weight_decay, int amsgrad, float bias1, float bias2) {
    GRID_STRIDE(i, total) {
        long long k = multi_tensor_index(i, offsets, cum, count);
        float gk = g[k] + weight_decay * p[k];
        float mk = beta1 * m[k] + (1.0f - beta1) * gk;
        float vk = beta2 * v[k] + (1.0f - beta2) * gk * gk;
        m[k] = mk;
        v[k] = vk;
        if (amsgrad) {
            vk = fmaxf(v_max[k], vk);
            v_max[k] = vk;
        }
        p[k] -= lr * ((mk / bias1) / (sqrtf(vk / bias2) + eps));
    }
}
