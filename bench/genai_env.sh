#!/usr/bin/env bash
# Separate virtual environment with onnxruntime-genai's model builder (the best-peer ONNX Runtime graph
# writer) for the static-KV-cache and export-memory benchmarks (bench/*genai*). Not used by CI.
#
#   bash bench/genai_env.sh [VENV_DIR]        # default: .venv-genai at the repository root
#
# The builder (onnxruntime_genai.models.builder) needs onnx_ir, transformers and torch; it pins its own
# onnxruntime, so it lives beside ours, not in it. torch is installed first and pinned (the CPU wheel).
# Idempotent: exits at once when the environment already imports what the benchmarks need.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv-genai}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
genai_spec="${GENAI_SPEC:-onnxruntime-genai==0.18.0}"

probe='import onnxruntime_genai, onnxruntime, onnx_ir, transformers, torch
from onnxruntime_genai.models import builder
print("genai env ok: onnxruntime-genai", onnxruntime_genai.__version__, "onnxruntime", onnxruntime.__version__,
      "transformers", transformers.__version__, "torch", torch.__version__)'

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$probe" 2>/dev/null; then
    exit 0
fi

start=$SECONDS
echo "creating $venv (torch, then $genai_spec) ..."
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "$torch_spec"
"${pip[@]}" "$torch_spec" "$genai_spec" onnx-ir onnx transformers safetensors sentencepiece protobuf
"$venv/bin/python" -c "$probe"
echo "genai env ready in $((SECONDS - start)) s: $venv"
