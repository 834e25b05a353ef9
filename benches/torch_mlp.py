#!/usr/bin/env python3
"""PyTorch side of the CPU speed comparison with optlab.

Times optlab's default split-MNIST training step in PyTorch eager on the CPU:
MLP 784->256->256->10 (ReLU), batch 128, random standardized inputs and random
labels. One step = zero_grad + forward + cross-entropy + backward + optimizer
step. Prints one JSON line per optimizer with the median ms/step over repeats.

    .venv-torch/bin/python benches/torch_mlp.py --threads 2
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
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--steps", type=int, default=500)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--batch", type=int, default=128)
args = p.parse_args()
torch.set_num_threads(args.threads)

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3),  # foreach=None -> default
}

for name, make_opt in OPTIMIZERS.items():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    x = torch.randn(args.batch, 784)  # already standardized (mean 0, std 1)
    y = torch.randint(0, 10, (args.batch,))
    opt = make_opt(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        times.append((time.perf_counter() - t0) / args.steps * 1e3)
    print(json.dumps({"impl": "pytorch", "optimizer": name, "threads": args.threads,
                      "ms_per_step": round(statistics.median(times), 4),
                      "ms_per_step_all": [round(t, 4) for t in times],
                      "batch": args.batch, "torch": torch.__version__}), flush=True)
