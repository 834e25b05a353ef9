#!/usr/bin/env bash
# Installs a pinned CUDA 13.0 nvcc (plus NVRTC) from PyPI wheels into the ignored
# venv .venv-cuda at the repo root; no GPU or root needed. Idempotent: a no-op
# when the pinned versions are already there. Progress goes to stderr; the only
# stdout line is nvcc's path, so `NVCC=$(tools/install-nvcc.sh)` works.
#
# Every wheel is pinned and installed with --no-deps: nvidia-cuda-nvcc's own
# dependencies are unpinned, and a mixed install emits PTX .version 9.5, which the
# CUDA 13.0 driver (580) of the GPU machines cannot JIT. nvcc 13.0 emits 9.0.
# Call nvcc by the printed real path (or an `exec` wrapper): a symlink breaks its
# include paths.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/.venv-cuda"
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88 # runtime NVRTC, for local checks of the fallback path
)

# Exit 0 when every pin is installed at exactly its version.
pins_satisfied() {
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}

find_nvcc() {
    local found
    found=$(ls "$venv"/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1)
    [ -n "$found" ] && [ -x "$found" ] && echo "$found"
}

if ! pins_satisfied || ! find_nvcc >/dev/null; then
    echo "install-nvcc: installing ${pins[*]} into $venv" >&2
    # A venv whose interpreter is gone (python upgraded) is rebuilt from scratch.
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null || rm -rf "$venv"
    [ -d "$venv" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --no-deps --no-input "${pins[@]}" >&2
    pins_satisfied || { echo "install-nvcc: pinned versions not in place after install" >&2; exit 1; }
fi

nvcc=$(find_nvcc) || { echo "install-nvcc: no nvcc under $venv/lib/python3.*/site-packages/nvidia/cu13/bin" >&2; exit 1; }
"$nvcc" --version | grep -q 'release 13\.0' || {
    echo "install-nvcc: $nvcc is not CUDA 13.0:" >&2
    "$nvcc" --version >&2
    exit 1
}
echo "$nvcc"
