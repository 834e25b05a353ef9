#!/usr/bin/env python3
"""PyTorch reference values for optlab's transformer ops (the llm.c pattern).

Writes tests/fixtures/torch_transformer.safetensors, read by tests/reference.rs:
multi-head attention through F.scaled_dot_product_attention (causal and not; a
short sequence, and a long one that spans several of optlab's CPU row blocks) and
LayerNorm through F.layer_norm, forward outputs and gradients for a random
upstream gradient, all float32, in optlab's layouts (qkv packed as
(batch*seq) x [q | k | v], head h at h*head_dim in each block).

    .venv-torch/bin/python tools/torch_transformer_reference.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(4321)
torch.set_num_threads(1)
ATTENTION = {"attention": (2, 7, 2, 4), "attention_long": (1, 140, 2, 4)}  # batch, seq, heads, head_dim
ROWS, DIM = 5, 9
out = {}

for prefix, (B, T, H, HD), causal in [(p, shape, c) for p, shape in ATTENTION.items() for c in (False, True)]:
    name = f"{prefix}.{'causal' if causal else 'full'}"
    qkv = torch.randn(B * T, 3 * H * HD, requires_grad=True)
    # (B*T, 3, H, HD) -> three (B, H, T, HD) tensors
    q, k, v = qkv.view(B, T, 3, H, HD).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, HD)
    o = o.permute(0, 2, 1, 3).reshape(B * T, H * HD)
    dout = torch.randn_like(o)
    o.backward(dout)
    out[f"{name}.qkv"] = qkv.detach()
    out[f"{name}.out"] = o.detach()
    out[f"{name}.dout"] = dout
    out[f"{name}.dqkv"] = qkv.grad

x = torch.randn(ROWS, DIM, requires_grad=True)
gamma = torch.randn(DIM, requires_grad=True)
beta = torch.randn(DIM, requires_grad=True)
y = F.layer_norm(x, (DIM,), gamma, beta, eps=1e-5)
dy = torch.randn_like(y)
y.backward(dy)
out.update({"layernorm.x": x.detach(), "layernorm.gamma": gamma.detach(), "layernorm.beta": beta.detach(),
            "layernorm.y": y.detach(), "layernorm.dy": dy, "layernorm.dx": x.grad, "layernorm.dgamma": gamma.grad,
            "layernorm.dbeta": beta.grad})

meta = {p: "batch={} seq={} heads={} head_dim={}".format(*shape) for p, shape in ATTENTION.items()}
meta |= {"layernorm": f"rows={ROWS} dim={DIM} eps=1e-5",
         "torch": torch.__version__, "generated_by": "tools/torch_transformer_reference.py"}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch_transformer.safetensors")
save_file({k: v.contiguous().float() for k, v in out.items()}, path, metadata=meta)
print(path, os.path.getsize(path), "bytes")
