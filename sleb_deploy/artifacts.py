"""Atomic output directories and manifests: the artifact contract of every stage (DESIGN.md section 3).

A stage writes into a hidden temporary directory next to its target and renames it into place only when
everything, validation included, has passed. A failed or interrupted run therefore leaves no half artifact,
and a good artifact is never replaced unless the user asked for it with `--force`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sleb_deploy.errors import ArtifactError


def check_writable_target(target: Path, force: bool) -> None:
    """Fail early (before hours of work) when `target` exists and may not be replaced."""
    if target.exists() and not force:
        raise ArtifactError(f"{target} already exists: pass --force to replace it, or choose another --out")
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} exists and is not a directory: remove it or choose another --out")


@contextmanager
def staged_dir(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` when the block exits without an exception.

    The old `target` (only with `force`) is moved aside first and deleted after the new one is in place,
    so at every moment one complete artifact sits at `target` or none did before.
    """
    target = Path(target).absolute()
    check_writable_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artifact gets the user's usual mode
    try:
        yield tmp
        check_writable_target(target, force)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout the package runs from, with "-dirty" when the working tree has changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def environment() -> dict[str, Any]:
    """What ran: versions, machine and commit, recorded in every manifest and benchmark."""
    dists = [
        "sleb-deploy",
        "torch",
        "transformers",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxscript",
        "tensorrt",
        "tensorrt-cu12",
        "tensorrt-cu13",
        "tensorrt-rtx",
        "tensorrt-rtx-cu12",
        "tensorrt-rtx-cu13",
    ]
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {d: v for d in dists if (v := _version(d)) is not None},
        "commit": _git_commit(),
    }
