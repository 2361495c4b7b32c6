#!/usr/bin/env bash
# Separate virtual environment with a real Triton Inference Server (the `tritonserver` 2.51 binary that the
# PyPI wheel nvidia-pytriton ships, python backend only) for the serving tests
# (tests/engines/test_triton_server.py) and the serving benchmark (bench/triton_generate.py).
#
#   bash scripts/triton_env.sh [VENV_DIR]        # default: .venv-triton at the repository root
#
# What the server's python backend runs (the `generate` model, sleb_deploy/engines/triton_generate.py) needs
# numpy < 2 (numpy 2 breaks the 2.51 stub's outputs), onnxruntime, transformers for the tokenizer (no torch:
# the tokenizer and OrtGenerator import none) and this package (by path: a .pth entry, see below).
# tritonclient[all] (HTTP and gRPC) comes with nvidia-pytriton.
#
# Layout after the build, used by `tritonserver_command()` in sleb_deploy/engines/triton_server.py:
#   VENV/lib/pythonX.Y/site-packages/pytriton/tritonserver/bin/tritonserver  (relative RPATH: never move it)
#   .../tritonserver/backends/python/triton_python_backend_stub              (copied from python_backend_stubs/X.Y/)
# Idempotent: exits at once when the environment already has all of it.
# Override versions with PYTRITON_SPEC / ORT_SPEC / TRANSFORMERS_SPEC, the interpreter with PYTHON.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv-triton}"
python="${PYTHON:-python3}"
pytriton_spec="${PYTRITON_SPEC:-nvidia-pytriton==0.7.0}"
ort_spec="${ORT_SPEC:-onnxruntime}"
transformers_spec="${TRANSFORMERS_SPEC:-transformers>=5.0,<6}"

probe='import os, sysconfig, numpy, onnxruntime, transformers, tritonclient.grpc, tritonclient.http, pytriton
import sleb_deploy.export.ort_generate
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
server = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
assert os.access(os.path.join(server, "bin", "tritonserver"), os.X_OK)
assert os.path.isfile(os.path.join(server, "backends", "python", "triton_python_backend_stub"))
print("triton env ok: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__,
      "transformers", transformers.__version__, "server", server)'

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$probe" 2>/dev/null; then
    exit 0
fi

start=$SECONDS
echo "creating $venv ($pytriton_spec, numpy<2, $ort_spec, $transformers_spec, sleb-deploy by path) ..."
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "$pytriton_spec" "numpy<2" "$ort_spec" "$transformers_spec"
# This package, by path: a .pth entry for a folder holding only a link to sleb_deploy/ (no build, so no race
# with scripts/setup.sh building the same tree in CI, and no other top-level folder of the repo on sys.path).
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$venv/sleb-deploy-src"
ln -sfn "$root/sleb_deploy" "$venv/sleb-deploy-src/sleb_deploy"
echo "$venv/sleb-deploy-src" > "$site/sleb_deploy_src.pth"

# The python backend runs its models in a stub process built per Python minor version; the wheel keeps them
# all under python_backend_stubs/ and the backend looks for the stub beside libtriton_python.so.
server="$("$venv/bin/python" -c 'import os, pytriton; print(os.path.join(os.path.dirname(pytriton.__file__), "tritonserver"))')"
ver="$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
stub="$server/python_backend_stubs/$ver/triton_python_backend_stub"
[[ -f "$stub" ]] || { echo "nvidia-pytriton has no python backend stub for Python $ver" >&2; exit 1; }
cp "$stub" "$server/backends/python/triton_python_backend_stub"
chmod +x "$server/backends/python/triton_python_backend_stub" "$server/bin/tritonserver"
"$venv/bin/python" -c "$probe"
echo "triton env ready in $((SECONDS - start)) s: $venv"
