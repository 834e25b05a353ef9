#!/usr/bin/env bash
# Builds the binaries a GPU run needs here and packs them into
# .device-bin/bundle.tar.gz (ignored; carry .device-bin, 64 MiB at most) for a
# GPU machine that has no Rust toolchain. With --all, every test binary too.
# There:  mkdir -p /tmp/b && tar xzf .device-bin/bundle.tar.gz -C /tmp/b
#         OPTLAB_REQUIRE_GPU=1 /tmp/b/cuda_kernels; /tmp/b/adamw --bench --noplot; ...
set -euo pipefail
cd "$(dirname "$0")/.."
want="cuda_kernels mlp adamw newton_schulz shampoo transformer exp"
[ "${1:-}" = "--all" ] && want=all
out=.device-bin
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# cargo prints every built executable as JSON: keep the wanted tests, benches, and exp.
cargo test --release --all-targets --no-run --message-format=json 2>/dev/null |
    WANT="$want" STAGE="$stage" python3 -c '
import json, os, shutil, sys
want = os.environ["WANT"].split()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind, name = m["target"]["kind"][0], m["target"]["name"]
    if kind == "lib":
        name = "optlab_unit"
    elif kind == "bin" and m["profile"]["test"]:
        name = name + "_unit"
    if want == ["all"] or name in want:
        shutil.copy(m["executable"], os.path.join(os.environ["STAGE"], name))
'
rm -rf "$out" && mkdir -p "$out"
tar czf "$out/bundle.tar.gz" -C "$stage" .
ls "$stage"
du -h "$out/bundle.tar.gz"
