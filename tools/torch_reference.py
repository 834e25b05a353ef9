#!/usr/bin/env python3
"""PyTorch reference values for optlab (the llm.c pattern).

Writes tests/fixtures/torch_reference.safetensors: a tiny MLP's loss and
gradients for three activations, plus 3-step optimizer trajectories for SGD,
AdamW and Muon. The Rust test `tests/reference.rs` loads this file and checks
optlab's CPU backend (f32) against it.

Regenerate (from the repository root; needs torch, numpy, safetensors):
    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.9.1 numpy safetensors
    .venv-torch/bin/python tools/torch_reference.py

All tensors are float32 (labels are stored as float32 too). Every flat
parameter/gradient vector uses optlab's store order:
    fc1.weight (16x20 row-major), fc1.bias, fc2.weight (12x16), fc2.bias,
    fc3.weight (10x12), fc3.bias
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)

WIDTHS = [20, 16, 12, 10]
BATCH = 8
SEED = 1234
STEPS = 3
ACTS = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": lambda z: F.gelu(z, approximate="tanh"),  # optlab uses the tanh approximation
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "torch_reference.safetensors")


class MLP(nn.Module):
    """Linear layers with `act` between them and none after the last."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(WIDTHS[0], WIDTHS[1])
        self.fc2 = nn.Linear(WIDTHS[1], WIDTHS[2])
        self.fc3 = nn.Linear(WIDTHS[2], WIDTHS[3])

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    def ordered(self):  # optlab's store order
        return [self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                self.fc3.weight, self.fc3.bias]


def flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts]).clone()


def load_flat(model, v):
    with torch.no_grad():
        i = 0
        for p in model.ordered():
            p.copy_(v[i:i + p.numel()].view_as(p))
            i += p.numel()


# --- data and initial parameters -------------------------------------------
torch.manual_seed(SEED)
x = torch.randn(BATCH, WIDTHS[0])
labels = torch.randint(0, WIDTHS[-1], (BATCH,))
init = MLP(F.relu)  # default nn.Linear init under the fixed seed ...
with torch.no_grad():
    for p in init.parameters():
        p.mul_(2.0)  # ... times 2 so activations are not tiny
params0 = flat(init.ordered())

out = {"x": x.clone(), "labels": labels.to(torch.float32)}


def loss_of(model):
    return F.cross_entropy(model(x), labels)  # mean softmax cross-entropy


# --- loss and gradients per activation -------------------------------------
for name, act in ACTS.items():
    m = MLP(act)
    load_flat(m, params0)
    loss = loss_of(m)
    loss.backward()
    out[f"{name}.params"] = params0.clone()
    out[f"{name}.loss"] = loss.detach().reshape(1).clone()
    out[f"{name}.grads"] = flat([p.grad for p in m.ordered()])


# --- Muon (Keller Jordan's reference, in float32 rather than bfloat16) -------
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g, steps=5, eps=1e-7):
    a, b, c = NS_COEFFS
    X = g.clone()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + eps)  # Frobenius norm
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                g = p.grad
                st = self.state[p]
                if "buf" not in st:
                    st["buf"] = torch.zeros_like(p)
                buf = st["buf"]
                buf.lerp_(g, 1 - beta)          # momentum buffer
                d = g.lerp(buf, beta)            # Nesterov direction
                u = newton_schulz5(d, group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(u, alpha=-group["lr"] * scale)  # no weight decay


# --- 3-step trajectories on the relu model ----------------------------------
def trajectory(make_opts):
    m = MLP(F.relu)
    load_flat(m, params0)
    opts = make_opts(m)
    for _ in range(STEPS):
        for o in opts:
            o.zero_grad()
        loss_of(m).backward()
        for o in opts:
            o.step()
    return flat(m.ordered())


out["sgd.params_after3"] = trajectory(lambda m: [torch.optim.SGD(
    m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)])
out["adamw.params_after3"] = trajectory(lambda m: [torch.optim.AdamW(
    m.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)])
out["muon.params_after3"] = trajectory(lambda m: [
    Muon([m.fc2.weight], lr=0.02, momentum=0.95, ns_steps=5),
    torch.optim.AdamW([m.fc1.weight, m.fc1.bias, m.fc2.bias, m.fc3.weight, m.fc3.bias],
                      lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
])

# --- write ----------------------------------------------------------------
out = {k: v.to(torch.float32).contiguous() for k, v in out.items()}
meta = {
    "widths": ",".join(map(str, WIDTHS)),
    "batch": str(BATCH),
    "seed": str(SEED),
    "torch": torch.__version__,
    "generated_by": "tools/torch_reference.py",
    "param_order": "fc1.weight,fc1.bias,fc2.weight,fc2.bias,fc3.weight,fc3.bias (weights out x in, row-major)",
    "init": "torch default nn.Linear init, every parameter multiplied by 2",
    "loss": "mean softmax cross-entropy (F.cross_entropy)",
    "activations": "relu,tanh,gelu (gelu = tanh approximation)",
    "labels": "stored as float32",
    "trajectory": "relu model from relu.params, 3 steps on the same batch",
    "sgd": "lr=0.1 momentum=0.9 nesterov=True weight_decay=0.01",
    "adamw": "lr=0.01 betas=(0.9,0.999) eps=1e-8 weight_decay=0.1",
    "muon": "fc2.weight only: lr=0.02 momentum=0.95 nesterov ns_steps=5 "
            "coeffs=(3.4445,-4.7750,2.0315) norm_eps=1e-7 scale=max(1,rows/cols)^0.5 "
            "float32 weight_decay=0",
    "muon_aux_adamw": "fc1.weight,fc3.weight,all biases: lr=0.001 betas=(0.9,0.999) eps=1e-8 weight_decay=0",
}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file(out, OUT, metadata=meta)


def canonicalize(path):
    """Rewrite the JSON header with sorted keys: safetensors orders metadata
    randomly (a Rust HashMap), so this keeps the bytes identical across runs."""
    import json
    import struct
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data[8 + n:])


canonicalize(OUT)
for k, v in out.items():
    print(f"{k:22s} {tuple(v.shape)}")
print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")
