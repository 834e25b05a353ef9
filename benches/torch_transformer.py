#!/usr/bin/env python3
"""PyTorch side of the transformer step comparison with optlab (CPU by default).

The same models as optlab's `exp vit` and `exp gpt` defaults: pre-norm blocks
(LayerNorm, fused qkv Linear, scaled_dot_product_attention, output Linear,
LayerNorm, Linear, tanh-GELU, Linear), learned positions, class token (ViT) or
causal attention and an untied head (GPT). One step = zero_grad + forward +
cross-entropy + backward + AdamW. Prints one JSON line per model (median ms/step).

    .venv-torch/bin/python benches/torch_transformer.py --threads 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu")
p.add_argument("--repeats", type=int, default=5)
args = p.parse_args()
torch.set_num_threads(args.threads)
dev = torch.device(args.device)


class Block(nn.Module):
    def __init__(self, d, heads, causal):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads, self.causal = heads, causal

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Vit(nn.Module):
    def __init__(self, d=64, depth=4, heads=4, patch=7):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, (28 // patch) ** 2 + 1, d))
        self.blocks = nn.Sequential(*[Block(d, heads, False) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        b, p = x.shape[0], self.patch
        patches = x.view(b, 28 // p, p, 28 // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
        h = torch.cat([self.cls.expand(b, -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.ln(self.blocks(h))[:, 0])


class Gpt(nn.Module):
    def __init__(self, d=256, depth=4, heads=4, seq=256):
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, d), nn.Parameter(torch.zeros(1, seq, d))
        self.blocks = nn.Sequential(*[Block(d, heads, True) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 256)

    def forward(self, ids):
        return self.head(self.ln(self.blocks(self.tok(ids) + self.pos)))


def bench(name, model, inputs, targets, steps):
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps * 1e3)
    print(json.dumps({"impl": "pytorch", "model": name, "device": args.device, "threads": args.threads,
                      "ms_per_step": statistics.median(times), "torch": torch.__version__}), flush=True)


torch.manual_seed(0)
bench("vit", Vit(), torch.randn(128, 784, device=dev), torch.randint(0, 10, (128,), device=dev), steps=10)
bench("gpt", Gpt(), torch.randint(0, 256, (8, 256), device=dev), torch.randint(0, 256, (8, 256), device=dev), steps=3)
