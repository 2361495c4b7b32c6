"""The C++ host, built once per session: ONNX Runtime headers fetched from Debian, CMake + Ninja (2 jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sleb_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the built ``sleb-host``; its build directory (with ctest's tests) is its parent.

    A failed header fetch (Debian unreachable) or build fails every test that needs the host, loudly: CI must
    not pass without having built and run it.
    """
    build = tmp_path_factory.mktemp("cpp-build")
    proc = subprocess.run(
        [str(REPO / "scripts" / "build_cpp_host.sh"), str(build)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the C++ host failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    host = Path(proc.stdout.strip().splitlines()[-1])
    assert host.is_file(), proc.stdout
    return host


@pytest.fixture(scope="session")
def default_static_exports(
    tmp_path_factory: pytest.TempPathFactory, default_exports: dict[str, Path]
) -> dict[str, Path]:
    """The checkpoints of ``default_exports`` (dense, pruned) exported with ``--kv-cache static`` (symbolic buffer
    length), each once per session."""
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    base = tmp_path_factory.mktemp("default-onnx-static")
    for variant in ("dense", "pruned"):
        export_checkpoint(str(default_exports[f"{variant}_hf"]), base / variant, ExportConfig(kv_cache="static"))
    return {"dense": base / "dense", "pruned": base / "pruned"}
