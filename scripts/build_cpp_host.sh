#!/usr/bin/env bash
# Build the C++ host (engines/cpp): ONNX Runtime headers from Debian, the library from the onnxruntime wheel
# of PYTHON (default .venv/bin/python), CMake + Ninja, at most 2 compile jobs (JOBS=n for more).
# Usage: scripts/build_cpp_host.sh [build dir]   (default build/cpp; prints the sleb-host path last)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/cpp}"
python="${PYTHON:-.venv/bin/python}"
include="$(scripts/fetch_ort_headers.sh)"
# CMAKE_ARGS: more -D options, e.g. -DSLEB_HOST_REQUIRE_TENSORRT=ON (Dockerfile.trt)
# shellcheck disable=SC2086
cmake -S engines/cpp -B "$build" -G Ninja -DORT_INCLUDE_DIR="$include" \
    -DPython3_EXECUTABLE="$(command -v "$python")" ${CMAKE_ARGS:-} >&2
ninja -C "$build" -j "${JOBS:-2}" >&2
echo "$(cd "$build" && pwd)/sleb-host"
