#!/usr/bin/env bash
# optlab's CPU training steps vs PyTorch eager on the same machine, same models,
# same thread count, measured in one run: the split-MNIST MLP (SGD, AdamW) and
# the default ViT and GPT (AdamW). Needs PyTorch: PYTHON=path/to/python
# (default .venv-torch/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
python=${PYTHON:-.venv-torch/bin/python}
export RAYON_NUM_THREADS=$threads
cargo bench --bench mlp -- 'mlp_step/(sgd|adamw)/' --noplot >/dev/null 2>&1
cargo bench --bench transformer -- '^(vit|gpt)_step/' --noplot >/dev/null 2>&1
"$python" benches/torch_mlp.py --threads "$threads" > target/torch_steps.jsonl
"$python" benches/torch_transformer.py --threads "$threads" >> target/torch_steps.jsonl
THREADS=$threads python3 - <<'PY'
import json, os
est = lambda name: json.load(open(f"target/criterion/{name}/new/estimates.json"))["median"]["point_estimate"] / 1e6
torch = [json.loads(l) for l in open("target/torch_steps.jsonl")]
rows = [("mlp sgd", "mlp_step_sgd_784-256-256-10_b128", lambda t: t.get("optimizer") == "sgd"),
        ("mlp adamw", "mlp_step_adamw_784-256-256-10_b128", lambda t: t.get("optimizer") == "adamw"),
        ("vit adamw", "vit_step_adamw_d64-l4-p7_b128", lambda t: t.get("model") == "vit"),
        ("gpt adamw", "gpt_step/adamw_d256-l4-s256_b8", lambda t: t.get("model") == "gpt")]
for label, ours, pick in rows:
    theirs = next(t["ms_per_step"] for t in torch if pick(t))
    print(f"{label}: optlab {est(ours):.2f} ms/step, pytorch {theirs:.2f} ms/step, pytorch/optlab x{theirs / est(ours):.2f} ({os.environ['THREADS']} threads)")
PY
