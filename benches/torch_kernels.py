#!/usr/bin/env python3
"""PyTorch side of the GPU kernel comparison (run on the GPU machine, in the
same session as optlab's criterion benches; see benches/RESULTS.md).

Times, with CUDA events (median of repeats), at the shapes optlab's benches use:
- device-to-device copy bandwidth (the roofline for fused AdamW), counting bytes
  read + written;
- torch.optim.AdamW(fused=True) over N parameters split into 256 tensors;
- column sums of a 2048×1024 matrix added to a vector (a bias gradient);
- a bf16 Newton-Schulz 5-step (Keller Jordan's reference) on batched shapes;
- inverse 4th roots of SPD matrices through torch.linalg.eigh (f32), batched;
- scaled_dot_product_attention forward, and forward + backward, at the shapes
  of benches/transformer.rs's attention groups: f32, and bf16 on the flash
  backend (the reference of the tensor-core kernels).
Prints one JSON line per measurement.
"""
import contextlib
import json

import torch
import torch.nn.attention

assert torch.cuda.is_available(), "needs a GPU"
dev = torch.device("cuda")


def timed(fn, repeats=20, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def emit(**kw):
    kw["device"] = torch.cuda.get_device_name()
    kw["torch"] = torch.__version__
    print(json.dumps(kw), flush=True)


for n in [1 << 20, 1 << 24]:
    a, b = torch.empty(n, device=dev), torch.empty(n, device=dev)
    ms = timed(lambda: b.copy_(a))
    emit(kernel="copy", n=n, ms=ms, gb_per_s=8 * n / ms / 1e6)
    params = [torch.nn.Parameter(torch.randn(n // 256, device=dev)) for _ in range(256)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    ms = timed(opt.step)
    emit(kernel="adamw_fused", n=n, ms=ms, gb_per_s=28 * n / ms / 1e6)

# A GPT bias gradient's column sums (benches/adamw.rs, column_sums): 2048 × 1024.
x, out = torch.randn(2048, 1024, device=dev), torch.zeros(1024, device=dev)
ms = timed(lambda: out.add_(x.sum(dim=0)))
emit(kernel="column_sums", shape=[2048, 1024], ms=ms, gb_per_s=4 * 2048 * 1024 / ms / 1e6)


def ns5_bf16(g):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = x @ x.mT
        B = b * A + c * A @ A
        x = a * x + B @ x
    return x.mT if tall else x


for batch, rows, cols in [(16, 64, 256), (24, 256, 1024), (4, 1024, 4096)]:
    g = torch.randn(batch, rows, cols, device=dev)
    s, l = min(rows, cols), max(rows, cols)
    flops = 5 * batch * (4 * s * s * l + 2 * s ** 3)
    ms = timed(lambda: ns5_bf16(g))
    emit(kernel="newton_schulz_bf16", shape=[batch, rows, cols], ms=ms, tflops=flops / ms / 1e9)


def eigh_root(a, p=4, eps=1e-6):
    w, v = torch.linalg.eigh(a)
    w = (w.clamp(min=0) + eps * w.amax(dim=-1, keepdim=True)).pow(-1.0 / p)
    return (v * w.unsqueeze(-2)) @ v.mT


for count, n in [(1, 256), (8, 256), (1, 1024), (4, 1024), (1, 2048)]:
    g = torch.randn(n, 2 * n, device=dev)
    a = (g @ g.T / (2 * n)).expand(count, n, n).contiguous()
    ms = timed(lambda: eigh_root(a), repeats=10)
    emit(kernel="inverse_root_eigh", count=count, n=n, ms=ms)


SHAPES = [
    ("gpt", 8, 4, 256, 64, True),
    ("vit", 128, 4, 17, 16, False),
    ("vit_cifar", 128, 4, 65, 32, False),
    ("reference", 8, 16, 1024, 64, False),
    ("reference_causal", 8, 16, 1024, 64, True),
]
# f32 (PyTorch picks its memory-efficient or math backend) against optlab's f32
# kernels; bf16 on the flash backend (FlashAttention-2) against optlab's
# tensor-core kernels at --precision bf16.
for dtype, backend in [(torch.float32, None), (torch.bfloat16, torch.nn.attention.SDPBackend.FLASH_ATTENTION)]:
    for name, batch, heads, seq, hd, causal in SHAPES:
        q, k, v = (torch.randn(batch, heads, seq, hd, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        dout = torch.randn(batch, heads, seq, hd, device=dev, dtype=dtype)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        chosen = torch.nn.attention.sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        # Forward flops: two matmuls of batch·heads·seq²·hd, halved when causal.
        flops = 4 * batch * heads * seq * seq * hd / (2 if causal else 1)
        with chosen:
            with torch.no_grad():
                ms = timed(sdpa)
            emit(kernel="sdpa_forward", dtype=str(dtype), shape=name, ms=ms, tflops=flops / ms / 1e9)
            ms = timed(lambda: torch.autograd.grad(sdpa(), (q, k, v), dout))
            emit(kernel="sdpa_forward_backward", dtype=str(dtype), shape=name, ms=ms, tflops=3.5 * flops / ms / 1e9)
