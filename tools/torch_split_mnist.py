"""The default optlab split-MNIST protocol in PyTorch, for cross-checking the
Rust study end to end (SGD and AdamW only: the optimizers torch ships).

Same model (784-256-256-10 ReLU, nn.Linear init), data (standardized with
0.1307/0.3081), tasks (0,1)...(8,9), 1 epoch per task, batch 128, shared head,
no replay. Batch order and initialization differ from optlab's (different RNGs),
so compare the accuracy matrix qualitatively and across seeds, not digit by digit.

    .venv-torch/bin/python tools/torch_split_mnist.py [--data ~/.cache/optlab/mnist] [--seeds 0,1,2]
"""
import argparse, os, struct
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

def idx(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows * cols)
    return np.frombuffer(data, np.uint8, offset=8)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.expanduser("~/.cache/optlab/mnist"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--sgd-lr", type=float, default=0.05)
    a = p.parse_args()
    torch.set_num_threads(2)
    load = lambda s: (torch.tensor((idx(f"{a.data}/{s}-images-idx3-ubyte") / 255.0 - 0.1307) / 0.3081, dtype=torch.float32),
                      torch.tensor(idx(f"{a.data}/{s}-labels-idx1-ubyte").astype(np.int64)))
    (xtr, ytr), (xte, yte) = load("train"), load("t10k")
    groups = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for seed in map(int, a.seeds.split(",")):
        for name in ["sgd", "adamw"]:
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
            opt = torch.optim.SGD(model.parameters(), lr=a.sgd_lr, momentum=0.9) if name == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
            R = np.zeros((5, 5))
            for i, g in enumerate(groups):
                m = (ytr == g[0]) | (ytr == g[1])
                x, y = xtr[m], ytr[m]
                for b in torch.randperm(len(y)).split(128):
                    opt.zero_grad()
                    F.cross_entropy(model(x[b]), y[b]).backward()
                    opt.step()
                with torch.no_grad():
                    for j, h in enumerate(groups):
                        mt = (yte == h[0]) | (yte == h[1])
                        R[i, j] = (model(xte[mt]).argmax(1) == yte[mt]).float().mean().item()
            print(f"{name} seed {seed}: diag {np.round(np.diag(R), 3).tolist()} last row {np.round(R[-1], 3).tolist()}")

if __name__ == "__main__":
    main()
