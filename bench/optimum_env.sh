#!/usr/bin/env bash
# Separate virtual environment with Optimum (optimum-onnx + onnxruntime) for the interop test
# (tests/interop/test_optimum.py) and the benchmark (bench/ort_vs_optimum.py).
#
#   bash bench/optimum_env.sh [VENV_DIR]        # default: .venv-optimum at the repository root
#
# Optimum pins transformers<4.58, our package needs transformers>=5: the two cannot share one environment.
# torch is installed first and pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
# Idempotent: exits at once when the environment already imports what the checks need.
# Override versions with TORCH_SPEC / TRANSFORMERS_SPEC / OPTIMUM_SPEC, the interpreter with PYTHON.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv-optimum}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
transformers_spec="${TRANSFORMERS_SPEC:-transformers>=4.56,<4.58}"
optimum_spec="${OPTIMUM_SPEC:-optimum-onnx[onnxruntime]}"

probe='import optimum.onnxruntime, onnxruntime, torch, transformers
from optimum.onnxruntime import ORTModelForCausalLM
v = tuple(int(x) for x in transformers.__version__.split(".")[:2])
assert v < (4, 58), transformers.__version__
print("optimum env ok: transformers", transformers.__version__, "onnxruntime", onnxruntime.__version__,
      "torch", torch.__version__)'

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$probe" 2>/dev/null; then
    exit 0
fi

start=$SECONDS
echo "creating $venv (torch, then $optimum_spec with $transformers_spec) ..."
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "$torch_spec"
# The torch pin is repeated so the resolver never swaps it for another (CUDA) build.
"${pip[@]}" "$torch_spec" "$optimum_spec" "$transformers_spec"
"$venv/bin/python" -c "$probe"
echo "optimum env ready in $((SECONDS - start)) s: $venv"
