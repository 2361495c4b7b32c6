#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU (CI has none): the gpu-marked tests (the
# TensorRT runner against ONNX Runtime, the CUDA bench backends), then the benchmark on the default model
# with every backend the machine can run. Results land under bench/results/gpu-<date>/ to be committed.
#
#   scripts/setup.sh onnx,trt,dev && scripts/gpu_checks.sh        # TensorRT engines need the [trt] extra
set -euo pipefail
cd "$(dirname "$0")/.."
out="bench/results/gpu-$(date -u +%Y%m%d)"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
.venv/bin/python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/pytest-gpu.txt"
.venv/bin/sleb-deploy export --engines auto --force --quiet
.venv/bin/sleb-deploy bench --backends auto --out "$out/bench" --force
