#!/usr/bin/env bash
# optlab's CPU training step vs PyTorch eager on the same machine, same model
# (784-256-256-10 ReLU, batch 128), same thread count, measured in one run.
# Needs PyTorch: PYTHON=path/to/python (default .venv-torch/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
python=${PYTHON:-.venv-torch/bin/python}
RAYON_NUM_THREADS=$threads cargo bench --bench mlp -- 'mlp_step/(sgd|adamw)/' --noplot >/dev/null
"$python" benches/torch_mlp.py --threads "$threads" > target/torch_mlp.jsonl
for opt in sgd adamw; do
  ours=$(python3 -c "import json;print(json.load(open('target/criterion/mlp_step_${opt}_784-256-256-10_b128/new/estimates.json'))['median']['point_estimate']/1e6)")
  theirs=$(python3 -c "import json;print([json.loads(l) for l in open('target/torch_mlp.jsonl') if json.loads(l)['optimizer']=='$opt'][0]['ms_per_step'])")
  python3 -c "print(f'$opt: optlab {float($ours):.3f} ms/step, pytorch {float($theirs):.3f} ms/step, speedup x{float($theirs)/float($ours):.2f} ({$threads} threads)')"
done
