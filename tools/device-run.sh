#!/usr/bin/env bash
# The GPU validation run of benches/RESULTS.md as one script, for a GPU machine
# without Rust: every step under its own time limit, so that one hung or slow
# step costs its limit and no more of the device time. Build and pack first,
# here: tools/device-bundle.sh, then carry .device-bin. On the GPU machine:
#   tools/device-run.sh            # logs and summary.txt into $OUT (else ./device-out)
# Steps: the kernel tests against the CPU (OPTLAB_REQUIRE_GPU=1: no skips), the
# CUDA groups of every criterion bench (short warm-up and measurement), and
# PyTorch's side (benches/torch_kernels.py) in the same run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
tar xzf .device-bin/bundle.tar.gz -C "$bin" || { echo "no .device-bin/bundle.tar.gz: run tools/device-bundle.sh here first" >&2; exit 1; }

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || echo "no torch"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# step NAME SECONDS COMMAND...: runs it with its log in $out/NAME.log and a line
# "NAME rc=… seconds=…" in $out/summary.txt (rc 124: past its limit).
step() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/summary.txt"
    tail -n 5 "$out/$name.log"
}

# At most 10 minutes in all (the limits add up to 585 s), most valuable first:
# a lent GPU has about 15 minutes, its start included.
step cuda_kernels 120 env OPTLAB_REQUIRE_GPU=1 "$bin/cuda_kernels" --test-threads=1
for bench in transformer newton_schulz shampoo adamw; do
    step "bench_$bench" 75 "$bin/$bench" --bench --noplot --warm-up-time 0.5 --measurement-time 1 cuda
done
step torch_kernels 90 python3 benches/torch_kernels.py
step bench_mlp 75 "$bin/mlp" --bench --noplot --warm-up-time 0.5 --measurement-time 1 cuda
echo "logs in $out"
