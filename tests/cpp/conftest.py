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
