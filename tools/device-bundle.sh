#!/usr/bin/env bash
# Builds the test and bench binaries here and copies them, with stable names,
# into .device-bin/ (ignored) for a GPU machine that has no Rust toolchain:
#   tools/device-bundle.sh            # then carry .device-bin and run there, e.g.
#   OPTLAB_REQUIRE_GPU=1 .device-bin/cuda_kernels
#   .device-bin/adamw --bench --noplot; python3 benches/torch_kernels.py
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device-bin
rm -rf "$out" && mkdir -p "$out"
# cargo prints every built executable as JSON; keep tests and benches.
cargo test --release --all-targets --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"][0] in ("test", "bench", "lib", "bin"):
        name = m["target"]["name"] + ("_unit" if m["target"]["kind"][0] in ("lib", "bin") else "")
        shutil.copy(m["executable"], f"'"$out"'/{name}")
        print(name)
'
cp target/release/exp "$out/exp"
du -sh "$out"
