#!/usr/bin/env bash
# Create .venv with everything sleb-deploy needs on a CPU machine (torch first: the pinned CPU wheel).
# Usage: scripts/setup.sh [extras]   (default extras: onnx,trt-rtx,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-onnx,trt-rtx,dev}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[${extras}]"
